//! A dense layer, `relu(x·W + b)` or `x·W + b`, as one operation on the CPU backend.
//!
//! burn builds a dense layer from three autodiff operations (product, bias add, ReLU), and
//! burn-flex runs each into a freshly zeroed buffer, with the bias add, the ReLU, their
//! backward passes and the bias gradient's column sum as serial, mostly scalar passes. On the
//! 512-wide MLP the training pool's second core waited on those for a fifth of each step.
//! Here the layer is one autodiff operation on `Autodiff<Flex>` (and one plain function on
//! `Flex`, for evaluation and prediction):
//!
//! - forward: `gemm` writes `x·W`, then one pass adds the bias and applies the ReLU;
//! - backward: one pass applies the ReLU's mask to the upstream gradient and sums its columns
//!   (the bias gradient, in fixed row blocks, so the same on any number of threads); then
//!   `dW = xᵀ·g` and `dx = g·Wᵀ`, the latter through a transposed copy of `W`, where gemm
//!   would first repack `W` on one thread;
//! - the element-wise passes are vectorised for the CPU's widest instruction set (pulp picks
//!   it at run time), split over the current rayon pool above 16k elements and run on the
//!   calling thread below that (a one-row prediction does not wait for the pool), and write
//!   buffers that are not zeroed first.
//!
//! The choice is made at run time: [`dense`] takes any backend, and falls back to burn's own
//! layer for any other backend, element type or shape, so the model code stays generic.

use std::any::{Any, TypeId};
use std::mem::MaybeUninit;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::nn::Linear;
use burn::tensor::activation;
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_flex::{Flex, FlexTensor, Layout};
use rayon::prelude::*;

/// The float primitive of `Autodiff<Flex, C>`, whatever the checkpointing strategy `C`.
type FlexAd = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

/// Elements per parallel piece of an element-wise pass; a pass over fewer runs on the calling
/// thread (a batch of one row at prediction time must not wait for a pool's threads).
const CHUNK: usize = 16 * 1024;

/// `f(index, piece)` for each `len`-long piece of `values`, pieces split over the current rayon
/// pool when there is more than one and more than `CHUNK` elements in all, in order on the
/// calling thread otherwise. Returns the
/// results in piece order.
fn pieces<T: Send, R: Send>(values: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) -> R + Sync + Send) -> Vec<R> {
    let len = len.max(1);
    if values.len() > len.max(CHUNK) {
        values.par_chunks_mut(len).enumerate().map(|(i, piece)| f(i, piece)).collect()
    } else {
        values.chunks_mut(len).enumerate().map(|(i, piece)| f(i, piece)).collect()
    }
}

/// Rows of `width` elements per piece: about `CHUNK` elements, whole rows.
fn rows_per_piece(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1) * width.max(1)
}

/// `relu(x·W + b)` when `relu`, else `x·W + b`, for `x` of shape `[rows, inputs]`: burn's
/// `layer.forward(x)` (followed by `relu`), for your own models too.
///
/// Fused on `Flex` and `Autodiff<Flex>` for f32 tensors with a bias (one operation forward and
/// one backward, see the module's notes); burn's `Linear` (and ReLU) on any other backend
/// (CUDA), element type or shape, so model code that calls it stays generic.
///
/// ```
/// use burn::backend::Flex;
/// use burn::nn::LinearConfig;
/// use burn::tensor::Tensor;
///
/// let device = Default::default();
/// let layer = LinearConfig::new(4, 3).init::<Flex>(&device);
/// let x = Tensor::<Flex, 2>::ones([2, 4], &device);
/// let fused = kiln_train::dense(&layer, x.clone(), true);
/// let burns = burn::tensor::activation::relu(layer.forward(x));
/// assert_eq!(fused.into_data(), burns.into_data()); // bit for bit on the CPU
/// ```
pub fn dense<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>, relu: bool) -> Tensor<B, 2> {
    let primitive = TypeId::of::<B::FloatTensorPrimitive>();
    let on_flex = primitive == TypeId::of::<FlexAd>() || primitive == TypeId::of::<FlexTensor>();
    let w = layer.weight.val();
    let fits = |b: &Tensor<B, 1>| {
        let [inputs, outputs] = w.dims();
        [x.dtype(), w.dtype(), b.dtype()] == [DType::F32; 3] && x.dims()[1] == inputs && b.dims() == [outputs]
    };
    match &layer.bias {
        Some(bias) if on_flex && fits(&bias.val()) => {
            let x = x.into_primitive().tensor();
            let w = w.into_primitive().tensor();
            let b = bias.val().into_primitive().tensor();
            let y = if primitive == TypeId::of::<FlexAd>() {
                same(ad_dense(same(x), same(w), same(b), relu))
            } else {
                same(flex_dense(same(x), same(w), same(b), relu))
            };
            Tensor::from_primitive(TensorPrimitive::Float(y))
        }
        _ => {
            let y = layer.forward(x);
            if relu { activation::relu(y) } else { y }
        }
    }
}

