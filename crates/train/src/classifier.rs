//! The built-in classifiers: [`ClassifierTask`] (the [`Task`] that [`crate::train`] fits
//! over in-memory rows) and [`Classifier`] (a trained one on the CPU, for prediction).

use burn::backend::Flex;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::record::Recorder;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kiln_data::Row;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::model::{Model, ModelConfig};
use crate::task::{Step, Task};
use crate::trainer::recorder;
use crate::{Error, Result};

/// A built-in architecture ([`ModelConfig`]) trained with cross-entropy, optionally
/// class-weighted (training loss only), over rows of features with class indices. Reports
/// `accuracy`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierTask {
    arch: ModelConfig,
    class_weights: Option<Vec<f32>>,
}

impl ClassifierTask {
    /// `arch`, with per-class weights of the training loss (by class index) or none.
    pub fn new(arch: ModelConfig, class_weights: Option<Vec<f32>>) -> Self {
        Self { arch, class_weights }
    }

    /// The architecture.
    pub fn arch(&self) -> &ModelConfig {
        &self.arch
    }

    fn forward<B: Backend>(
        &self,
        model: &Model<B>,
        (x, y): (Tensor<B, 2>, Tensor<B, 1, Int>),
        weights: Option<Vec<f32>>,
    ) -> Step<B> {
        let rows = y.dims()[0];
        let device = x.device();
        let logits = model.forward(x);
        let correct = logits.clone().detach().argmax(1).reshape([rows]).equal(y.clone()).int().sum().float();
        let loss = CrossEntropyLossConfig::new().with_weights(weights).init::<B>(&device).forward(logits, y);
        Step::new(loss, rows).sum("accuracy", correct)
    }
}

impl Task for ClassifierTask {
    type Item = Row<usize>;
    type Model<B: Backend> = Model<B>;
    type Batch<B: Backend> = (Tensor<B, 2>, Tensor<B, 1, Int>);

    /// Built with class weights.
    fn weights_classes(&self) -> bool {
        self.class_weights.is_some()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::to_value(&self.arch).unwrap_or(serde_json::Value::Null)
    }

    fn init<B: Backend>(&self, device: &B::Device) -> Model<B> {
        self.arch.init(device)
    }

