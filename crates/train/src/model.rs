//! Model architectures, built from a serde [`ModelConfig`].
//!
//! Every model takes a batch of flat feature rows `[rows, features]` and returns logits
//! `[rows, classes]`. A CNN reads each row as an image stored height × width × channels
//! (row-major, channels last, the layout of image arrays and of the digits CSV's
//! `pixel_r_c` columns) and rearranges it to burn's `[batch, channels, height, width]` itself,
//! so packages, serving and preprocessing see the same flat rows for every model kind.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::dense::dense;
use crate::{Error, Result};

/// The non-linearity between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`.
    #[default]
    Relu,
    /// Gaussian error linear unit (exact, erf-based).
    Gelu,
    /// Hyperbolic tangent.
    Tanh,
    /// Leaky ReLU with slope 0.01 below zero.
    LeakyRelu,
}

impl Activation {
    fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Relu => activation::relu(x),
            Self::Gelu => activation::gelu(x),
            Self::Tanh => activation::tanh(x),
            Self::LeakyRelu => activation::leaky_relu(x, 0.01),
        }
    }

    /// The activation of a dense layer's output, fused with the layer where it can be.
    fn after<B: Backend>(self, layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Self::Relu => dense(layer, x, true),
            _ => self.apply(dense(layer, x, false)),
        }
    }
}

/// An architecture. Serialised with a `kind` tag:
///
/// ```json
/// {"kind": "mlp", "inputs": 64, "hidden": [128, 64], "classes": 10, "dropout": 0.1}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    /// Multinomial logistic regression: one linear layer and softmax.
    Logistic {
        /// Number of input features.
        inputs: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A multilayer perceptron.
    Mlp(MlpConfig),
    /// A convolutional network over images stored as flat rows.
    Cnn(CnnConfig),
}

/// `inputs → hidden[0] → … → classes`; each hidden layer is linear, optional batch norm,
/// activation, dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Number of input features.
    pub inputs: usize,
    /// Width of each hidden layer.
    pub hidden: Vec<usize>,
    /// Number of classes (output logits).
    pub classes: usize,
    /// Non-linearity after each hidden layer.
    #[serde(default)]
    pub activation: Activation,
    /// Dropout probability after each hidden layer, during training only.
    #[serde(default)]
    pub dropout: f64,
    /// Batch normalisation after each hidden linear layer.
    #[serde(default)]
    pub batch_norm: bool,
}

impl MlpConfig {
    /// ReLU, no dropout, no batch norm.
    pub fn new(inputs: usize, hidden: &[usize], classes: usize) -> Self {
        Self { inputs, hidden: hidden.to_vec(), classes, activation: Activation::Relu, dropout: 0.0, batch_norm: false }
    }
}

/// How a CNN turns its last feature maps into a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CnnHead {
    /// Average each channel over the whole map (size-independent; the default).
    #[default]
    GlobalAvgPool,
    /// Keep every position (`channels × h × w` values); suits small images.
    Flatten,
}

/// Convolution blocks, then dense layers. Each block is a 3×3 convolution (same padding),
/// optional batch norm, the activation, and a 2×2 max pool while the map is at least 2×2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnnConfig {
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Channels per pixel (1 grey, 3 RGB).
    pub channels: usize,
    /// Number of classes.
    pub classes: usize,
    /// Output channels of each convolution block.
    pub filters: Vec<usize>,
    /// Widths of the dense layers after the head.
    #[serde(default)]
    pub dense: Vec<usize>,
    /// How the maps become a vector.
    #[serde(default)]
    pub head: CnnHead,
    /// Non-linearity.
    #[serde(default)]
    pub activation: Activation,
    /// Dropout before each dense layer and the output, during training only.
    #[serde(default)]
    pub dropout: f64,
    /// Batch normalisation after each convolution.
    #[serde(default)]
    pub batch_norm: bool,
}

impl CnnConfig {
    /// Map size after the blocks, and whether each block pools.
    fn plan(&self) -> (usize, usize, Vec<bool>) {
        let (mut h, mut w) = (self.height, self.width);
        let pools = self
            .filters
            .iter()
            .map(|_| {
                let pool = h >= 2 && w >= 2;
                if pool {
                    (h, w) = (h / 2, w / 2);
                }
                pool
            })
            .collect();
        (h, w, pools)
    }

    fn head_width(&self) -> usize {
        let channels = self.filters.last().copied().unwrap_or(self.channels);
        match self.head {
            CnnHead::GlobalAvgPool => channels,
            CnnHead::Flatten => {
                let (h, w, _) = self.plan();
                channels * h * w
            }
        }
    }
}

fn check_dropout(p: f64) -> Result<()> {
    if (0.0..1.0).contains(&p) { Ok(()) } else { Err(Error::Config(format!("dropout must be in [0, 1), got {p}"))) }
}