/// `value` as a `U`, where the caller has checked that `T` is `U`.
fn same<T: 'static, U: 'static>(value: T) -> U {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>().and_then(Option::take) {
        Some(u) => u,
        None => unreachable!("the primitive's type was compared before the cast"),
    }
}

/// The fused layer on `Flex`: no gradient kept.
fn flex_dense(x: FlexTensor, w: FlexTensor, b: FlexTensor, relu: bool) -> FlexTensor {
    let (x, w, b) = (contiguous(x), contiguous(w), contiguous(b));
    let (rows, inputs, outputs) = (x.shape()[0], x.shape()[1], b.shape()[0]);
    matrix(forward(f32s(&x), f32s(&w), f32s(&b), rows, inputs, relu), [rows, outputs])
}

/// The fused layer on `Autodiff<Flex>`: one node in the graph, with [`DenseBackward`].
fn ad_dense(x: FlexAd, w: FlexAd, b: FlexAd, relu: bool) -> FlexAd {
    let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
    // The state holds the tensors the backward step needs, so no checkpointing strategy of the
    // graph's is involved.
    let prep = DenseBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful();
    match prep {
        OpsKind::Tracked(prep) => {
            let (x, w) = (contiguous(x.primitive), contiguous(w.primitive));
            let y = flex_dense(x.clone(), w.clone(), b.primitive, relu);
            let state = DenseState { x: w_tracked.then_some(x), w: x_tracked.then_some(w), y: relu.then(|| y.clone()) };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(flex_dense(x.primitive, w.primitive, b.primitive, relu)),
    }
}

/// The backward step of [`ad_dense`].
#[derive(Debug)]
struct DenseBackward;

/// What [`DenseBackward`] needs from the forward pass.
#[derive(Debug, Clone)]
struct DenseState {
    /// The input `[rows, inputs]`, kept when `W` needs a gradient.
    x: Option<FlexTensor>,
    /// The weight `[inputs, outputs]`, kept when `x` needs a gradient.
    w: Option<FlexTensor>,
    /// The output after the ReLU, for its mask; `None` without a ReLU.
    y: Option<FlexTensor>,
}

impl Backward<Flex, 3> for DenseBackward {
    type State = DenseState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node, b_node] = ops.parents;
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let (rows, outputs) = (g.shape()[0], g.shape()[1]);
        let state = ops.state;
        let (masked, db) = mask_and_sum(f32s(&g), state.y.as_ref().map(f32s), outputs, b_node.is_some());
        let g = masked.as_deref().unwrap_or(f32s(&g));
        if let (Some(node), Some(db)) = (b_node, db) {
            grads.register::<Flex>(node.id, matrix(db, [outputs]));
        }
        if let (Some(node), Some(x)) = (w_node, &state.x) {
            let inputs = x.shape()[1];
            grads
                .register::<Flex>(node.id, matrix(weight_grad(f32s(x), g, [rows, inputs, outputs]), [inputs, outputs]));
        }
        if let (Some(node), Some(w)) = (x_node, &state.w) {
            let inputs = w.shape()[0];
            grads.register::<Flex>(node.id, matrix(input_grad(g, f32s(w), [rows, inputs, outputs]), [rows, inputs]));
        }
    }
}

/// `t` with a contiguous layout (a copy only when it is strided).
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() { t } else { t.to_contiguous() }
}

/// The elements of a contiguous f32 tensor.
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("dense: the tensor was made contiguous and checked to be f32")
}

/// A contiguous f32 tensor of `shape` over `values`, without a copy.
fn matrix<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(Shape::new(shape)), DType::F32)
}

