//! Model packages: everything needed to serve and monitor a model, in one directory.
//!
//! ```text
//! <dir>/kiln-package.json   manifest: format version, architecture, training config, input
//!                           schema, label names, metrics, lineage, and the BLAKE3 of every
//!                           other file
//! <dir>/weights.safetensors model weights, full precision, with PyTorch's parameter names and
//!                           layouts (format 3; format 2 packages hold weights.mpk, burn's
//!                           named MessagePack record, and still load)
//! <dir>/pipeline.json       fitted kiln-data preprocessing (optional)
//! <dir>/profile.json        reference profile of the training data, for drift (optional)
//! <dir>/eval.json           the evaluation report (optional): an [`EvalReport`] for a
//!                           classifier, a [`RegressionReport`] for a regression
//! ```
//!
//! The manifest is written last, so a directory with a manifest is complete. It carries a
//! `format_version`; a reader refuses versions it does not know instead of guessing, and
//! checks every file against its hash.
//!
//! A package is written in the oldest format that holds it: classifiers in format 3, which
//! every kiln since safetensors weights reads; regression models in format 4, which adds the
//! manifest's `task` (with the target scaler), so that a kiln too old to know regression
//! refuses such a package instead of serving it as a classifier.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_data::pipeline::{InputKind, Value};
use kiln_data::{ColumnSpec, DatasetProfile, FittedPipeline, LabelEncoder, Schema, StandardScaler};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::classifier::{Classifier, InferencePrecision, best_class};
use crate::config::TrainConfig;
use crate::eval::{EvalReport, FailureCheck};
use crate::fit::Fitted;
use crate::model::ModelConfig;
use crate::regression::{RegressionLoss, RegressionReport, RegressionTask, Regressor, TargetScaler};
use crate::task::Task;
use crate::trainer::Trained;
use crate::{Error, Result};

/// The newest package format this version of kiln writes and reads (each package is written in
/// the oldest format that holds it: [`PackageTask::format_version`]).
pub const PACKAGE_FORMAT_VERSION: u32 = 4;
/// The oldest package format this version of kiln still reads.
pub const OLDEST_PACKAGE_FORMAT_VERSION: u32 = 2;
/// The manifest's file name inside a package directory.
pub const MANIFEST_FILE: &str = "kiln-package.json";
const WEIGHTS_FILE: &str = "weights.safetensors";
/// Format 2's weights file: burn's named MessagePack record.
const RECORD_WEIGHTS_FILE: &str = "weights.mpk";
const PIPELINE_FILE: &str = "pipeline.json";
const PROFILE_FILE: &str = "profile.json";
const EVAL_FILE: &str = "eval.json";

/// Where a model came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lineage {
    /// The tracking run that trained it.
    pub run_id: Option<String>,
    /// The experiment of that run.
    pub experiment: Option<String>,
    /// The training data file.
    pub dataset: Option<String>,
    /// BLAKE3 hash of the training data file.
    pub dataset_hash: Option<String>,
    /// Digests of every dataset version used (training, validation, test).
    #[serde(default)]
    pub dataset_digests: Vec<String>,
    /// The git commit of the training code.
    #[serde(default)]
    pub git_commit: Option<String>,
    /// Seed of the train/validation/test split.
    pub split_seed: Option<u64>,
}

/// What a packaged model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PackageTask {
    /// One of the manifest's `labels` per row, with a probability for each (every format 2
    /// and 3 package).
    #[default]
    Classification,
    /// One number per row, in the target's units: the model's single output mapped back
    /// through `target`.
    Regression {
        /// The standardisation the model learned the target under.
        target: TargetScaler,
        /// The training loss.
        loss: RegressionLoss,
    },
}

impl PackageTask {
    /// Whether this is [`PackageTask::Classification`].
    pub fn is_classification(&self) -> bool {
        matches!(self, Self::Classification)
    }

    /// The task's name: `classification` or `regression`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Regression { .. } => "regression",
        }
    }

    /// The package format a package of this task is written in: 3 for classifiers, 4 for
    /// regression (the first format with a `task`).
    pub fn format_version(&self) -> u32 {
        match self {
            Self::Classification => 3,
            Self::Regression { .. } => 4,
        }
    }
}

/// The package manifest, `kiln-package.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Package format version ([`PACKAGE_FORMAT_VERSION`]).
    pub format_version: u32,
    /// Model name.
    pub name: String,
    /// Model family: `logistic`, `mlp` or `cnn`.
    pub kind: String,
    /// What the model predicts (absent, as in formats 2 and 3: classification).
    #[serde(default, skip_serializing_if = "PackageTask::is_classification")]
    pub task: PackageTask,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Version of kiln-train that wrote the package.
    pub kiln_version: String,
    /// Architecture.
    pub model: ModelConfig,
    /// Trainable parameters.
    pub num_params: usize,
    /// Hyperparameters used.
    pub train_config: TrainConfig,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// The device it trained on (`cpu`, `cuda:0`).
    pub trained_on: String,
    /// Raw input features, in the order [`Predictor::predict`] takes them.
    pub features: Vec<String>,
    /// What raw input values may be (checked on every prediction).
    pub input_schema: Schema,
    /// Fitted standard scaler over `features` (the simple preprocessing; exclusive with a
    /// pipeline).
    pub scaler: Option<StandardScaler>,
    /// Class labels (none for a regression).
    pub labels: LabelEncoder,
    /// The label column of the training data (the target column of a regression).
    pub label_column: String,
    /// Evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Provenance.
    pub lineage: Lineage,
    /// BLAKE3 hex hash of each file in the package, by name.
    pub files: BTreeMap<String, String>,
}

