//! Adam and AdamW on the CPU backend with each parameter's whole update in one pass.
//!
//! burn's `Adam` runs about fifteen tensor operations per parameter and step (each a pass over
//! the parameter that allocates its result); on the 512-wide MLP that was about a third of the
//! training thread's time. These optimisers do the same arithmetic in one pass over the
//! parameter, its gradient and both moments, in place, split over rayon's threads for large
//! parameters. They keep burn's state types (`AdamState`, `AdamWState`), so checkpoints are
//! the same records as with burn's optimisers and load into either. A tensor the fast path
//! cannot take (not `f32`, shapes that disagree) goes through burn's own implementation.

use burn::backend::Autodiff;
use burn::module::{ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{
    Adam, AdamConfig, AdamState, AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate,
    SimpleOptimizer,
};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, ElementConversion, Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

/// Parameters at least this long are updated on several threads.
const PARALLEL_MIN: usize = 1 << 15;
/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// The global L2 norm of the gradients, read straight from the CPU buffers (the generic way
/// squares every gradient into a new tensor first). Deterministic: partial sums are added in
/// a fixed order whatever the threads did.
pub(crate) fn grad_norm<M: burn::module::Module<Autodiff<Flex>>>(model: &M, grads: &GradientsParams) -> f64 {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        sum: f64,
    }
    impl ModuleVisitor<Autodiff<Flex>> for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Autodiff<Flex>, D>>) {
            let Some(g) = self.grads.get::<Flex, D>(param.id) else { return };
            self.sum += if g.dtype() == DType::F32 {
                squares(dense(g).storage::<f32>())
            } else {
                g.powi_scalar(2).sum().into_scalar().elem::<f64>()
            };
        }
    }
    let mut visitor = SquaredNorm { grads, sum: 0.0 };
    model.visit(&mut visitor);
    visitor.sum.sqrt()
}

/// Sum of squares, in f64 across chunks of `CHUNK` elements.
fn squares(values: &[f32]) -> f64 {
    fn chunk(c: &[f32]) -> f64 {
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                // Sixteen independent lanes, so the loop vectorises.
                let mut lanes = [0f32; 16];
                let mut rows = c.chunks_exact(16);
                for row in &mut rows {
                    for (lane, x) in lanes.iter_mut().zip(row) {
                        *lane += x * x;
                    }
                }
                let rest: f64 = rows.remainder().iter().map(|x| f64::from(x * x)).sum();
                lanes.iter().map(|l| f64::from(*l)).sum::<f64>() + rest
            },
        )
    }
    if values.len() >= PARALLEL_MIN {
        let partial: Vec<f64> = values.par_chunks(CHUNK).map(chunk).collect();
        partial.iter().sum()
    } else {
        values.chunks(CHUNK).map(chunk).sum()
    }
}

/// Adam's hyperparameters, shared by both variants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Hyper {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

/// burn's Adam or AdamW, made fused on `Flex` by [`Fused`]: the state both keep, and which
/// weight decay the update applies.
pub(crate) trait Variant: SimpleOptimizer<Flex> {
    /// AdamW's decoupled weight decay (else Adam's L2 penalty added to the gradient).
    const DECOUPLED: bool;
    /// The moments inside this optimiser's state.
    fn moments<const D: usize>(state: &Self::State<D>) -> &AdaptiveMomentumState<Flex, D>;
    /// Takes the moments out of a state.
    fn into_moments<const D: usize>(state: Self::State<D>) -> AdaptiveMomentumState<Flex, D>;
    /// Wraps moments as this optimiser's state.
    fn state<const D: usize>(moments: AdaptiveMomentumState<Flex, D>) -> Self::State<D>;
}

impl Variant for Adam {
    const DECOUPLED: bool = false;
    fn moments<const D: usize>(state: &AdamState<Flex, D>) -> &AdaptiveMomentumState<Flex, D> {
        &state.momentum
    }
    fn into_moments<const D: usize>(state: AdamState<Flex, D>) -> AdaptiveMomentumState<Flex, D> {
        state.momentum
    }
    fn state<const D: usize>(moments: AdaptiveMomentumState<Flex, D>) -> AdamState<Flex, D> {
        AdamState::new(moments)
    }
}