impl ModelConfig {
    /// An MLP with ReLU, no dropout and no batch norm.
    pub fn mlp(inputs: usize, hidden: &[usize], classes: usize) -> Self {
        Self::Mlp(MlpConfig::new(inputs, hidden, classes))
    }

    /// Number of input features each row must have.
    pub fn inputs(&self) -> usize {
        match self {
            Self::Logistic { inputs, .. } => *inputs,
            Self::Mlp(m) => m.inputs,
            Self::Cnn(c) => c.height * c.width * c.channels,
        }
    }

    /// Number of classes (output logits).
    pub fn classes(&self) -> usize {
        match self {
            Self::Logistic { classes, .. } => *classes,
            Self::Mlp(m) => m.classes,
            Self::Cnn(c) => c.classes,
        }
    }

    /// The model family, as written in package manifests: `logistic`, `mlp` or `cnn`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Logistic { .. } => "logistic",
            Self::Mlp(_) => "mlp",
            Self::Cnn(_) => "cnn",
        }
    }

    /// Checks every size.
    pub fn validate(&self) -> Result<()> {
        if self.inputs() == 0 || self.classes() < 2 {
            return Err(Error::Config(format!(
                "a {} model needs at least one input and two classes, got {} inputs and {} classes",
                self.kind(),
                self.inputs(),
                self.classes()
            )));
        }
        self.validate_layers()
    }

    /// Checks every size of a model with `outputs` outputs (its `classes` field), for tasks
    /// other than classification (a regression's one output).
    pub fn validate_outputs(&self, outputs: usize) -> Result<()> {
        if self.inputs() == 0 || self.classes() != outputs {
            return Err(Error::Config(format!(
                "this task needs a {} model with at least one input and {outputs} output(s) (`classes`), got {} inputs and {} outputs",
                self.kind(),
                self.inputs(),
                self.classes()
            )));
        }
        self.validate_layers()
    }

    fn validate_layers(&self) -> Result<()> {
        match self {
            Self::Logistic { .. } => Ok(()),
            Self::Mlp(m) => {
                if m.hidden.contains(&0) {
                    return Err(Error::Config(format!("MLP hidden layers must be non-empty, got {:?}", m.hidden)));
                }
                check_dropout(m.dropout)
            }
            Self::Cnn(c) => {
                if c.height == 0 || c.width == 0 || c.channels == 0 {
                    return Err(Error::Config(format!(
                        "a CNN needs a non-empty image, got {}x{}x{}",
                        c.height, c.width, c.channels
                    )));
                }
                if c.filters.is_empty() || c.filters.contains(&0) || c.dense.contains(&0) {
                    return Err(Error::Config(format!(
                        "a CNN needs at least one convolution block and non-empty layers, got filters {:?}, dense {:?}",
                        c.filters, c.dense
                    )));
                }
                check_dropout(c.dropout)
            }
        }
    }

    /// Builds the model with freshly initialised (random) weights on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Model<B> {
        self.build(device, Initializer::KaimingUniform { gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false })
    }

    /// Builds the model with zero weights, to be replaced by loaded ones. Draws no random
    /// numbers: burn's generator is process-wide, and loading a model while another thread
    /// trains must not change that training.
    pub(crate) fn init_for_loading<B: Backend>(&self, device: &B::Device) -> Model<B> {
        self.build(device, Initializer::Zeros)
    }

    /// Number of trainable parameters (weights and biases; batch-norm running statistics are
    /// not counted).
    pub fn num_params(&self) -> usize {
        let linear = |a: usize, b: usize| a * b + b;
        let chain = |inputs: usize, hidden: &[usize], classes: usize| {
            let mut dims = vec![inputs];
            dims.extend_from_slice(hidden);
            dims.push(classes);
            dims.windows(2).map(|w| linear(w[0], w[1])).sum::<usize>()
        };
        match self {
            Self::Logistic { inputs, classes } => linear(*inputs, *classes),
            Self::Mlp(m) => {
                chain(m.inputs, &m.hidden, m.classes)
                    + if m.batch_norm { 2 * m.hidden.iter().sum::<usize>() } else { 0 }
            }
            Self::Cnn(c) => {
                let mut channels = c.channels;
                let mut total = 0;
                for f in &c.filters {
                    total += channels * f * 9 + f + if c.batch_norm { 2 * f } else { 0 };
                    channels = *f;
                }
                total + chain(c.head_width(), &c.dense, c.classes)
            }
        }
    }

    fn build<B: Backend>(&self, device: &B::Device, init: Initializer) -> Model<B> {
        let linear = |a: usize, b: usize| LinearConfig::new(a, b).with_initializer(init.clone()).init(device);
        let dense = |inputs: usize, widths: &[usize]| -> Vec<Linear<B>> {
            let mut dims = vec![inputs];
            dims.extend_from_slice(widths);
            dims.windows(2).map(|w| linear(w[0], w[1])).collect()
        };
        match self {
            Self::Logistic { inputs, classes } => Model::Mlp(Mlp {
                hidden: Vec::new(),
                norms: Vec::new(),
                output: linear(*inputs, *classes),
                dropout: DropoutConfig::new(0.0).init(),
                activation: Activation::Relu,
            }),
            Self::Mlp(m) => Model::Mlp(Mlp {
                hidden: dense(m.inputs, &m.hidden),
                norms: if m.batch_norm {
                    m.hidden.iter().map(|w| BatchNormConfig::new(*w).init(device)).collect()
                } else {
                    Vec::new()
                },
                output: linear(m.hidden.last().copied().unwrap_or(m.inputs), m.classes),
                dropout: DropoutConfig::new(m.dropout).init(),
                activation: m.activation,
            }),
            Self::Cnn(c) => {
                let mut channels = c.channels;
                let mut convs = Vec::with_capacity(c.filters.len());
                for f in &c.filters {
                    convs.push(
                        Conv2dConfig::new([channels, *f], [3, 3])
                            .with_padding(PaddingConfig2d::Same)
                            .with_initializer(init.clone())
                            .init(device),
                    );
                    channels = *f;
                }
                let (_, _, pools) = c.plan();
                Model::Cnn(Cnn {
                    convs,
                    norms: if c.batch_norm {
                        c.filters.iter().map(|f| BatchNormConfig::new(*f).init(device)).collect()
                    } else {
                        Vec::new()
                    },
                    pool: MaxPool2dConfig::new([2, 2]).init(),
                    global_pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
                    dense: dense(c.head_width(), &c.dense),
                    output: linear(c.dense.last().copied().unwrap_or(c.head_width()), c.classes),
                    dropout: DropoutConfig::new(c.dropout).init(),
                    image: [c.height, c.width, c.channels],
                    pools,
                    head: c.head,
                    activation: c.activation,
                })
            }
        }
    }
}