/// What the caller supplies to package a [`Trained`] model.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageSpec {
    /// Model name.
    pub name: String,
    /// The hyperparameters used.
    pub train_config: TrainConfig,
    /// Raw input features, in model order. With a pipeline, its input columns.
    pub features: Vec<String>,
    /// Schema of raw input values.
    pub input_schema: Schema,
    /// Fitted standard scaler over `features`.
    pub scaler: Option<StandardScaler>,
    /// Fitted kiln-data pipeline (exclusive with `scaler`); its input columns become the
    /// package's features, so `features` may be left empty.
    pub pipeline: Option<FittedPipeline>,
    /// Class labels (leave empty for a regression: `LabelEncoder::default()`).
    pub labels: LabelEncoder,
    /// The label column (the target column of a regression).
    pub label_column: String,
    /// Evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Provenance.
    pub lineage: Lineage,
}

/// A model package in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPackage {
    /// The manifest.
    pub manifest: Manifest,
    weights: Weights,
    pipeline: Option<FittedPipeline>,
    profile: Option<DatasetProfile>,
    eval: Option<EvalReport>,
    regression_eval: Option<RegressionReport>,
}

/// Weights as they came: from the trainer (burn's record) or from a package file.
#[derive(Debug, Clone, PartialEq)]
enum Weights {
    /// burn's named MessagePack record (the trainer's format, and format 2's file).
    Record(Vec<u8>),
    /// A safetensors file (format 3).
    Safetensors(Vec<u8>),
}

impl Weights {
    fn classifier(&self, config: &ModelConfig) -> Result<Classifier> {
        match self {
            Self::Record(bytes) => Classifier::from_weights(config.clone(), bytes),
            Self::Safetensors(bytes) => Classifier::from_safetensors(config.clone(), bytes),
        }
    }

    fn regressor(&self, config: &ModelConfig, target: TargetScaler) -> Result<Regressor> {
        match self {
            Self::Record(bytes) => Regressor::from_weights(config.clone(), target, bytes),
            Self::Safetensors(bytes) => Regressor::from_safetensors(config.clone(), target, bytes),
        }
    }