impl Variant for AdamW {
    const DECOUPLED: bool = true;
    fn moments<const D: usize>(state: &AdamWState<Flex, D>) -> &AdaptiveMomentumState<Flex, D> {
        &state.momentum
    }
    fn into_moments<const D: usize>(state: AdamWState<Flex, D>) -> AdaptiveMomentumState<Flex, D> {
        state.momentum
    }
    fn state<const D: usize>(moments: AdaptiveMomentumState<Flex, D>) -> AdamWState<Flex, D> {
        AdamWState::new(moments)
    }
}

/// Adam (`Fused<Adam>`, L2 penalty added to the gradient, PyTorch's `Adam`) or AdamW
/// (`Fused<AdamW>`, decoupled weight decay, PyTorch's `AdamW`), fused on `Flex`. Keeps burn's
/// optimiser for the tensors the fast path does not take.
#[derive(Clone)]
pub(crate) struct Fused<O> {
    hyper: Hyper,
    burn: O,
}

impl Fused<Adam> {
    pub(crate) fn adam(hyper: Hyper) -> Self {
        let decay = (hyper.weight_decay > 0.0).then(|| WeightDecayConfig::new(hyper.weight_decay));
        let burn = AdamConfig::new()
            .with_beta_1(hyper.beta_1)
            .with_beta_2(hyper.beta_2)
            .with_epsilon(hyper.epsilon)
            .with_weight_decay(decay)
            .build();
        Self { hyper, burn }
    }
}

impl Fused<AdamW> {
    pub(crate) fn adamw(hyper: Hyper) -> Self {
        let burn = AdamWConfig::new()
            .with_beta_1(hyper.beta_1)
            .with_beta_2(hyper.beta_2)
            .with_epsilon(hyper.epsilon)
            .with_weight_decay(hyper.weight_decay)
            .build();
        Self { hyper, burn }
    }
}

impl<O: Variant> Fused<O> {
    /// As a burn `Optimizer` for a model on `Autodiff<Flex>`.
    pub(crate) fn init<B, M>(self) -> OptimizerAdaptor<Self, M, B>
    where
        B: AutodiffBackend<InnerBackend = Flex>,
        M: burn::module::AutodiffModule<B>,
    {
        OptimizerAdaptor::from(self)
    }
}

impl<O: Variant> SimpleOptimizer<Flex> for Fused<O> {
    type State<const D: usize> = O::State<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<Flex, D>,
        grad: Tensor<Flex, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<Flex, D>, Option<Self::State<D>>) {
        if !fusable(&tensor, &grad, state.as_ref().map(O::moments)) {
            return self.burn.step(lr, tensor, grad, state);
        }
        let (tensor, moments) = fused_step(lr, tensor, grad, state.map(O::into_moments), self.hyper, O::DECOUPLED);
        (tensor, Some(O::state(moments)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &burn_flex::FlexDevice) -> Self::State<D> {
        O::to_device(state, device)
    }
}

/// Whether the fast path takes this parameter: every tensor `f32` with the parameter's shape,
/// and no AMSGrad maximum (kiln never turns it on).
fn fusable<const D: usize>(
    tensor: &Tensor<Flex, D>,
    grad: &Tensor<Flex, D>,
    momentum: Option<&AdaptiveMomentumState<Flex, D>>,
) -> bool {
    let shape = tensor.shape();
    let f32_of_shape = |t: &Tensor<Flex, D>| t.dtype() == DType::F32 && t.shape() == shape;
    f32_of_shape(tensor)
        && f32_of_shape(grad)
        && momentum.is_none_or(|m| {
            m.max_moment_2.is_none()
                && f32_of_shape(&m.moment_1)
                && f32_of_shape(&m.moment_2)
                && m.time < i32::MAX as usize
        })
}

/// The primitive of a float tensor, contiguous from offset 0, holding exactly its elements.
fn dense<const D: usize>(tensor: Tensor<Flex, D>) -> FlexTensor {
    let t = tensor.into_primitive().tensor();
    let n = t.layout().num_elements();
    if t.layout().contiguous_offsets() == Some((0, n)) && t.bytes().len() == n * 4 { t } else { t.to_contiguous() }
}

/// One Adam(W) step for one parameter, in place where the buffers are not shared.
fn fused_step<const D: usize>(
    lr: LearningRate,
    tensor: Tensor<Flex, D>,
    grad: Tensor<Flex, D>,
    momentum: Option<AdaptiveMomentumState<Flex, D>>,
    h: Hyper,
    decoupled: bool,
) -> (Tensor<Flex, D>, AdaptiveMomentumState<Flex, D>) {
    let shape = tensor.shape();
    let (time, m, v) = match momentum {
        Some(s) => (s.time + 1, dense(s.moment_1), dense(s.moment_2)),
        None => {
            let zeros = || FlexTensor::zeros(shape.clone(), DType::F32);
            (1, zeros(), zeros())
        }
    };
    let (mut p, g, mut m, mut v) = (dense(tensor), dense(grad), m, v);
    let c = Coefficients::new(lr, h, time, decoupled);
    {
        let g = g.storage::<f32>();
        let (p, m, v) = (p.storage_mut::<f32>(), m.storage_mut::<f32>(), v.storage_mut::<f32>());
        if p.len() >= PARALLEL_MIN {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| c.apply(p, g, m, v));
        } else {
            c.apply(p, g, m, v);
        }
    }
    let float = |t: FlexTensor| Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(t));
    (float(p), AdaptiveMomentumState::new(time, float(m), float(v)))
}