/// How gemm may split an `m × k` by `k × n` product. On a rayon worker (a training runs on
/// the training pool, whose threads spin between products) over the current pool, whatever
/// the size (gemm itself keeps tiny ones on one thread). Elsewhere, as for a prediction on a
/// server's thread, only from burn-flex's threshold of 192³ multiply-adds: below it, waking
/// a sleeping pool costs more than it saves (a batch of 64 rows took 1.6× as long).
fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    const ALONE_BELOW: usize = 192 * 192 * 192;
    if rayon::current_thread_index().is_some() || m.saturating_mul(n).saturating_mul(k) >= ALONE_BELOW {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// `len` elements written by `fill`, which must write every element of the slice it is given
/// (the callers below do; skipping the zeroing that `vec![0.0; len]` would do is the point).
#[allow(unsafe_code)]
fn filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    fill(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised the first `len` elements, within the capacity reserved above.
    unsafe { values.set_len(len) };
    values
}

/// A row-major matrix operand: its elements and shape.
#[derive(Clone, Copy)]
struct Operand<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    /// Read as its transpose (`cols × rows`).
    transposed: bool,
}

impl<'a> Operand<'a> {
    fn new(values: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { values, rows, cols, transposed: false }
    }

    fn t(self) -> Self {
        Self { transposed: !self.transposed, ..self }
    }

    /// Shape as read, and the (column, row) strides gemm takes.
    fn read(&self) -> (usize, usize, isize, isize) {
        let (rs, cs) = (self.cols as isize, 1);
        if self.transposed { (self.cols, self.rows, rs, cs) } else { (self.rows, self.cols, cs, rs) }
    }
}

/// `dst = lhs·rhs`, `dst` row-major. Panics if the shapes do not chain or a slice is too short:
/// callers have checked the shapes, so that would be a bug here.
#[allow(unsafe_code)]
fn product(dst: &mut [MaybeUninit<f32>], lhs: Operand<'_>, rhs: Operand<'_>) {
    let (m, k, lhs_cs, lhs_rs) = lhs.read();
    let (k2, n, rhs_cs, rhs_rs) = rhs.read();
    assert!(k == k2, "dense: product of {m}x{k} by {k2}x{n}");
    assert!(lhs.values.len() >= lhs.rows * lhs.cols && rhs.values.len() >= rhs.rows * rhs.cols);
    let len = dst.len();
    // Exactly: `filled` takes every element of `dst` as written.
    assert_eq!(len, m * n, "dense: {len} elements for a {m}x{n} product");
    if k == 0 {
        dst.iter_mut().take(m * n).for_each(|v| _ = v.write(0.0));
    }
    if m * n * k == 0 {
        return;
    }
    let (dst, lhs, rhs) = (dst.as_mut_ptr().cast::<f32>(), lhs.values.as_ptr(), rhs.values.as_ptr());
    let (read_dst, alpha, beta, conj) = (false, 0.0, 1.0, false);
    // SAFETY: the asserts above bound every index gemm forms from these shapes and strides
    // inside the three slices; dst is borrowed mutably, so it aliases neither operand; gemm
    // does not read dst (`read_dst` is false), so it may be uninitialised.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            conj,
            conj,
            conj,
            parallelism(m, n, k),
        );
    }
}

/// `relu(x·W + b)` or `x·W + b`: the product, then the bias added (and the ReLU applied) in
/// one pass. The bias is added after the product, as burn does, so the values are burn's
/// layer's bit for bit, and a row alone gets the same bits as in a batch as long as gemm sums
/// its products in one order for both: up to 512 inputs (above, gemm's batch kernel sums
/// blocks of 512 and its one-row kernel one chain; burn's layer is the same).
fn forward(x: &[f32], w: &[f32], b: &[f32], rows: usize, inputs: usize, relu: bool) -> Vec<f32> {
    let outputs = b.len();
    let mut y = filled(rows * outputs, |y| product(y, Operand::new(x, rows, inputs), Operand::new(w, inputs, outputs)));
    pieces(&mut y, rows_per_piece(outputs), |_, piece| {
        for row in piece.chunks_mut(outputs) {
            let n = row.len().min(b.len());
            let (row, b) = (&mut row[..n], &b[..n]);
            if relu {
                simd(
                    #[inline(always)]
                    || (0..n).for_each(|i| row[i] = (row[i] + b[i]).max(0.0)),
                );
            } else {
                simd(
                    #[inline(always)]
                    || (0..n).for_each(|i| row[i] += b[i]),
                );
            }
        }
    });
    y
}