    fn safetensors(&self, manifest: &Manifest) -> Result<Vec<u8>> {
        match (self, manifest.task) {
            (Self::Safetensors(bytes), _) => Ok(bytes.clone()),
            (Self::Record(_), PackageTask::Classification) => self.classifier(&manifest.model)?.to_safetensors(),
            (Self::Record(_), PackageTask::Regression { target, .. }) => {
                self.regressor(&manifest.model, target)?.to_safetensors()
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

impl ModelPackage {
    /// Packages trained weights with everything needed to use them.
    pub fn new(trained: &Trained, spec: PackageSpec) -> Result<Self> {
        if spec.labels.len() != trained.model.classes() {
            return Err(Error::Shape(format!(
                "{} labels for a model with {} classes",
                spec.labels.len(),
                trained.model.classes()
            )));
        }
        let package = Self::assemble(
            spec,
            PackageTask::Classification,
            trained.model.clone(),
            trained.best_epoch,
            trained.device.to_string(),
            Weights::Record(trained.weights.clone()),
        )?;
        package.check_widths()?;
        Ok(package)
    }

    /// Packages a regression trained with [`crate::fit`] on `task`: predictions come back in
    /// the target's units (the task's [`TargetScaler`] is kept in the manifest). `spec.labels`
    /// must be empty; `spec.label_column` names the target.
    pub fn regression(fitted: &Fitted, task: &RegressionTask, spec: PackageSpec) -> Result<Self> {
        if !spec.labels.is_empty() {
            return Err(Error::Config(format!(
                "a regression package has no class labels, the spec gives {}",
                spec.labels.len()
            )));
        }
        if fitted.task != task.describe() {
            return Err(Error::Config(format!(
                "the fitted weights are of another task: trained as {}, packaged as {}",
                fitted.task,
                task.describe()
            )));
        }
        let arch = task.arch().clone();
        let package = Self::assemble(
            spec,
            PackageTask::Regression { target: task.target(), loss: task.loss() },
            arch,
            fitted.best_epoch,
            fitted.device.to_string(),
            Weights::Record(fitted.weights.clone()),
        )?;
        package.check_widths()?;
        // The weights must load into the architecture now, not when the package is served.
        package.weights.regressor(&package.manifest.model, task.target())?;
        Ok(package)
    }

    fn assemble(
        spec: PackageSpec,
        task: PackageTask,
        model: ModelConfig,
        best_epoch: usize,
        trained_on: String,
        weights: Weights,
    ) -> Result<Self> {
        if spec.scaler.is_some() && spec.pipeline.is_some() {
            return Err(Error::Config("a package has either a scaler or a pipeline, not both".into()));
        }
        let features = match &spec.pipeline {
            Some(p) => {
                let inputs: Vec<String> = p.input_schema.iter().map(|c| c.name.clone()).collect();
                if !spec.features.is_empty() && spec.features != inputs {
                    return Err(Error::Config(format!(
                        "features {:?} differ from the pipeline's input columns {inputs:?}",
                        spec.features
                    )));
                }
                inputs
            }
            None => spec.features,
        };
        let manifest = Manifest {
            format_version: task.format_version(),
            name: spec.name,
            kind: model.kind().into(),
            task,
            created_ms: now_ms(),
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            num_params: model.num_params(),
            model,
            train_config: spec.train_config,
            best_epoch,
            trained_on,
            features,
            input_schema: spec.input_schema,
            scaler: spec.scaler,
            labels: spec.labels,
            label_column: spec.label_column,
            metrics: spec.metrics,
            lineage: spec.lineage,
            files: BTreeMap::new(),
        };
        Ok(Self { manifest, weights, pipeline: spec.pipeline, profile: None, eval: None, regression_eval: None })
    }

    /// Adds the training data's profile, the reference for drift detection when serving.
    pub fn with_profile(mut self, profile: DatasetProfile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// Adds the evaluation report of a classifier; its headline metrics join the manifest's
    /// metrics as `test_<name>`.
    pub fn with_eval(mut self, eval: EvalReport) -> Self {
        for (k, v) in eval.metrics() {
            self.manifest.metrics.entry(format!("test_{k}")).or_insert(v);
        }
        self.eval = Some(eval);
        self
    }

    /// Adds the evaluation report of a regression; `test_rmse`, `test_mae` and `test_r2` join
    /// the manifest's metrics. A classifier's package refuses it.
    pub fn with_regression_eval(mut self, report: RegressionReport) -> Result<Self> {
        if self.manifest.task.is_classification() {
            return Err(Error::Config(format!(
                "{} is a classifier's package: its evaluation is an EvalReport (with_eval)",
                self.manifest.name
            )));
        }
        // JSON has no NaN: an undefined R² (every test target equal) stays in the report only.
        for (k, v) in report.metrics().into_iter().filter(|(_, v)| v.is_finite()) {
            self.manifest.metrics.entry(format!("test_{k}")).or_insert(v);
        }
        self.regression_eval = Some(report);
        Ok(self)
    }

    fn check_widths(&self) -> Result<()> {
        let inputs = self.manifest.model.inputs();
        let width = match &self.pipeline {
            Some(p) => p.width(),
            None => self.manifest.features.len(),
        };
        if width != inputs {
            let what = if self.pipeline.is_some() { "the pipeline outputs" } else { "the package lists" };
            return Err(Error::Shape(format!("{what} {width} features for a model with {inputs} inputs")));
        }
        Ok(())
    }

    /// The fitted pipeline, if the package has one.
    pub fn pipeline(&self) -> Option<&FittedPipeline> {
        self.pipeline.as_ref()
    }

    /// The reference profile, if the package has one.
    pub fn profile(&self) -> Option<&DatasetProfile> {
        self.profile.as_ref()
    }

    /// The evaluation report, if the package has one.
    pub fn eval(&self) -> Option<&EvalReport> {
        self.eval.as_ref()
    }

    /// A regression's evaluation report, if the package has one.
    pub fn regression_eval(&self) -> Option<&RegressionReport> {
        self.regression_eval.as_ref()
    }

    /// Writes the package into `dir` (created if needed): every file first, synced, then the
    /// manifest with their hashes, so a directory with a manifest is complete.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let weights = self.weights.safetensors(&self.manifest)?;
        let mut files: Vec<(&str, Vec<u8>)> = vec![(WEIGHTS_FILE, weights)];
        let json = |what: &str, r: std::result::Result<String, kiln_data::Error>| {
            r.map(String::into_bytes).map_err(|e| Error::Package { path: dir.join(what), message: e.to_string() })
        };
        if let Some(p) = &self.pipeline {
            files.push((PIPELINE_FILE, json(PIPELINE_FILE, p.to_json())?));
        }
        if let Some(p) = &self.profile {
            files.push((PROFILE_FILE, json(PROFILE_FILE, p.to_json())?));
        }
        if self.eval.is_some() && !self.manifest.task.is_classification() {
            return Err(Error::Config(format!(
                "{} is a {} package: its evaluation is a RegressionReport (with_regression_eval), not an EvalReport",
                self.manifest.name,
                self.manifest.task.name()
            )));
        }
        let eval = match (&self.eval, &self.regression_eval) {
            (Some(e), _) => Some(serde_json::to_vec_pretty(e)),
            (None, Some(r)) => Some(serde_json::to_vec_pretty(r)),
            (None, None) => None,
        };
        if let Some(bytes) = eval {
            let bytes = bytes.map_err(|e| Error::Package { path: dir.join(EVAL_FILE), message: e.to_string() })?;
            files.push((EVAL_FILE, bytes));
        }
        let mut manifest = self.manifest.clone();
        // Whatever format it was read in, a package is written in the current format for its
        // task.
        manifest.format_version = manifest.task.format_version();
        manifest.files.clear();
        for (name, bytes) in &files {
            kiln_track::durable::write_atomic(&dir.join(name), bytes)?;
            manifest.files.insert((*name).to_string(), hash(bytes));
        }
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::Package { path: path.clone(), message: e.to_string() })?;
        kiln_track::durable::write_atomic(&path, &json)?;
        Ok(())
    }

    /// Reads and checks a package directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes =
            std::fs::read(&manifest_path).map_err(|source| Error::Io { path: manifest_path.clone(), source })?;
        let probe: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Package { path: manifest_path.clone(), message: format!("not valid JSON: {e}") })?;
        let version = probe.get("format_version").and_then(serde_json::Value::as_u64);
        let known = u64::from(OLDEST_PACKAGE_FORMAT_VERSION)..=u64::from(PACKAGE_FORMAT_VERSION);
        if !version.is_some_and(|v| known.contains(&v)) {
            let hint = if version == Some(1) {
                " (version 1 packages came from kiln before model configs; retrain or re-export it)"
            } else {
                ""
            };
            return Err(Error::Package {
                path: manifest_path,
                message: format!(
                    "package format version {version:?} is not supported (this kiln reads versions {OLDEST_PACKAGE_FORMAT_VERSION} to {PACKAGE_FORMAT_VERSION}){hint}"
                ),
            });
        }
        let manifest: Manifest = serde_json::from_value(probe)
            .map_err(|e| Error::Package { path: manifest_path.clone(), message: e.to_string() })?;
        let read = |name: &str| -> Result<Option<Vec<u8>>> {
            let Some(want) = manifest.files.get(name) else { return Ok(None) };
            let path: PathBuf = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            let got = hash(&bytes);
            if got != *want {
                return Err(Error::Package {
                    path,
                    message: format!("checksum mismatch: manifest says {want}, file hashes to {got}"),
                });
            }
            Ok(Some(bytes))
        };
        let text = |name: &str, bytes: Vec<u8>| {
            String::from_utf8(bytes).map_err(|e| Error::Package { path: dir.join(name), message: e.to_string() })
        };
        let (weights_file, weights) = if manifest.format_version >= 3 {
            (WEIGHTS_FILE, read(WEIGHTS_FILE)?.map(Weights::Safetensors))
        } else {
            (RECORD_WEIGHTS_FILE, read(RECORD_WEIGHTS_FILE)?.map(Weights::Record))
        };
        let weights = weights.ok_or_else(|| Error::Package {
            path: manifest_path.clone(),
            message: format!("the manifest lists no {weights_file}"),
        })?;
        let pipeline = match read(PIPELINE_FILE)? {
            Some(b) => Some(FittedPipeline::from_json(&text(PIPELINE_FILE, b)?)?),
            None => None,
        };
        let profile = match read(PROFILE_FILE)? {
            Some(b) => Some(DatasetProfile::from_json(&text(PROFILE_FILE, b)?)?),
            None => None,
        };
        let eval_error = |e: serde_json::Error| Error::Package { path: dir.join(EVAL_FILE), message: e.to_string() };
        let (eval, regression_eval) = match (read(EVAL_FILE)?, manifest.task) {
            (None, _) => (None, None),
            (Some(b), PackageTask::Classification) => (Some(serde_json::from_slice(&b).map_err(eval_error)?), None),
            (Some(b), PackageTask::Regression { .. }) => (None, Some(serde_json::from_slice(&b).map_err(eval_error)?)),
        };
        // Every format holds classifiers; other tasks came with format 4.
        if !manifest.task.is_classification() && manifest.format_version < manifest.task.format_version() {
            return Err(Error::Package {
                path: manifest_path,
                message: format!(
                    "a {} package needs format version {} or later, the manifest says {}",
                    manifest.task.name(),
                    manifest.task.format_version(),
                    manifest.format_version
                ),
            });
        }
        let package = Self { manifest, weights, pipeline, profile, eval, regression_eval };
        package.check_widths().map_err(|e| Error::Package { path: manifest_path, message: e.to_string() })?;
        Ok(package)
    }

    /// Reads a package and builds a [`Predictor`].
    pub fn load(dir: &Path) -> Result<Predictor> {
        let package = Self::read(dir)?;
        let weights = match package.weights {
            Weights::Record(_) => RECORD_WEIGHTS_FILE,
            Weights::Safetensors(_) => WEIGHTS_FILE,
        };
        package.into_predictor().map_err(|e| match e {
            Error::Weights(message) => Error::Package { path: dir.join(weights), message },
            e => e,
        })
    }

    /// Builds a [`Predictor`] from this package.
    pub fn into_predictor(self) -> Result<Predictor> {
        let head = match self.manifest.task {
            PackageTask::Classification => Head::Classifier(self.weights.classifier(&self.manifest.model)?),
            PackageTask::Regression { target, .. } => {
                if !(target.mean.is_finite() && target.std.is_finite() && target.std > 0.0) {
                    return Err(Error::Config(format!(
                        "{}: the manifest's target scaler needs a finite mean and a positive standard deviation, got {target:?}",
                        self.manifest.name
                    )));
                }
                Head::Regressor(self.weights.regressor(&self.manifest.model, target)?)
            }
        };
        let input_specs =
            self.manifest.features.iter().map(|f| self.manifest.input_schema.column(f).cloned()).collect();
        Ok(Predictor {
            manifest: self.manifest,
            head,
            input_specs,
            pipeline: self.pipeline,
            profile: self.profile,
            eval: self.eval,
            regression_eval: self.regression_eval,
        })
    }
}

/// One prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Index of the predicted class.
    pub class: usize,
    /// Its label.
    pub label: String,
    /// Probability of each class, in label order.
    pub probabilities: Vec<f32>,
}