/// The per-step scalars of the update, computed once in f64.
#[derive(Clone, Copy, Debug)]
struct Coefficients {
    beta_1: f32,
    beta_2: f32,
    one_minus_beta_1: f32,
    one_minus_beta_2: f32,
    /// Adam's L2 penalty, added to the gradient (0 for AdamW).
    l2: f32,
    /// Multiplies the parameter before the update (`1 - lr * wd` for AdamW, else 1).
    shrink: f32,
    /// `lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)`.
    step: f32,
    /// `epsilon * sqrt(1 - beta_2^t)`: epsilon added to the bias-corrected root, moved onto
    /// the uncorrected one.
    epsilon: f32,
}

impl Coefficients {
    fn new(lr: f64, h: Hyper, time: usize, decoupled: bool) -> Self {
        let t = i32::try_from(time).unwrap_or(i32::MAX);
        let (b1, b2) = (f64::from(h.beta_1), f64::from(h.beta_2));
        let correction_2 = (1.0 - b2.powi(t)).sqrt();
        let wd = f64::from(h.weight_decay);
        Self {
            beta_1: h.beta_1,
            beta_2: h.beta_2,
            one_minus_beta_1: (1.0 - b1) as f32,
            one_minus_beta_2: (1.0 - b2) as f32,
            l2: if decoupled { 0.0 } else { h.weight_decay },
            shrink: if decoupled { (1.0 - lr * wd) as f32 } else { 1.0 },
            step: (lr * correction_2 / (1.0 - b1.powi(t))) as f32,
            epsilon: (f64::from(h.epsilon) * correction_2) as f32,
        }
    }