/// The upstream gradient through the ReLU's mask (`None` without a ReLU: `g` as it is), and
/// its column sums, the bias gradient, when `sum`. The sums are added in a fixed order of
/// fixed row blocks, so they do not depend on the number of threads.
fn mask_and_sum(g: &[f32], y: Option<&[f32]>, outputs: usize, sum: bool) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let outputs = outputs.max(1);
    let per_piece = rows_per_piece(outputs);
    let range = |i: usize, len: usize| i * per_piece..(i * per_piece + len).min(g.len());
    let total = |partials: Vec<Vec<f32>>| {
        let mut sums = vec![0.0f32; outputs];
        for partial in partials {
            sums.iter_mut().zip(partial).for_each(|(s, v)| *s += v);
        }
        sums
    };
    match y {
        None => {
            let column_sums = |piece: &[f32]| {
                let mut sums = vec![0.0f32; outputs];
                for row in piece.chunks(outputs) {
                    let n = row.len().min(outputs);
                    let (s, row) = (&mut sums[..n], &row[..n]);
                    simd(
                        #[inline(always)]
                        || (0..n).for_each(|c| s[c] += row[c]),
                    );
                }
                sums
            };
            let sums = sum.then(|| {
                total(if g.len() > per_piece {
                    g.par_chunks(per_piece).map(column_sums).collect()
                } else {
                    g.chunks(per_piece).map(column_sums).collect()
                })
            });
            (None, sums)
        }
        Some(y) => {
            let mut partials = Vec::new();
            let masked = filled(g.len(), |out| {
                partials = pieces(out, per_piece, |i, out| {
                    let rows = range(i, out.len());
                    let (g, y) = (&g[rows.clone()], &y[rows]);
                    let mut sums = vec![0.0f32; if sum { outputs } else { 0 }];
                    for ((out, g), y) in out.chunks_mut(outputs).zip(g.chunks(outputs)).zip(y.chunks(outputs)) {
                        simd(
                            #[inline(always)]
                            || mask_row(out, g, y, &mut sums),
                        );
                    }
                    sums
                });
            });
            (Some(masked), sum.then(|| total(partials)))
        }
    }
}

/// Runs `f` compiled for the widest instruction set the CPU has (pulp picks AVX-512 or AVX2 at
/// run time), so the element loops it inlines are vectorised with it: `f` must be an
/// `#[inline(always)]` closure.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// One row of the ReLU mask: `out = g` where `y > 0`, else 0, added to `sums` (when it is
/// not empty). The mask is applied to the bits, so no load is conditional and it vectorises.
#[inline(always)]
fn mask_row(out: &mut [MaybeUninit<f32>], g: &[f32], y: &[f32], sums: &mut [f32]) {
    let n = out.len().min(g.len()).min(y.len());
    let (out, g, y) = (&mut out[..n], &g[..n], &y[..n]);
    for i in 0..n {
        out[i].write(f32::from_bits(g[i].to_bits() & if y[i] > 0.0 { u32::MAX } else { 0 }));
    }
    if sums.len() >= n {
        let sums = &mut sums[..n];
        for i in 0..n {
            sums[i] += f32::from_bits(g[i].to_bits() & if y[i] > 0.0 { u32::MAX } else { 0 });
        }
    }
}

/// `dW = xᵀ·g`, `[inputs, outputs]`.
fn weight_grad(x: &[f32], g: &[f32], [rows, inputs, outputs]: [usize; 3]) -> Vec<f32> {
    filled(inputs * outputs, |dw| {
        product(dw, Operand::new(x, rows, inputs).t(), Operand::new(g, rows, outputs));
    })
}

/// `dx = g·Wᵀ`, `[rows, inputs]`, through a transposed copy of `W`: with `W` itself as the
/// transposed operand, gemm first packs it on one thread.
fn input_grad(g: &[f32], w: &[f32], [rows, inputs, outputs]: [usize; 3]) -> Vec<f32> {
    let wt = transpose(w, inputs, outputs);
    filled(rows * inputs, |dx| {
        product(dx, Operand::new(g, rows, outputs), Operand::new(&wt, outputs, inputs));
    })
}

