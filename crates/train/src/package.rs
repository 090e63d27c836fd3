//! Model packages: everything needed to serve a model, in one directory.
//!
//! ```text
//! <dir>/kiln-package.json   manifest: architecture, training config, input schema, fitted
//!                           preprocessing, label names, metrics, lineage, weights checksum
//! <dir>/weights.mpk         burn named MessagePack record, full precision
//! ```
//!
//! The manifest carries a `format_version`; a reader refuses versions it does not know instead
//! of guessing. The weights are checked against their BLAKE3 hash on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_data::{ColumnSpec, LabelEncoder, Schema, StandardScaler};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::model::ModelConfig;
use crate::trainer::{Classifier, Trained, best_class};
use crate::{Error, Result};

/// The package format this version of kiln writes and reads.
pub const PACKAGE_FORMAT_VERSION: u32 = 2;
/// The manifest's file name inside a package directory.
pub const MANIFEST_FILE: &str = "kiln-package.json";
const WEIGHTS_FILE: &str = "weights.mpk";

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
    /// Seed of the train/validation/test split.
    pub split_seed: Option<u64>,
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
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Version of kiln-train that wrote the package.
    pub kiln_version: String,
    /// Architecture.
    pub model: ModelConfig,
    /// Hyperparameters used.
    pub train_config: TrainConfig,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// The device it trained on (`cpu`, `cuda:0`).
    pub trained_on: String,
    /// Input features, in the order the model takes them.
    pub features: Vec<String>,
    /// What raw input values may be (checked on every prediction).
    pub input_schema: Schema,
    /// Fitted preprocessing, applied to raw inputs before the model.
    pub scaler: Option<StandardScaler>,
    /// Class labels.
    pub labels: LabelEncoder,
    /// The label column of the training data.
    pub label_column: String,
    /// Evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Provenance.
    pub lineage: Lineage,
    /// Weights file name.
    pub weights_file: String,
    /// BLAKE3 hex hash of the weights file.
    pub weights_blake3: String,
}

/// What the caller supplies to package a [`Trained`] model.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageSpec {
    /// Model name.
    pub name: String,
    /// The hyperparameters used.
    pub train_config: TrainConfig,
    /// Input features, in model order.
    pub features: Vec<String>,
    /// Schema of raw input values.
    pub input_schema: Schema,
    /// Fitted preprocessing.
    pub scaler: Option<StandardScaler>,
    /// Class labels.
    pub labels: LabelEncoder,
    /// The label column.
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
    weights: Vec<u8>,
}

impl ModelPackage {
    /// Packages trained weights with everything needed to use them.
    pub fn new(trained: &Trained, spec: PackageSpec) -> Result<Self> {
        if spec.features.len() != trained.model.inputs() {
            return Err(Error::Shape(format!(
                "{} features for a model with {} inputs",
                spec.features.len(),
                trained.model.inputs()
            )));
        }
        if spec.labels.len() != trained.model.classes() {
            return Err(Error::Shape(format!(
                "{} labels for a model with {} classes",
                spec.labels.len(),
                trained.model.classes()
            )));
        }
        let manifest = Manifest {
            format_version: PACKAGE_FORMAT_VERSION,
            name: spec.name,
            kind: trained.model.kind().into(),
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            model: trained.model.clone(),
            train_config: spec.train_config,
            best_epoch: trained.best_epoch,
            trained_on: trained.device.to_string(),
            features: spec.features,
            input_schema: spec.input_schema,
            scaler: spec.scaler,
            labels: spec.labels,
            label_column: spec.label_column,
            metrics: spec.metrics,
            lineage: spec.lineage,
            weights_file: WEIGHTS_FILE.into(),
            weights_blake3: blake3::hash(&trained.weights).to_hex().to_string(),
        };
        Ok(Self { manifest, weights: trained.weights.clone() })
    }

    /// Writes the package into `dir` (created if needed): weights first, then the manifest, so
    /// a directory with a manifest always has its weights.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        write_synced(&dir.join(&self.manifest.weights_file), &self.weights)?;
        let manifest = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&self.manifest)
            .map_err(|e| Error::Package { path: manifest.clone(), message: e.to_string() })?;
        write_synced(&manifest, &json)
    }

    /// Reads and checks a package directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes =
            std::fs::read(&manifest_path).map_err(|source| Error::Io { path: manifest_path.clone(), source })?;
        let probe: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Package { path: manifest_path.clone(), message: format!("not valid JSON: {e}") })?;
        let version = probe.get("format_version").and_then(serde_json::Value::as_u64);
        if version != Some(u64::from(PACKAGE_FORMAT_VERSION)) {
            return Err(Error::Package {
                path: manifest_path,
                message: format!(
                    "package format version {version:?} is not supported (this kiln reads version {PACKAGE_FORMAT_VERSION})"
                ),
            });
        }
        let manifest: Manifest = serde_json::from_value(probe)
            .map_err(|e| Error::Package { path: manifest_path.clone(), message: e.to_string() })?;
        let weights_path: PathBuf = dir.join(&manifest.weights_file);
        let weights =
            std::fs::read(&weights_path).map_err(|source| Error::Io { path: weights_path.clone(), source })?;
        let hash = blake3::hash(&weights).to_hex().to_string();
        if hash != manifest.weights_blake3 {
            return Err(Error::Package {
                path: weights_path,
                message: format!("checksum mismatch: manifest says {}, file hashes to {hash}", manifest.weights_blake3),
            });
        }
        Ok(Self { manifest, weights })
    }

    /// Reads a package and builds a [`Predictor`].
    pub fn load(dir: &Path) -> Result<Predictor> {
        Self::read(dir)?.into_predictor()
    }

    /// Builds a [`Predictor`] from this package.
    pub fn into_predictor(self) -> Result<Predictor> {
        let classifier = Classifier::from_weights(self.manifest.model.clone(), &self.weights)?;
        let input_specs =
            self.manifest.features.iter().map(|f| self.manifest.input_schema.column(f).cloned()).collect();
        Ok(Predictor { manifest: self.manifest, classifier, input_specs })
    }
}

/// Writes a file and syncs it to disk before returning.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
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

/// A loaded package, ready to predict from raw (unpreprocessed) feature rows.
#[derive(Debug)]
pub struct Predictor {
    manifest: Manifest,
    classifier: Classifier,
    /// The input schema's spec of each feature, in feature order (resolved once, not per row).
    input_specs: Vec<Option<ColumnSpec>>,
}

impl Predictor {
    /// The package manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Predicts raw rows (`rows × features`, in [`Manifest::features`] order): checks them
    /// against the input schema, applies the fitted preprocessing, runs the model.
    pub fn predict(&self, rows: ArrayView2<'_, f64>) -> Result<Vec<Prediction>> {
        let features = &self.manifest.features;
        if rows.ncols() != features.len() {
            return Err(Error::Shape(format!(
                "the model takes {} features, each row has {}",
                features.len(),
                rows.ncols()
            )));
        }
        for (i, row) in rows.rows().into_iter().enumerate() {
            for (spec, value) in self.input_specs.iter().zip(row) {
                if let Some(v) = spec.as_ref().and_then(|spec| spec.check_value(i + 1, *value)) {
                    return Err(Error::Input { row: v.row, column: v.column, expected: v.expected, found: v.found });
                }
            }
        }
        let mut x: Array2<f64> = rows.to_owned();
        if let Some(scaler) = &self.manifest.scaler {
            scaler.transform(&mut x)?;
        }
        let probs = self.classifier.predict_proba(x.mapv(|v| v as f32).view())?;
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
}