/// The model of a [`Predictor`], by task.
#[derive(Debug)]
enum Head {
    Classifier(Classifier),
    Regressor(Regressor),
}

/// A loaded package, ready to predict from raw (unpreprocessed) rows: classes with
/// [`Predictor::predict`] for a classifier, numbers in the target's units with
/// [`Predictor::predict_values`] for a regression ([`Manifest::task`] says which).
#[derive(Debug)]
pub struct Predictor {
    manifest: Manifest,
    head: Head,
    /// The input schema's spec of each feature, in feature order (resolved once, not per row).
    input_specs: Vec<Option<ColumnSpec>>,
    pipeline: Option<FittedPipeline>,
    profile: Option<DatasetProfile>,
    eval: Option<EvalReport>,
    regression_eval: Option<RegressionReport>,
}

impl Predictor {
    /// The package manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What it predicts.
    pub fn task(&self) -> PackageTask {
        self.manifest.task
    }

    /// This predictor in `precision` (see [`InferencePrecision`]); preprocessing is unchanged.
    /// A regression predicts in f32 only.
    pub fn with_precision(mut self, precision: InferencePrecision) -> Result<Self> {
        self.head = match self.head {
            Head::Classifier(c) => Head::Classifier(c.with_precision(precision)?),
            Head::Regressor(r) if precision == InferencePrecision::F32 => Head::Regressor(r),
            Head::Regressor(_) => {
                return Err(Error::Weights(format!("a regression model predicts in F32 only, not {precision:?}")));
            }
        };
        Ok(self)
    }