    fn collate<B: Backend>(&self, items: Vec<Row<usize>>, device: &B::Device) -> Result<Self::Batch<B>> {
        let classes = self.arch.classes();
        let x = features::<B, usize>(&items, &self.arch, device)?;
        let y = items
            .iter()
            .map(|row| match *row.target() {
                label if label < classes => Ok(label as i64),
                label => Err(Error::Shape(format!(
                    "item {}: label index {label} is out of range for {classes} classes",
                    row.index()
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((x, Tensor::from_data(TensorData::new(y, [items.len()]), device)))
    }

    /// Unweighted cross-entropy (validation).
    fn step<B: Backend>(&self, model: &Model<B>, batch: Self::Batch<B>) -> Result<Step<B>> {
        Ok(self.forward(model, batch, None))
    }

    /// Class-weighted cross-entropy, when weights are set.
    fn train_step<B: burn::tensor::backend::AutodiffBackend>(
        &self,
        model: &Model<B>,
        batch: Self::Batch<B>,
    ) -> Result<Step<B>> {
        Ok(self.forward(model, batch, self.class_weights.clone()))
    }

    /// At least 1024 rows: validation of a tabular model is cheap per row.
    fn valid_batch_size(&self, train_batch_size: usize) -> usize {
        train_batch_size.max(1024)
    }
}

/// The features of `rows` as one `[rows, inputs]` tensor for `arch`; a row of another width is
/// an error naming it.
pub(crate) fn features<B: Backend, T: kiln_data::Target>(
    rows: &[Row<T>],
    arch: &ModelConfig,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let inputs = arch.inputs();
    let mut x = Vec::with_capacity(rows.len() * inputs);
    for row in rows {
        let features = row.features();
        if features.len() != inputs {
            return Err(Error::Shape(format!(
                "item {}: {} features, the {} model takes {inputs}",
                row.index(),
                features.len(),
                arch.kind()
            )));
        }
        x.extend_from_slice(features);
    }
    Ok(Tensor::from_data(TensorData::new(x, [rows.len(), inputs]), device))
}

fn to_tensor<B: Backend>(x: ArrayView2<'_, f32>, device: &B::Device) -> Tensor<B, 2> {
    let (rows, cols) = x.dim();
    let data: Vec<f32> = x.iter().copied().collect();
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

/// The index of the largest value (the first, on ties; NaN never wins).
pub(crate) fn best_class<'a>(values: impl IntoIterator<Item = &'a f32>) -> usize {
    values.into_iter().enumerate().fold((0, f32::MIN), |best, (i, v)| if *v > best.1 { (i, *v) } else { best }).0
}

/// The number format a model predicts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferencePrecision {
    /// 32-bit floats, as trained.
    #[default]
    F32,
    /// Weights held as 8-bit integers (symmetric, one scale per tensor, min–max calibrated):
    /// a quarter of the weight memory. burn 0.21's CPU backend dequantizes them to f32 for
    /// each forward pass (it has no int8 matrix product), so this saves memory, not time; see
    /// [`compare_precision`](crate::compare_precision) for what it costs in accuracy and
    /// speed on your data.
    Int8,
}

/// A trained model on the CPU, for prediction.
#[derive(Debug)]
pub struct Classifier {
    config: ModelConfig,
    model: Model<Flex>,
    precision: InferencePrecision,
}

impl Classifier {
    /// Loads serialised weights into an architecture.
    pub fn from_weights(config: ModelConfig, weights: &[u8]) -> Result<Self> {
        config.validate()?;
        let device = Default::default();
        let record = Recorder::<Flex>::load(&recorder(), weights.to_vec(), &device)
            .map_err(|e| Error::Weights(e.to_string()))?;
        let model = config.init_for_loading::<Flex>(&device).load_record(record);
        Ok(Self { config, model, precision: InferencePrecision::F32 })
    }

    /// Loads weights from a safetensors file's bytes, as [`Classifier::to_safetensors`] writes
    /// them (PyTorch's names and layouts). Every parameter of `config` must be present with
    /// its shape, and the file may hold nothing else.
    pub fn from_safetensors(config: ModelConfig, bytes: &[u8]) -> Result<Self> {
        config.validate()?;
        let model = model_from_safetensors(&config, bytes)?;
        Ok(Self { config, model, precision: InferencePrecision::F32 })
    }

    /// The weights as a safetensors file, with PyTorch's parameter names and layouts
    /// (`hidden.0.weight` as `[outputs, inputs]`, batch norm's `weight`/`bias`), so
    /// `safetensors.torch.load_file` and `load_state_dict` read them directly. Only
    /// full-precision models can be written.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        if self.precision != InferencePrecision::F32 {
            return Err(Error::Weights(format!("a {:?} model cannot be written as safetensors", self.precision)));
        }
        model_to_safetensors(&self.model)
    }

    /// This model in `precision`. Weights quantized to int8 stay quantized: asking a
    /// quantized model for f32 is an error, because the discarded precision cannot come back
    /// (load the weights again instead).
    pub fn with_precision(self, precision: InferencePrecision) -> Result<Self> {
        use burn::module::Quantizer;
        use burn::tensor::ops::QuantizedTensor;
        use burn::tensor::quantization::{Calibration, QTensorPrimitive, QuantLevel, QuantParam, QuantValue};
        match (self.precision, precision) {
            (from, to) if from == to => Ok(self),
            (InferencePrecision::F32, InferencePrecision::Int8) => {
                let scheme = <QuantizedTensor<Flex> as QTensorPrimitive>::default_scheme()
                    .with_value(QuantValue::Q8S)
                    .with_level(QuantLevel::Tensor)
                    .with_param(QuantParam::F32);
                let mut quantizer = Quantizer { calibration: Calibration::MinMax, scheme };
                let model = self.model.quantize_weights(&mut quantizer);
                Ok(Self { model, precision, ..self })
            }
            (from, to) => Err(Error::Weights(format!(
                "a model held in {from:?} cannot be turned into {to:?}: load its weights again"
            ))),
        }
    }

    /// The precision it predicts in.
    pub fn precision(&self) -> InferencePrecision {
        self.precision
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Class probabilities (softmax of the logits), `rows × classes`.
    pub fn predict_proba(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (inputs, classes) = (self.config.inputs(), self.config.classes());
        if x.ncols() != inputs {
            return Err(Error::Shape(format!("the model takes {inputs} features, the input has {}", x.ncols())));
        }
        if x.nrows() == 0 {
            return Ok(Array2::zeros((0, classes)));
        }
        let logits = self.model.forward(to_tensor::<Flex>(x, &Default::default()));
        let probs = burn::tensor::activation::softmax(logits, 1);
        let values: Vec<f32> = probs.into_data().iter::<f32>().collect();
        Array2::from_shape_vec((x.nrows(), classes), values).map_err(|e| Error::Shape(e.to_string()))
    }

    /// The most probable class of each row.
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Result<Vec<usize>> {
        let p = self.predict_proba(x)?;
        Ok(p.rows().into_iter().map(|r| best_class(r.iter())).collect())
    }
}

/// A built-in model of `config` with weights from a safetensors file's bytes (PyTorch's names
/// and layouts): every parameter must be present with its shape, and nothing else.
pub(crate) fn model_from_safetensors(config: &ModelConfig, bytes: &[u8]) -> Result<Model<Flex>> {
    use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
    let mut model = config.init_for_loading::<Flex>(&Default::default());
    // burn-store 0.21's adapter renames batch norm's gamma/beta to PyTorch's weight/bias
    // when saving but, with enum variants skipped, does not find them again when loading;
    // kiln's only batch norms are the `norms` fields, so the names are mapped back here.
    let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true)
        .with_key_remapping(r"^(norms\.\d+)\.weight$", "$1.gamma")
        .with_key_remapping(r"^(norms\.\d+)\.bias$", "$1.beta")
        .allow_partial(true);
    let applied = model.load_from(&mut store).map_err(|e| Error::Weights(format!("safetensors: {e}")))?;
    let mut problems: Vec<String> = applied.errors.iter().map(ToString::to_string).collect();
    problems.extend(applied.missing.iter().map(|(path, _)| format!("{path} is missing")));
    problems.extend(applied.unused.iter().map(|path| format!("{path} is not a parameter of this model")));
    if !problems.is_empty() {
        return Err(Error::Weights(format!(
            "safetensors weights do not fit the {} model: {}",
            config.kind(),
            problems.join("; ")
        )));
    }
    Ok(model)
}

/// A built-in model's weights as a safetensors file, with PyTorch's names and layouts.
pub(crate) fn model_to_safetensors(model: &Model<Flex>) -> Result<Vec<u8>> {
    use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
    let mut store = SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter).skip_enum_variants(true);
    model.save_into(&mut store).map_err(|e| Error::Weights(format!("safetensors: {e}")))?;
    store.get_bytes().map_err(|e| Error::Weights(format!("safetensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_class_takes_the_first_maximum_and_never_nan() {
        assert_eq!(best_class(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(best_class(&[0.4, 0.4, 0.2]), 0);
        assert_eq!(best_class(&[f32::NAN, 0.3, 0.7]), 2);
        assert_eq!(best_class(&[]), 0);
    }

    #[test]
    fn collate_names_a_row_whose_label_is_out_of_range() {
        let rows = kiln_data::Rows::new("training", Array2::zeros((3, 2)), vec![0usize, 2, 1]).expect("rows");
        let items: Vec<_> = (0..3)
            .map(|i| kiln_data::Source::get(&rows, i, &mut kiln_data::SplitMix64::new(0)).expect("row"))
            .collect();
        let task = ClassifierTask::new(ModelConfig::mlp(2, &[4], 2), None);
        let err = task.collate::<Flex>(items, &Default::default()).map(|_| ()).expect_err("label 2 of 2 classes");
        assert!(err.to_string().contains("item 1: label index 2 is out of range for 2 classes"), "{err}");
    }
}
