//! The multilayer perceptron.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig, Relu};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Architecture of an [`Mlp`]: `inputs → hidden[0] → … → classes`, ReLU and dropout between
/// layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Number of input features.
    pub inputs: usize,
    /// Width of each hidden layer.
    pub hidden: Vec<usize>,
    /// Number of classes (output logits).
    pub classes: usize,
    /// Dropout probability after each hidden layer, during training only.
    pub dropout: f64,
}

impl MlpConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.inputs == 0 || self.classes < 2 || self.hidden.contains(&0) {
            return Err(Error::Config(format!(
                "an MLP needs at least one input, two classes and non-empty layers, got {} inputs, hidden {:?}, {} classes",
                self.inputs, self.hidden, self.classes
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!("dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }

    /// Builds the model with freshly initialised (random) weights on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        self.build(device, Initializer::KaimingUniform { gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false })
    }

    /// Builds the model with zero weights, to be replaced by loaded ones. Draws no random
    /// numbers: burn's generator is process-wide, and loading a model while another thread
    /// trains must not change that training.
    pub(crate) fn init_for_loading<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        self.build(device, Initializer::Zeros)
    }

    fn build<B: Backend>(&self, device: &B::Device, initializer: Initializer) -> Mlp<B> {
        let linear = |a: usize, b: usize| LinearConfig::new(a, b).with_initializer(initializer.clone()).init(device);
        let mut dims = vec![self.inputs];
        dims.extend_from_slice(&self.hidden);
        let hidden = dims.windows(2).map(|w| linear(w[0], w[1])).collect();
        let last = dims.last().copied().unwrap_or(self.inputs);
        Mlp {
            hidden,
            output: linear(last, self.classes),
            activation: Relu::new(),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

/// A multilayer perceptron classifier producing logits.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Vec<Linear<B>>,
    output: Linear<B>,
    activation: Relu,
    dropout: Dropout,
}

impl<B: Backend> Mlp<B> {
    /// Logits for a batch `[rows, inputs]`, shape `[rows, classes]`.
    pub fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        for layer in &self.hidden {
            x = self.dropout.forward(self.activation.forward(layer.forward(x)));
        }
        self.output.forward(x)
    }
}