    /// The precision it predicts in.
    pub fn precision(&self) -> InferencePrecision {
        match &self.head {
            Head::Classifier(c) => c.precision(),
            Head::Regressor(_) => InferencePrecision::F32,
        }
    }

    /// The fitted pipeline, if the package has one.
    pub fn pipeline(&self) -> Option<&FittedPipeline> {
        self.pipeline.as_ref()
    }

    /// The training data's reference profile, if the package has one.
    pub fn profile(&self) -> Option<&DatasetProfile> {
        self.profile.as_ref()
    }

    /// The package's evaluation report, if any.
    pub fn eval(&self) -> Option<&EvalReport> {
        self.eval.as_ref()
    }

    /// A regression package's evaluation report, if any.
    pub fn regression_eval(&self) -> Option<&RegressionReport> {
        self.regression_eval.as_ref()
    }

    /// A regression's predictions for numeric raw rows, in the target's units: checked and
    /// preprocessed as [`Predictor::predict`] does.
    pub fn predict_values(&self, rows: ArrayView2<'_, f64>) -> Result<Vec<f64>> {
        self.predict_values_prepared(self.prepare(rows)?)
    }

    /// A regression's predictions for records (column → value), in the target's units.
    pub fn predict_values_records(&self, records: &[HashMap<String, Value>]) -> Result<Vec<f64>> {
        self.predict_values_prepared(self.prepare_records(records)?)
    }

    /// A regression's predictions for prepared inputs ([`Predictor::prepare`]).
    pub fn predict_values_prepared(&self, x: Array2<f64>) -> Result<Vec<f64>> {
        self.check_prepared(&x)?;
        match &self.head {
            Head::Regressor(r) => r.predict(x.mapv(|v| v as f32).view()),
            Head::Classifier(_) => Err(Error::Config(format!(
                "{} is a classifier: it predicts classes (predict), not numbers",
                self.manifest.name
            ))),
        }
    }

    fn check_prepared(&self, x: &Array2<f64>) -> Result<()> {
        if x.ncols() != self.manifest.model.inputs() {
            return Err(Error::Shape(format!(
                "prepared rows have {} values, the model takes {}",
                x.ncols(),
                self.manifest.model.inputs()
            )));
        }
        Ok(())
    }

    /// Predicts numeric raw rows (`rows × features`, in [`Manifest::features`] order): checks
    /// them against the input schema, preprocesses them (scaler or pipeline), runs the model
    /// once for the whole batch. A pipeline with text inputs needs
    /// [`Predictor::predict_records`].
    pub fn predict(&self, rows: ArrayView2<'_, f64>) -> Result<Vec<Prediction>> {
        self.predict_prepared(self.prepare(rows)?)
    }