/// A model built from a [`ModelConfig`].
#[derive(Module, Debug)]
pub enum Model<B: Backend> {
    /// Logistic regression or an MLP.
    Mlp(Mlp<B>),
    /// A CNN.
    Cnn(Cnn<B>),
}

impl<B: Backend> Model<B> {
    /// Logits for a batch `[rows, inputs]`, shape `[rows, classes]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Self::Mlp(m) => m.forward(x),
            Self::Cnn(c) => c.forward(x),
        }
    }
}

/// A multilayer perceptron (logistic regression when it has no hidden layer).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Vec<Linear<B>>,
    norms: Vec<BatchNorm<B>>,
    output: Linear<B>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
}

impl<B: Backend> Mlp<B> {
    /// Logits for a batch `[rows, inputs]`.
    pub fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        for (i, layer) in self.hidden.iter().enumerate() {
            x = match self.norms.get(i) {
                Some(norm) => self.activation.apply(norm.forward(dense(layer, x, false))),
                None => self.activation.after(layer, x),
            };
            x = self.dropout.forward(x);
        }
        dense(&self.output, x, false)
    }
}

/// Flat rows `[rows, h × w × c]` (channels last) as burn's `[rows, c, h, w]`.
fn image_maps<B: Backend>(x: Tensor<B, 2>, [h, w, c]: [usize; 3]) -> Tensor<B, 4> {
    let rows = x.dims()[0];
    x.reshape([rows, h, w, c]).permute([0, 3, 1, 2])
}

/// A convolutional network over flat height × width × channels rows.
#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    convs: Vec<Conv2d<B>>,
    norms: Vec<BatchNorm<B>>,
    pool: MaxPool2d,
    global_pool: AdaptiveAvgPool2d,
    dense: Vec<Linear<B>>,
    output: Linear<B>,
    dropout: Dropout,
    #[module(skip)]
    image: [usize; 3],
    #[module(skip)]
    pools: Vec<bool>,
    #[module(skip)]
    head: CnnHead,
    #[module(skip)]
    activation: Activation,
}

impl<B: Backend> Cnn<B> {
    /// Logits for a batch of flat images `[rows, height × width × channels]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mut maps = image_maps(x, self.image);
        for (i, conv) in self.convs.iter().enumerate() {
            maps = conv.forward(maps);
            if let Some(norm) = self.norms.get(i) {
                maps = norm.forward(maps);
            }
            maps = self.activation.apply(maps);
            if self.pools[i] {
                maps = self.pool.forward(maps);
            }
        }
        let mut v: Tensor<B, 2> = match self.head {
            CnnHead::GlobalAvgPool => self.global_pool.forward(maps).flatten(1, 3),
            CnnHead::Flatten => maps.flatten(1, 3),
        };
        for layer in &self.dense {
            v = self.activation.after(layer, self.dropout.forward(v));
        }
        dense(&self.output, self.dropout.forward(v), false)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    fn counted(config: &ModelConfig) -> usize {
        config.init::<Flex>(&Default::default()).num_params()
    }