/// `w` (`rows × cols`, row-major) transposed, a task per 16 rows of the result. Each 16 × 16
/// tile is read row by row into a buffer and written out column by column.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    filled(rows * cols, |wt| {
        pieces(wt, TILE * rows, |block, out| {
            let first = block * TILE;
            let width = out.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                let height = TILE.min(rows - r0);
                if width == TILE && height == TILE {
                    simd(
                        #[inline(always)]
                        || transpose_tile(w, cols, r0, first, out, rows),
                    );
                } else {
                    for c in 0..width {
                        for r in 0..height {
                            out[c * rows + r0 + r].write(w[(r0 + r) * cols + first + c]);
                        }
                    }
                }
            }
        });
    })
}

/// The side of [`transpose`]'s tiles.
const TILE: usize = 16;

/// One full tile of [`transpose`]: `w[r0.., c0..]` into `out[.., r0..]`, fixed sizes so that
/// it compiles to vector loads, shuffles and stores.
#[inline(always)]
fn transpose_tile(w: &[f32], cols: usize, r0: usize, c0: usize, out: &mut [MaybeUninit<f32>], rows: usize) {
    let mut tile = [[0.0f32; TILE]; TILE];
    for (r, line) in tile.iter_mut().enumerate() {
        let start = (r0 + r) * cols + c0;
        line.copy_from_slice(&w[start..start + TILE]);
    }
    for (c, dst) in out.chunks_exact_mut(rows).take(TILE).enumerate() {
        let dst: &mut [MaybeUninit<f32>; TILE] =
            (&mut dst[r0..r0 + TILE]).try_into().expect("a tile's row is TILE long");
        for (d, line) in dst.iter_mut().zip(&tile) {
            d.write(line[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::LinearConfig;
    use burn::tensor::TensorData;

    use super::*;

    type Ad = Autodiff<Flex>;

    /// Values in [-2, 2) from `seed` (not burn's process-wide generator).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = kiln_data::SplitMix64::new(seed);
        (0..len).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect()
    }

    fn matrix<B: Backend>(shape: [usize; 2], seed: u64) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(values(shape[0] * shape[1], seed), shape), &Default::default())
    }

    fn layer<B: Backend>(inputs: usize, outputs: usize) -> Linear<B> {
        let mut layer = LinearConfig::new(inputs, outputs).init::<B>(&Default::default());
        layer.weight = Param::from_tensor(matrix([inputs, outputs], 1));
        let bias = Tensor::from_data(TensorData::new(values(outputs, 2), [outputs]), &Default::default());
        layer.bias = Some(Param::from_tensor(bias));
        layer
    }

    fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32")
    }

    fn assert_close(fused: &[f32], burn: &[f32], what: &str) {
        assert_eq!(fused.len(), burn.len(), "{what}");
        for (i, (a, b)) in fused.iter().zip(burn).enumerate() {
            assert!((a - b).abs() <= 1e-4 + 1e-5 * b.abs(), "{what}[{i}]: fused {a}, burn {b}");
        }
    }

    /// The output and the gradients of x (when it is tracked), W and b of a weighted sum of
    /// `layer_fn`'s output. `x` is given transposed (a strided view) when `strided`.
    fn run(
        [rows, inputs, outputs]: [usize; 3],
        tracked: bool,
        strided: bool,
        layer_fn: impl Fn(&Linear<Ad>, Tensor<Ad, 2>) -> Tensor<Ad, 2>,
    ) -> [Vec<f32>; 4] {
        let layer = layer::<Ad>(inputs, outputs);
        let leaf = if strided { matrix::<Ad>([inputs, rows], 3) } else { matrix::<Ad>([rows, inputs], 3) };
        let leaf = if tracked { leaf.require_grad() } else { leaf };
        let x = if strided { leaf.clone().transpose() } else { leaf.clone() };
        let y = layer_fn(&layer, x);
        let grads = (y.clone() * matrix::<Ad>([rows, outputs], 4)).sum().backward();
        let grad = |t: Option<Tensor<Flex, 2>>| t.map(to_vec).unwrap_or_default();
        [
            to_vec(y),
            grad(leaf.grad(&grads)),
            grad(layer.weight.val().grad(&grads)),
            layer.bias.as_ref().and_then(|b| b.val().grad(&grads)).map(to_vec).expect("bias gradient"),
        ]
    }

    /// The fused layer computes burn's output and gradients, with and without the ReLU, for
    /// sizes that are not multiples of any SIMD width, a strided input, an input that needs
    /// no gradient, and sizes large enough for the products and passes to be split over threads.
    #[test]
    fn fused_layer_matches_burn() {
        let burn = |relu: bool| {
            move |layer: &Linear<Ad>, x: Tensor<Ad, 2>| {
                let y = layer.forward(x);
                if relu { activation::relu(y) } else { y }
            }
        };
        for shape in [[37, 50, 70], [256, 300, 200], [1, 3, 1], [0, 5, 7]] {
            for relu in [true, false] {
                for (tracked, strided) in [(true, false), (false, false), (true, true)] {
                    let fused = run(shape, tracked, strided, |layer, x| dense(layer, x, relu));
                    let reference = run(shape, tracked, strided, burn(relu));
                    let case = format!("{shape:?} relu {relu} tracked {tracked} strided {strided}");
                    for (what, (a, b)) in ["y", "dx", "dW", "db"].iter().zip(fused.iter().zip(&reference)) {
                        assert_close(a, b, &format!("{case}: {what}"));
                    }
                    assert_eq!(fused[1].is_empty(), !tracked || shape[0] == 0, "{case}: dx only for a tracked input");
                    if relu && fused[0].len() > 100 {
                        assert!(fused[0].contains(&0.0) && fused[0].iter().any(|v| *v > 0.0), "{case}: ReLU cut");
                    }
                }
            }
        }
    }

    /// `dense` takes the fused path on both CPU backends (bit-identical to calling it), and on
    /// `Flex` it computes burn's values exactly.
    #[test]
    fn dense_dispatches_to_the_fused_layer() {
        let (ad, x) = (layer::<Ad>(20, 30), matrix::<Ad>([9, 20], 5));
        let direct = ad_dense(
            same(x.clone().into_primitive().tensor()),
            same(ad.weight.val().into_primitive().tensor()),
            same(ad.bias.as_ref().expect("bias").val().into_primitive().tensor()),
            true,
        );
        let direct: Tensor<Ad, 2> = Tensor::from_primitive(TensorPrimitive::Float(direct));
        assert_eq!(to_vec(dense(&ad, x, true)), to_vec(direct));

        let (flex, x) = (layer::<Flex>(20, 30), matrix::<Flex>([9, 20], 5));
        let fused = to_vec(dense(&flex, x.clone(), true));
        let direct = flex_dense(
            x.clone().into_primitive().tensor(),
            flex.weight.val().into_primitive().tensor(),
            flex.bias.as_ref().expect("bias").val().into_primitive().tensor(),
            true,
        );
        assert_eq!(fused, to_vec(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(direct))));
        assert_eq!(fused, to_vec(activation::relu(flex.forward(x))), "the same sums, in the same order, as burn's");
    }

    /// A row predicted alone gets the same bits as in a batch (package checks and serving rely
    /// on it), on the serial and the parallel path.
    #[test]
    fn a_row_alone_equals_the_row_in_a_batch() {
        let layer = layer::<Flex>(64, 300);
        let batch = matrix::<Flex>([256, 64], 9);
        let all = to_vec(dense(&layer, batch.clone(), true));
        for row in [0, 255] {
            let alone = to_vec(dense(&layer, batch.clone().slice([row..row + 1, 0..64]), true));
            assert_eq!(alone, all[row * 300..(row + 1) * 300], "row {row}");
        }
    }

    /// The bias gradient's sums do not depend on how many threads run them.
    #[test]
    fn bias_gradient_is_the_same_on_any_pool() {
        let (g, y) = (values(300 * 200, 7), values(300 * 200, 8));
        let sums = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            pool.install(|| (mask_and_sum(&g, Some(&y), 200, true), mask_and_sum(&g, None, 200, true)))
        };
        let (one, three) = (sums(1), sums(3));
        assert_eq!(one, three);
        assert!(one.1.0.is_none(), "without a ReLU the gradient is passed on as it is");
    }
}