    /// The model inputs for numeric raw rows: [`Predictor::predict`] without running the
    /// model. A server prepares each request on its own (so one bad request fails alone),
    /// stacks the prepared rows of many requests and runs [`Predictor::predict_prepared`] once.
    pub fn prepare(&self, rows: ArrayView2<'_, f64>) -> Result<Array2<f64>> {
        let features = &self.manifest.features;
        if rows.ncols() != features.len() {
            return Err(Error::Shape(format!(
                "the model takes {} features, each row has {}",
                features.len(),
                rows.ncols()
            )));
        }
        self.check_schema(rows)?;
        if let Some(text) =
            self.pipeline.as_ref().and_then(|p| p.input_schema.iter().find(|c| c.kind == InputKind::Text))
        {
            return Err(Error::Input {
                row: 1,
                column: text.name.clone(),
                expected: "text (a model with text inputs takes records: use predict_records)".into(),
                found: "a number".into(),
            });
        }
        let x: Array2<f64> = match (&self.pipeline, &self.manifest.scaler) {
            (Some(pipeline), _) => {
                let mut out = Array2::zeros((rows.nrows(), pipeline.width()));
                for (i, row) in rows.rows().into_iter().enumerate() {
                    let record: HashMap<String, Value> =
                        features.iter().zip(row).map(|(f, v)| (f.clone(), Value::Number(*v))).collect();
                    let values = pipeline.transform_row(&record).map_err(|e| at_row(e, i))?;
                    out.row_mut(i).assign(&ndarray::ArrayView1::from(&values));
                }
                out
            }
            (None, Some(scaler)) => {
                let mut x = rows.to_owned();
                scaler.transform(&mut x)?;
                x
            }
            (None, None) => rows.to_owned(),
        };
        self.check_finite(&x)?;
        Ok(x)
    }

    /// Predicts rows given as column → value (numbers, text, or null for missing), through
    /// the package's pipeline; without a pipeline the numeric features are taken by name.
    pub fn predict_records(&self, records: &[HashMap<String, Value>]) -> Result<Vec<Prediction>> {
        self.predict_prepared(self.prepare_records(records)?)
    }

    /// The model inputs for records: [`Predictor::predict_records`] without running the model.
    pub fn prepare_records(&self, records: &[HashMap<String, Value>]) -> Result<Array2<f64>> {
        match &self.pipeline {
            Some(pipeline) => {
                let mut out = Array2::zeros((records.len(), pipeline.width()));
                for (i, record) in records.iter().enumerate() {
                    let values = pipeline.transform_row(record).map_err(|e| at_row(e, i))?;
                    out.row_mut(i).assign(&ndarray::ArrayView1::from(&values));
                }
                self.check_finite(&out)?;
                Ok(out)
            }
            None => {
                let features = &self.manifest.features;
                let mut rows = Array2::zeros((records.len(), features.len()));
                for (i, record) in records.iter().enumerate() {
                    for (j, f) in features.iter().enumerate() {
                        let found = match record.get(f) {
                            Some(Value::Number(v)) => {
                                rows[[i, j]] = *v;
                                continue;
                            }
                            None => "nothing (the feature is missing)".to_string(),
                            Some(Value::Null) => "null".to_string(),
                            Some(Value::Text(t)) => format!("text {t:?}"),
                        };
                        let expected = "a number".to_string();
                        return Err(Error::Input { row: i + 1, column: f.clone(), expected, found });
                    }
                }
                self.prepare(rows.view())
            }
        }
    }

    fn check_schema(&self, rows: ArrayView2<'_, f64>) -> Result<()> {
        for (i, row) in rows.rows().into_iter().enumerate() {
            for (spec, value) in self.input_specs.iter().zip(row) {
                if let Some(v) = spec.as_ref().and_then(|spec| spec.check_value(i + 1, *value)) {
                    return Err(Error::Input { row: v.row, column: v.column, expected: v.expected, found: v.found });
                }
            }
        }
        Ok(())
    }