    /// The update over one run of elements, vectorised for the widest instruction set the CPU
    /// has (pulp picks AVX-512 or AVX2 at run time). No fused multiply-adds, so every path
    /// rounds the same way.
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || self.apply_scalar(p, g, m, v),
        );
    }

    #[inline(always)]
    fn apply_scalar(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g + self.l2 * *p;
            *m = self.beta_1 * *m + self.one_minus_beta_1 * g;
            *v = self.beta_2 * *v + self.one_minus_beta_2 * (g * g);
            *p = self.shrink * *p - self.step * *m / (v.sqrt() + self.epsilon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::TensorData;

    /// Values in [-2, 2) from `seed` (not burn's generator: it is process-wide, and tests
    /// run at once would interleave its draws).
    fn random(shape: [usize; 2], seed: u64) -> Tensor<Flex, 2> {
        let mut rng = kiln_data::SplitMix64::new(seed);
        let values: Vec<f32> = (0..shape[0] * shape[1]).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn values(t: &Tensor<Flex, 2>) -> Vec<f32> {
        t.to_data().to_vec::<f32>().expect("f32")
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-6 + 1e-5 * y.abs(), "{what}[{i}]: fused {x}, burn {y}");
        }
    }

    /// Ten steps of the fused optimiser and of burn's, from the same parameter and gradients,
    /// agree element by element, moments and step count included. Large enough to take the
    /// parallel path, and once more small enough for the serial one.
    fn agrees_with_burn<O: Variant>(fused: &Fused<O>) {
        let burn = &fused.burn;
        for shape in [[512, 300], [7, 5]] {
            let (mut a, mut b) = (random(shape, 1), random(shape, 1));
            let (mut sa, mut sb) = (None, None);
            for step in 0..10 {
                let grad = random(shape, 100 + step);
                let lr = 1e-2 / (1.0 + step as f64);
                (a, sa) = fused.step(lr, a, grad.clone(), sa);
                (b, sb) = burn.step(lr, b, grad, sb);
            }
            assert_close(&values(&a), &values(&b), "parameter");
            let (ma, mb) = (O::into_moments(sa.expect("state")), O::into_moments(sb.expect("state")));
            assert_eq!(ma.time, 10);
            assert_eq!(ma.time, mb.time);
            assert_close(&values(&ma.moment_1), &values(&mb.moment_1), "first moment");
            assert_close(&values(&ma.moment_2), &values(&mb.moment_2), "second moment");
        }
    }

    /// The fused gradient norm agrees with squaring and summing each gradient with burn.
    #[test]
    fn gradient_norm_matches_the_generic_one() {
        let device = Default::default();
        for hidden in [[600, 300], [8, 4]] {
            let model: crate::model::Model<Autodiff<Flex>> =
                crate::model::ModelConfig::mlp(64, &hidden, 3).init(&device);
            let x = Tensor::<Autodiff<Flex>, 2>::from_data(random([32, 64], 9).into_data(), &device);
            let loss = model.forward(x).powi_scalar(2).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let mut expected = 0.0f64;
            model.visit(&mut Expected { grads: &grads, sum: &mut expected });
            let fused = grad_norm(&model, &grads);
            assert!(fused > 0.0);
            assert!((fused - expected.sqrt()).abs() <= 1e-5 * fused, "fused {fused}, burn {}", expected.sqrt());
        }

        struct Expected<'a> {
            grads: &'a GradientsParams,
            sum: &'a mut f64,
        }
        impl ModuleVisitor<Autodiff<Flex>> for Expected<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Autodiff<Flex>, D>>) {
                if let Some(g) = self.grads.get::<Flex, D>(param.id) {
                    *self.sum += g.powi_scalar(2).sum().into_scalar().elem::<f64>();
                }
            }
        }
    }

    const HYPER: Hyper = Hyper { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.05 };

    #[test]
    fn fused_adam_matches_burns_adam() {
        agrees_with_burn(&Fused::adam(HYPER));
        agrees_with_burn(&Fused::adam(Hyper { weight_decay: 0.0, ..HYPER }));
    }

    #[test]
    fn fused_adamw_matches_burns_adamw() {
        agrees_with_burn(&Fused::adamw(HYPER));
    }

    /// A parameter whose buffer is shared (a clone kept elsewhere) is copied, not written
    /// through: the clone keeps its values.
    #[test]
    fn shared_parameters_are_not_written_through() {
        let p = Tensor::<Flex, 2>::from_data(TensorData::new(vec![1.0f32; 6], [2, 3]), &Default::default());
        let kept = p.clone();
        let grad = Tensor::<Flex, 2>::from_data(TensorData::new(vec![0.5f32; 6], [2, 3]), &Default::default());
        let (updated, _) = Fused::adam(HYPER).step(0.1, p, grad, None);
        assert_eq!(values(&kept), vec![1.0; 6]);
        assert!(values(&updated).iter().all(|v| *v < 1.0));
    }

    /// A transposed (non-contiguous) gradient is read in logical order.
    #[test]
    fn strided_gradients_are_read_in_order() {
        let data: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        let g_t = Tensor::<Flex, 2>::from_data(TensorData::new(data, [3, 2]), &Default::default()).transpose();
        let g = Tensor::<Flex, 2>::from_data(g_t.to_data(), &Default::default());
        let p = || Tensor::<Flex, 2>::from_data(TensorData::new(vec![0.3f32; 6], [2, 3]), &Default::default());
        let optim = Fused::adam(HYPER);
        let (a, _) = optim.step(0.1, p(), g_t, None);
        let (b, _) = optim.step(0.1, p(), g, None);
        assert_eq!(values(&a), values(&b));
    }
}