    #[test]
    fn parameter_counts_match_burn() {
        let configs = [
            ModelConfig::Logistic { inputs: 7, classes: 3 },
            ModelConfig::mlp(64, &[256, 256], 10),
            ModelConfig::Mlp(MlpConfig {
                inputs: 5,
                hidden: vec![8, 4],
                classes: 2,
                activation: Activation::Gelu,
                dropout: 0.2,
                batch_norm: true,
            }),
            ModelConfig::Cnn(CnnConfig {
                height: 8,
                width: 8,
                channels: 1,
                classes: 10,
                filters: vec![16, 32],
                dense: vec![64],
                head: CnnHead::Flatten,
                activation: Activation::Relu,
                dropout: 0.1,
                batch_norm: true,
            }),
            ModelConfig::Cnn(CnnConfig {
                height: 96,
                width: 96,
                channels: 3,
                classes: 2,
                filters: vec![8, 16, 16],
                dense: vec![],
                head: CnnHead::GlobalAvgPool,
                activation: Activation::LeakyRelu,
                dropout: 0.0,
                batch_norm: false,
            }),
        ];
        for c in &configs {
            c.validate().unwrap();
            // burn also counts batch norm's running mean and variance, which are not trained.
            let running = match c {
                ModelConfig::Mlp(m) if m.batch_norm => 2 * m.hidden.iter().sum::<usize>(),
                ModelConfig::Cnn(c) if c.batch_norm => 2 * c.filters.iter().sum::<usize>(),
                _ => 0,
            };
            assert_eq!(c.num_params() + running, counted(c), "{c:?}");
        }
    }

    #[test]
    fn rows_are_read_as_height_width_channels() {
        let (h, w, c) = (2, 3, 2);
        let values: Vec<f32> = (0..2 * h * w * c).map(|v| v as f32).collect();
        let x =
            Tensor::<Flex, 2>::from_data(burn::tensor::TensorData::new(values, [2, h * w * c]), &Default::default());
        let maps: Vec<f32> = image_maps(x, [h, w, c]).into_data().to_vec().unwrap();
        for row in 0..2 {
            for ch in 0..c {
                for r in 0..h {
                    for col in 0..w {
                        let at = ((row * c + ch) * h + r) * w + col;
                        assert_eq!(maps[at] as usize, row * h * w * c + (r * w + col) * c + ch);
                    }
                }
            }
        }
    }

    #[test]
    fn a_cnn_gives_each_row_the_same_logits_in_any_batch() {
        let config = ModelConfig::Cnn(CnnConfig {
            height: 5,
            width: 3,
            channels: 2,
            classes: 4,
            filters: vec![3],
            dense: vec![],
            head: CnnHead::Flatten,
            activation: Activation::Tanh,
            dropout: 0.0,
            batch_norm: false,
        });
        let model = config.init::<Flex>(&Default::default());
        let x = Tensor::<Flex, 2>::random([6, 30], burn::tensor::Distribution::Default, &Default::default());
        let all = model.forward(x.clone());
        assert_eq!(all.dims(), [6, 4]);
        let one = model.forward(x.slice([2..3, 0..30]));
        let all_row: Vec<f32> = all.slice([2..3, 0..4]).into_data().to_vec().unwrap();
        let one_row: Vec<f32> = one.into_data().to_vec().unwrap();
        for (a, b) in all_row.iter().zip(&one_row) {
            assert!((a - b).abs() < 1e-5, "{all_row:?} vs {one_row:?}");
        }
    }

    #[test]
    fn configs_round_trip_through_json_and_bad_sizes_are_refused() {
        let json = r#"{"kind": "mlp", "inputs": 64, "hidden": [128, 64], "classes": 10, "dropout": 0.1}"#;
        let c: ModelConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.inputs(), 64);
        assert_eq!(serde_json::from_str::<ModelConfig>(&serde_json::to_string(&c).unwrap()).unwrap(), c);
        assert!(ModelConfig::Logistic { inputs: 3, classes: 1 }.validate().is_err());
        assert!(ModelConfig::mlp(3, &[0], 2).validate().is_err());
        let bad = serde_json::from_str::<ModelConfig>(r#"{"kind": "transformer"}"#).unwrap_err();
        assert!(bad.to_string().contains("transformer"), "{bad}");
    }
}