    fn check_finite(&self, x: &Array2<f64>) -> Result<()> {
        match x.indexed_iter().find(|(_, v)| !v.is_finite()) {
            Some(((row, feature), v)) => Err(Error::Input {
                row: row + 1,
                column: self.feature_name(feature),
                expected: "a value that preprocesses to a finite number".into(),
                found: v.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Runs the model on prepared inputs ([`Predictor::prepare`], possibly of many requests
    /// stacked), once for the whole batch.
    pub fn predict_prepared(&self, x: Array2<f64>) -> Result<Vec<Prediction>> {
        self.check_prepared(&x)?;
        let classifier = match &self.head {
            Head::Classifier(c) => c,
            Head::Regressor(_) => {
                return Err(Error::Config(format!(
                    "{} is a regression model: it predicts numbers (predict_values), not classes",
                    self.manifest.name
                )));
            }
        };
        let probs = classifier.predict_proba(x.mapv(|v| v as f32).view())?;
        Ok(probs
            .rows()
            .into_iter()
            .map(|p| {
                let class = best_class(p.iter());
                Prediction {
                    class,
                    label: self.manifest.labels.decode(class).unwrap_or_default().to_string(),
                    probabilities: p.to_vec(),
                }
            })
            .collect())
    }

    fn feature_name(&self, model_input: usize) -> String {
        match &self.pipeline {
            Some(p) => p.output_features.get(model_input).cloned(),
            None => self.manifest.features.get(model_input).cloned(),
        }
        .unwrap_or_else(|| format!("#{model_input}"))
    }

    /// Each row's outputs: a classifier's probabilities, a regression's prediction.
    fn outputs(&self, x: Result<Array2<f64>>) -> Result<Vec<Vec<f64>>> {
        match &self.head {
            Head::Classifier(_) => Ok(self
                .predict_prepared(x?)?
                .into_iter()
                .map(|p| p.probabilities.into_iter().map(f64::from).collect())
                .collect()),
            Head::Regressor(_) => Ok(self.predict_values_prepared(x?)?.into_iter().map(|v| vec![v]).collect()),
        }
    }

    /// Runs the named failure-mode checks against `reference` raw rows (for example the test
    /// split), each reported pass/fail with what was seen:
    ///
    /// - `valid_probabilities` (a classifier): every reference row gets finite probabilities
    ///   summing to 1; `finite_predictions` (a regression): every reference row gets a finite
    ///   prediction;
    /// - `constant_inputs`: rows where every feature is the same constant (0, and each
    ///   feature's reference median) still get valid outputs;
    /// - `out_of_range_values`: a feature 10× beyond its reference range is refused with an
    ///   error naming the feature, or predicted validly, never answered with NaN;
    /// - `missing_features`: a row with a NaN feature, and a record without a feature, are
    ///   refused with an error naming the feature (or imputed by the pipeline), never
    ///   predicted from garbage;
    /// - `deterministic`: predicting the same rows twice gives identical outputs;
    /// - `batch_invariant`: a row predicted alone equals the same row in a batch.
    pub fn failure_checks(&self, reference: ArrayView2<'_, f64>) -> Vec<FailureCheck> {
        let mut checks = Vec::new();
        let classifier = matches!(self.head, Head::Classifier(_));
        let (first_check, invalid) = if classifier {
            ("valid_probabilities", "invalid probabilities")
        } else {
            ("finite_predictions", "non-finite predictions")
        };
        let valid = |outputs: &[Vec<f64>]| {
            outputs.iter().all(|o| {
                o.iter().all(|v| v.is_finite() && (!classifier || *v >= 0.0))
                    && (!classifier || (o.iter().sum::<f64>() - 1.0).abs() < 1e-3)
            })
        };
        let mut push = |name: &str, passed: bool, detail: String| {
            checks.push(FailureCheck { name: name.to_string(), passed, detail });
        };
        let predict = |rows: ArrayView2<'_, f64>| self.outputs(self.prepare(rows));
        let base = predict(reference);
        match &base {
            Ok(p) if valid(p) => push(first_check, true, format!("{} rows", p.len())),
            Ok(_) if classifier => {
                push(first_check, false, "some probabilities are not finite or do not sum to 1".into())
            }
            Ok(_) => push(first_check, false, "some predictions are not finite".into()),
            Err(e) => push(first_check, false, format!("the reference rows were refused: {e}")),
        }
        let cols = reference.ncols();
        // (A reference of another width was refused above, with the reason.)
        if reference.nrows() == 0 || cols == 0 || cols != self.manifest.features.len() {
            return checks;
        }
        let medians: Vec<f64> = (0..cols)
            .map(|j| {
                let mut v: Vec<f64> = reference.column(j).iter().copied().filter(|v| v.is_finite()).collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(0.0)
            })
            .collect();
        let constant = [Array2::zeros((1, cols)), Array2::from_shape_fn((1, cols), |(_, j)| medians[j])];
        let outcomes: Vec<String> = constant
            .iter()
            .map(|rows| match predict(rows.view()) {
                Ok(p) if valid(&p) => "ok".to_string(),
                Ok(_) => invalid.to_string(),
                Err(Error::Input { .. }) => "refused by the input schema".to_string(),
                Err(e) => format!("error: {e}"),
            })
            .collect();
        let passed = outcomes.iter().all(|o| o == "ok" || o.starts_with("refused"));
        push("constant_inputs", passed, format!("zeros: {}; medians: {}", outcomes[0], outcomes[1]));

        let mut failures = Vec::new();
        for j in 0..cols {
            let column = reference.column(j);
            let (lo, hi) = column.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
            let far = hi + 10.0 * (hi - lo).abs().max(1.0);
            let mut row = Array2::from_shape_fn((1, cols), |(_, k)| medians[k]);
            row[[0, j]] = far;
            match predict(row.view()) {
                Ok(p) if valid(&p) => {}
                Ok(_) => failures.push(format!("{}: {invalid}", self.manifest.features[j])),
                Err(Error::Input { column, .. }) if column == self.manifest.features[j] => {}
                Err(e) => failures.push(format!("{}: {e}", self.manifest.features[j])),
            }
        }
        push(
            "out_of_range_values",
            failures.is_empty(),
            if failures.is_empty() { format!("{cols} features pushed 10x out of range") } else { failures.join("; ") },
        );

        let mut failures = Vec::new();
        for j in 0..cols {
            let feature = &self.manifest.features[j];
            let mut row = Array2::from_shape_fn((1, cols), |(_, k)| medians[k]);
            row[[0, j]] = f64::NAN;
            match predict(row.view()) {
                Err(Error::Input { column, .. }) if column == *feature => {}
                Ok(p) if self.pipeline.is_some() && valid(&p) => {} // imputed by the pipeline
                Ok(_) => failures.push(format!("{feature}: NaN was predicted from")),
                Err(e) => failures.push(format!("{feature}: {e}")),
            }
            let record: HashMap<String, Value> = self
                .manifest
                .features
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != j)
                .map(|(k, f)| (f.clone(), Value::Number(medians[k])))
                .collect();
            match self.outputs(self.prepare_records(&[record])) {
                Err(e) if e.to_string().contains(feature.as_str()) => {}
                Ok(_) => failures.push(format!("{feature}: a record without it was predicted")),
                Err(e) => failures.push(format!("{feature} absent: the error does not name it: {e}")),
            }
        }
        push(
            "missing_features",
            failures.is_empty(),
            if failures.is_empty() { format!("{cols} features removed one at a time") } else { failures.join("; ") },
        );

        if let Ok(first) = &base {
            let again = predict(reference);
            push(
                "deterministic",
                again.as_ref().is_ok_and(|a| a == first),
                "the reference rows predicted twice".into(),
            );
            let alone = predict(reference.slice(ndarray::s![0..1, ..]));
            push(
                "batch_invariant",
                alone.as_ref().is_ok_and(|a| a.first() == first.first()),
                "row 1 alone and in the batch".into(),
            );
        }
        checks
    }
}

/// Points a kiln-data error about "row 1" of a single-row transform at the batch row.
fn at_row(error: kiln_data::Error, i: usize) -> Error {
    match error {
        kiln_data::Error::BadValue { column, expected, found, .. } => {
            Error::Input { row: i + 1, column, expected, found }
        }
        kiln_data::Error::MissingColumn { column, .. } => Error::Input {
            row: i + 1,
            column,
            expected: "a value".into(),
            found: "nothing (the column is missing)".into(),
        },
        other => Error::Data(other),
    }
}

/// How a package predicts in a reduced precision compared with full precision, on the same
/// rows: see [`compare_precision`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecisionReport {
    /// The reduced precision.
    pub precision: InferencePrecision,
    /// Rows compared.
    pub rows: usize,
    /// Share of rows given the same class in both precisions.
    pub agreement: f64,
    /// Largest difference of any class probability.
    pub max_probability_diff: f64,
    /// Accuracy in f32 and in the reduced precision, when true classes were given.
    pub accuracy_f32: Option<f64>,
    /// See `accuracy_f32`.
    pub accuracy: Option<f64>,
    /// Median time to predict all rows as one batch, in milliseconds, f32 then reduced.
    pub batch_ms_f32: f64,
    /// See `batch_ms_f32`.
    pub batch_ms: f64,
    /// Median time to predict one row, in microseconds, f32 then reduced.
    pub row_us_f32: f64,
    /// See `row_us_f32`.
    pub row_us: f64,
}

impl PrecisionReport {
    /// f32 time over reduced-precision time for a batch (above 1: the reduced one is faster).
    pub fn batch_speedup(&self) -> f64 {
        self.batch_ms_f32 / self.batch_ms
    }

    /// The same for a single row.
    pub fn row_speedup(&self) -> f64 {
        self.row_us_f32 / self.row_us
    }
}

/// Loads the package in `dir` twice, in f32 and in `precision`, and compares them on `rows`
/// (raw rows, as for [`Predictor::predict`]): agreement, probability differences, accuracy
/// against `truth` (class indices) when given, and the median of 7 timings of a whole-batch
/// prediction and of 50 single-row predictions, alternating the two models.
pub fn compare_precision(
    dir: &Path,
    precision: InferencePrecision,
    rows: ArrayView2<'_, f64>,
    truth: Option<&[usize]>,
) -> Result<PrecisionReport> {
    if rows.nrows() == 0 {
        return Err(Error::Shape("comparing precisions needs at least one row".into()));
    }
    if let Some(t) = truth.filter(|t| t.len() != rows.nrows()) {
        return Err(Error::Shape(format!("{} true classes for {} rows", t.len(), rows.nrows())));
    }
    let full = ModelPackage::load(dir)?;
    let reduced = ModelPackage::load(dir)?.with_precision(precision)?;
    let a = full.predict(rows)?;
    let b = reduced.predict(rows)?;
    let agree = a.iter().zip(&b).filter(|(x, y)| x.class == y.class).count();
    let max_probability_diff = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| x.probabilities.iter().zip(&y.probabilities).map(|(p, q)| f64::from((p - q).abs())))
        .fold(0.0, f64::max);
    let accuracy = |p: &[Prediction]| {
        truth.map(|t| p.iter().zip(t).filter(|(p, t)| p.class == **t).count() as f64 / t.len() as f64)
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let time = |p: &Predictor, x: ArrayView2<'_, f64>| -> Result<f64> {
        let t = std::time::Instant::now();
        p.predict(x)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let (mut batch_f32, mut batch_reduced, mut row_f32, mut row_reduced) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        batch_f32.push(time(&full, rows)? * 1e3);
        batch_reduced.push(time(&reduced, rows)? * 1e3);
    }
    let one = rows.slice(ndarray::s![0..1, ..]);
    for _ in 0..50 {
        row_f32.push(time(&full, one)? * 1e6);
        row_reduced.push(time(&reduced, one)? * 1e6);
    }
    Ok(PrecisionReport {
        precision,
        rows: rows.nrows(),
        agreement: agree as f64 / rows.nrows() as f64,
        max_probability_diff,
        accuracy_f32: accuracy(&a),
        accuracy: accuracy(&b),
        batch_ms_f32: median(batch_f32),
        batch_ms: median(batch_reduced),
        row_us_f32: median(row_f32),
        row_us: median(row_reduced),
    })
}
