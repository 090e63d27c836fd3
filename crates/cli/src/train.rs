//! `kiln train --config train.toml`: data file to registered model in one tracked run.
//!
//! The config names the data, the preprocessing pipeline (kiln-data's `Pipeline`), the model
//! (kiln-train's `ModelConfig`; inputs and classes come from the data), the training settings
//! (`TrainConfig`) and, optionally, a registration gate. Any value can be overridden without
//! editing the file: `KILN_TRAIN__TRAIN__EPOCHS=5` in the environment, or `--set train.epochs=5`
//! (which wins). The resolved config is logged with the run, so the run says exactly what it
//! trained with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use kiln_data::Rows;
use kiln_data::{Dataset, DatasetProfile, LabelEncoder, Pipeline, ProfileOptions, Schema, SplitFractions, TrainSplit};
use kiln_data::{FittedPipeline, Quarantine};
use kiln_track::{DatasetInput, RegisterOptions, Store, Tracker};
use kiln_train::tune::{
    Direction, ParamSpec, PrunerConfig, SamplerConfig, SearchSpace, Study, StudyConfig, Tracking, Trial,
};
use kiln_train::{
    EpochReport, EvalReport, Examples, Fitted, Hooks, Lineage, Mode, ModelConfig, ModelPackage, Monitor, MonitorMetric,
    PackageSpec, PromotionGate, RegressionLoss, RegressionReport, RegressionTask, Regressor, TargetScaler, TrainConfig,
    Trained,
};
use serde::Deserialize;
use serde_json::json;

/// The prefix of environment variables that override config values (`__` separates keys).
pub const ENV_PREFIX: &str = "KILN_TRAIN__";

/// The exit status when training succeeded but the registration gate refused the model.
pub const EXIT_REFUSED: u8 = 3;

/// `kiln train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The config file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Override a value: KEY.PATH=VALUE (a TOML value; bare text is a string). Repeatable;
    /// wins over KILN_TRAIN__KEY__PATH environment variables, which win over the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the resolved config (after overrides) and exit without training.
    #[arg(long)]
    print_config: bool,
    /// Print a JSON summary at the end instead of text.
    #[arg(long)]
    json: bool,
    /// Run as a sweep worker: ask this study journal (created if missing, from the config's
    /// [sweep] section) for trials until it has [sweep].trials of them. Several workers (a
    /// Slurm array: `kiln slurm sweep`) can share one journal.
    #[arg(long)]
    study: Option<PathBuf>,
    /// The trials the study should reach (default: [sweep].trials).
    #[arg(long, requires = "study")]
    trials: Option<u64>,
    /// The parent run: the sweep's run for --study (the trials' parent), or a pipeline's run
    /// (default: $KILN_PARENT_RUN).
    #[arg(long, env = "KILN_PARENT_RUN")]
    parent_run: Option<String>,
}

/// The config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The experiment the run is logged under.
    pub experiment: String,
    /// A name for the run.
    #[serde(default)]
    pub run_name: Option<String>,
    /// What to learn: `classification` (the default; a class per row) or `regression` (a
    /// number per row, from a numeric label column).
    #[serde(default)]
    pub task: TaskKind,
    /// The loss of a regression: `{ kind = "mse" }` (the default) or
    /// `{ kind = "huber", delta = 1.0 }` (delta in standard deviations of the target).
    #[serde(default)]
    pub loss: Option<RegressionLoss>,
    /// The data.
    pub data: DataSection,
    /// Preprocessing; the label column is always excluded from the features.
    #[serde(default)]
    pub preprocess: Pipeline,
    /// The model, without `inputs`/`classes` (taken from the data).
    pub model: toml::Table,
    /// Training settings.
    #[serde(default)]
    pub train: TrainConfig,
    /// Register the model when the gate passes.
    #[serde(default)]
    pub register: Option<RegisterSection>,
    /// A hyperparameter search over this config (`kiln train --study`, `kiln slurm sweep`).
    #[serde(default)]
    pub sweep: Option<SweepSection>,
}

/// What `kiln train` learns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A class per row (weighted cross-entropy), from a label column of any type.
    #[default]
    Classification,
    /// A number per row (MSE or Huber on the standardised target; RMSE, MAE and R² in the
    /// target's units), from a numeric label column.
    Regression,
}

/// `[sweep]`: which config values to search, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSection {
    /// The study's name (default: the experiment's, plus `-sweep`).
    #[serde(default)]
    pub name: Option<String>,
    /// Trials in all, over every worker.
    pub trials: u64,
    /// What the trials optimise: the best epoch's value of this metric (`val_loss`, the
    /// default; `val_accuracy`, `val_rmse`, any metric the training reports).
    #[serde(default)]
    pub objective: MonitorMetric,
    /// `min` or `max`; by default the direction kiln knows for the objective's name (losses
    /// and errors down, accuracies, AUCs, F1 and R² up).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The sampler (default TPE).
    #[serde(default)]
    pub sampler: Option<SamplerConfig>,
    /// The pruner (default none).
    #[serde(default)]
    pub pruner: Option<PrunerConfig>,
    /// The searched values, each named by its config path (`train.learning_rate`,
    /// `model.hidden`).
    pub params: Vec<ParamSpec>,
}

impl SweepSection {
    /// The study's settings.
    pub fn study_config(&self, experiment: &str) -> StudyConfig {
        let name = self.name.clone().unwrap_or_else(|| format!("{experiment}-sweep"));
        let direction = match self.monitor().mode() {
            Mode::Min => Direction::Minimize,
            Mode::Max => Direction::Maximize,
        };
        let mut config = StudyConfig::new(&name).direction(direction);
        if let Some(sampler) = &self.sampler {
            config = config.sampler(sampler.clone());
        }
        if let Some(pruner) = &self.pruner {
            config = config.pruner(pruner.clone());
        }
        config
    }
}

/// `[data]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The data file (CSV, Parquet, Arrow IPC, NDJSON), relative to the config file.
    pub path: PathBuf,
    /// The label column.
    pub label: String,
    /// A schema file to validate against first, relative to the config file.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// With a schema: `error` (default) stops on invalid rows; `quarantine` trains on the
    /// valid rows and logs the others as an artifact.
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// Train, validation and test shares.
    #[serde(default = "default_fractions")]
    pub fractions: [f64; 3],
    /// The split seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_fractions() -> [f64; 3] {
    [0.7, 0.15, 0.15]
}

fn default_seed() -> u64 {
    42
}

/// What to do with rows that fail the schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// Stop before training.
    #[default]
    Error,
    /// Leave them out, count them and log them.
    Quarantine,
}

/// `[register]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSection {
    /// The model name in the registry.
    pub model: String,
    /// The alias to move when the gate passes.
    #[serde(default = "default_alias")]
    pub alias: String,
    /// Minimums (maximums for lower-is-better metrics) on test metrics, e.g.
    /// `{ test_accuracy = 0.9 }`.
    #[serde(default)]
    pub require: BTreeMap<String, f64>,
    /// How much worse than the current alias holder a required metric may be.
    #[serde(default)]
    pub tolerance: f64,
    /// A description of the version.
    #[serde(default)]
    pub description: Option<String>,
}

fn default_alias() -> String {
    "production".into()
}

/// Parses an override value: TOML if it parses as one, else a string.
fn parse_value(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

/// Sets `path` (dotted) to `value`, creating tables on the way.
fn set_path(root: &mut toml::Table, path: &[String], value: toml::Value, source: &str) -> Result<()> {
    let Some((last, parents)) = path.split_last() else { bail!("{source}: empty key") };
    let mut table = root;
    for (i, key) in parents.iter().enumerate() {
        let entry = table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            other => bail!(
                "{source}: {} is a {}, not a table, so it has no key {:?}",
                path[..=i].join("."),
                other.type_str(),
                path[i + 1]
            ),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// The environment as text (variables that are not UTF-8 cannot be overrides; left out).
pub fn env_vars() -> Vec<(String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// Keys of `given` that `parsed` (the same table after a round trip through its type) lacks:
/// the fields serde ignored, misspelt ones.
fn unknown_keys(given: &toml::Table, parsed: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in given {
        let path = format!("{prefix}{key}");
        match (value, parsed.get(key)) {
            (_, None) => out.push(path),
            (toml::Value::Table(g), Some(toml::Value::Table(p))) => unknown_keys(g, p, &format!("{path}."), out),
            (toml::Value::Array(g), Some(toml::Value::Array(p))) => {
                for (i, (g, p)) in g.iter().zip(p).enumerate() {
                    if let (toml::Value::Table(g), toml::Value::Table(p)) = (g, p) {
                        unknown_keys(g, p, &format!("{path}[{i}]."), out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Refuses keys of the `[train]`, `[model]` and `[preprocess]` sections that their types
/// do not have (they would be ignored silently).
fn check_sections(table: &toml::Table, recipe: &Recipe, model: &ModelConfig, path: &Path) -> Result<()> {
    let mut unknown = Vec::new();
    let round_trip = |value: &dyn erased::Ser| value.to_table();
    for (section, parsed) in [
        ("train", round_trip(&recipe.train)),
        ("model", round_trip(model)),
        ("preprocess", round_trip(&recipe.preprocess)),
    ] {
        if let (Some(toml::Value::Table(given)), Some(parsed)) = (table.get(section), parsed) {
            unknown_keys(given, &parsed, &format!("{section}."), &mut unknown);
        }
    }
    if !unknown.is_empty() {
        bail!(
            "{}: unknown key(s) {} (see docs/cli.md and the types they configure)",
            path.display(),
            unknown.join(", ")
        );
    }
    Ok(())
}

mod erased {
    /// Serialises a config to a TOML table, for [`super::unknown_keys`].
    pub trait Ser {
        fn to_table(&self) -> Option<toml::Table>;
    }

    impl<T: serde::Serialize> Ser for T {
        fn to_table(&self) -> Option<toml::Table> {
            toml::Table::try_from(self).ok()
        }
    }
}

/// Reads the config and applies environment overrides, then `--set` ones.
pub fn resolve(path: &Path, env: impl IntoIterator<Item = (String, String)>, sets: &[String]) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the config {}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    let mut env: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len()).collect();
    env.sort();
    // While the config itself reads, an override that breaks it is named as the culprit,
    // rather than the file.
    let reads = |t: &toml::Table| Recipe::deserialize(toml::Value::Table(t.clone())).err();
    let mut clean = reads(&table).is_none();
    let mut apply = |table: &mut toml::Table, keys: &[String], value: toml::Value, source: String| -> Result<()> {
        set_path(table, keys, value, &source)?;
        let broken = reads(table);
        if clean && let Some(e) = &broken {
            bail!("{source} (applied to {}): {}", path.display(), e.to_string().trim_end());
        }
        clean = broken.is_none();
        Ok(())
    };
    for (key, value) in env {
        let keys: Vec<String> = key[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
        apply(&mut table, &keys, parse_value(&value), format!("environment variable {key}"))?;
    }
    for spec in sets {
        let (key, value) = spec.split_once('=').with_context(|| format!("--set {spec:?}: expected KEY.PATH=VALUE"))?;
        let keys: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        apply(&mut table, &keys, parse_value(value.trim()), format!("--set {spec:?}"))?;
    }
    Ok(table)
}

/// Turns the resolved table into a [`Recipe`], naming the config file in errors.
pub fn recipe(table: &toml::Table, path: &Path) -> Result<Recipe> {
    Recipe::deserialize(toml::Value::Table(table.clone()))
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))
}

/// The model config with `inputs` and `classes` filled in from the data.
fn model_config(model: &toml::Table, inputs: usize, classes: usize, path: &Path) -> Result<ModelConfig> {
    let mut model = model.clone();
    let kind = model.get("kind").and_then(toml::Value::as_str).unwrap_or("mlp").to_string();
    model.insert("kind".into(), toml::Value::String(kind.clone()));
    model.entry("classes").or_insert(toml::Value::Integer(classes as i64));
    if kind != "cnn" {
        model.entry("inputs").or_insert(toml::Value::Integer(inputs as i64));
    }
    let config = ModelConfig::deserialize(toml::Value::Table(model))
        .map_err(|e| anyhow::anyhow!("{}: [model]: {}", path.display(), e.to_string().trim_end()))?;
    if config.inputs() != inputs || config.classes() != classes {
        bail!(
            "{}: [model] takes {} inputs and {} outputs (classes), but the data gives {inputs} features and {classes} output(s)",
            path.display(),
            config.inputs(),
            config.classes()
        );
    }
    Ok(config)
}

/// Runs `kiln train`.
pub fn run(store_path: Option<&Path>, args: TrainArgs) -> Result<ExitCode> {
    let table = resolve(&args.config, env_vars(), &args.set)?;
    let recipe = recipe(&table, &args.config)?;
    // The model's shape comes from the data; any inputs and classes satisfy the key check.
    let probe = model_config(&recipe.model, 1, 2, &args.config).or_else(|_| {
        let mut m = recipe.model.clone();
        m.insert("inputs".into(), toml::Value::Integer(1));
        m.insert("height".into(), toml::Value::Integer(1));
        m.insert("width".into(), toml::Value::Integer(1));
        m.insert("channels".into(), toml::Value::Integer(1));
        ModelConfig::deserialize(toml::Value::Table(m)).map_err(anyhow::Error::from)
    });
    if let Ok(model) = probe {
        check_sections(&table, &recipe, &model, &args.config)?;
    }
    if args.print_config {
        say!("{}", toml::to_string_pretty(&table).unwrap_or_else(|_| format!("{table:?}")));
        return Ok(ExitCode::SUCCESS);
    }
    recipe.train.validate()?;
    let store = match store_path {
        Some(p) => Store::open(p)?,
        None => Store::from_env()?,
    };
    if let Some(study) = &args.study {
        return sweep_worker(&store, &recipe, &table, &args, study);
    }
    train(&store, &recipe, &table, &args.config, args.parent_run.as_deref(), args.json)
}

/// Data, split, fitted preprocessing and model of one config: what training needs.
struct Prepared {
    data: Dataset,
    digest: String,
    source: String,
    quarantined: Option<Quarantine>,
    train_rows: TrainSplit,
    pipeline: Pipeline,
    fitted: FittedPipeline,
    sets: Sets,
    model: ModelConfig,
}

/// The three parts of the data, by task.
enum Sets {
    Classes { encoder: LabelEncoder, train: Examples, val: Examples, test: Examples },
    Numeric { target: TargetScaler, train: Rows<f32>, val: Rows<f32>, test: Rows<f32> },
}

impl Sets {
    fn lens(&self) -> [usize; 3] {
        match self {
            Self::Classes { train, val, test, .. } => [train.len(), val.len(), test.len()],
            Self::Numeric { train, val, test, .. } => {
                [train.targets().len(), val.targets().len(), test.targets().len()]
            }
        }
    }

    /// The model's outputs: one per class, or one number.
    fn outputs(&self) -> usize {
        match self {
            Self::Classes { encoder, .. } => encoder.len(),
            Self::Numeric { .. } => 1,
        }
    }
}

/// What one training produced.
enum Outcome {
    Classifier(Trained),
    Regression { fitted: Fitted, task: RegressionTask },
}

impl Outcome {
    fn history(&self) -> &[EpochReport] {
        match self {
            Self::Classifier(t) => &t.history,
            Self::Regression { fitted, .. } => &fitted.history,
        }
    }

    fn best_epoch(&self) -> usize {
        match self {
            Self::Classifier(t) => t.best_epoch,
            Self::Regression { fitted, .. } => fitted.best_epoch,
        }
    }

    fn device(&self) -> String {
        match self {
            Self::Classifier(t) => t.device.to_string(),
            Self::Regression { fitted, .. } => fitted.device.to_string(),
        }
    }
}

/// Trains `model` on the prepared data with `recipe`'s settings.
fn fit_prepared(
    prepared: &Prepared,
    recipe: &Recipe,
    model: &ModelConfig,
    tracker: Option<&mut dyn Tracker>,
    hooks: &mut dyn Hooks,
) -> Result<Outcome> {
    Ok(match &prepared.sets {
        Sets::Classes { train, val, .. } => {
            Outcome::Classifier(kiln_train::train(&recipe.train, model, train, Some(val), tracker, hooks)?)
        }
        Sets::Numeric { target, train, val, .. } => {
            let task = RegressionTask::new(model.clone(), recipe.loss.unwrap_or_default(), *target)?;
            let fitted = kiln_train::fit(&recipe.train, &task, train.clone(), Some(val.clone()), tracker, hooks)?;
            Outcome::Regression { fitted, task }
        }
    })
}

fn prepare(recipe: &Recipe, config_path: &Path) -> Result<Prepared> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let data_path = base.join(&recipe.data.path);
    let d = &recipe.data;
    if recipe.loss.is_some() && recipe.task != TaskKind::Regression {
        bail!(
            "{}: loss is set, but it is the loss of task = \"regression\" (this config classifies)",
            config_path.display()
        );
    }
    let mut data = crate::data::load(&data_path)?;
    let digest = data.hash().to_string();
    let mut quarantined = None;
    if let Some(schema_path) = &d.schema {
        let schema = Schema::load(base.join(schema_path))?;
        match d.on_invalid {
            OnInvalid::Error => {
                let report = schema.check(&data)?;
                if !report.is_valid() {
                    bail!(
                        "{}: {} (set data.on_invalid = \"quarantine\" to train on the valid rows)",
                        data_path.display(),
                        report.summary()
                    );
                }
            }
            OnInvalid::Quarantine => {
                let (valid, q) = schema.split_valid(&data)?;
                if !q.report.is_valid() {
                    eprintln!(
                        "{}: {}; training on the {} valid rows",
                        data_path.display(),
                        q.report.summary(),
                        valid.height()
                    );
                    quarantined = Some(q);
                }
                data = valid;
            }
        }
    }
    if data.height() == 0 {
        bail!("{}: no rows to train on", data_path.display());
    }
    let fractions = SplitFractions::new(d.fractions[0], d.fractions[1], d.fractions[2])
        .with_context(|| format!("{}: [data] fractions", config_path.display()))?;
    enum Labels {
        Classes(LabelEncoder, Vec<usize>),
        Numbers(Vec<f32>),
    }
    let (split, labels) = match recipe.task {
        TaskKind::Classification => {
            let labels = data.to_strings(&d.label).with_context(|| format!("{}: label column", data_path.display()))?;
            let split = kiln_data::stratified_split(&labels, fractions, d.seed)?;
            let encoder = LabelEncoder::fit(&labels);
            let classes = encoder.encode(&labels)?;
            (split, Labels::Classes(encoder, classes))
        }
        TaskKind::Regression => {
            let targets = data.to_matrix(std::slice::from_ref(&d.label)).with_context(|| {
                format!(
                    "{}: the label column {:?} of a regression must hold a number in every row (leave rows without one out with a schema and data.on_invalid = \"quarantine\"; row numbers count the rows that passed the schema)",
                    data_path.display(),
                    d.label
                )
            })?;
            let targets: Vec<f32> = targets.column(0).iter().map(|v| *v as f32).collect();
            if let Some(row) = targets.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{} row {}: the label {:?} is not a finite number in f32 ({})",
                    data_path.display(),
                    row + 1,
                    d.label,
                    targets[row]
                );
            }
            (kiln_data::random_split(data.height(), fractions, d.seed), Labels::Numbers(targets))
        }
    };
    for (part, rows) in [("train", &split.train), ("validation", &split.val), ("test", &split.test)] {
        if rows.is_empty() {
            bail!(
                "{}: [data] fractions {:?} leave no {part} rows of the {} in {}; every part needs some",
                config_path.display(),
                d.fractions,
                data.height(),
                data_path.display()
            );
        }
    }
    let mut pipeline = recipe.preprocess.clone();
    if !pipeline.exclude.contains(&d.label) {
        pipeline.exclude.push(d.label.clone());
    }
    if pipeline.steps.is_empty() {
        bail!("{}: [preprocess] has no steps; add at least one (e.g. columns = \"numeric\")", config_path.display());
    }
    let train_rows = TrainSplit::of_split(&data, &split)?;
    let fitted = pipeline.fit(&train_rows)?;
    // Absolute, so the lineage names the file wherever the run is read from.
    let source = std::path::absolute(&data_path).unwrap_or_else(|_| data_path.clone()).display().to_string();
    let features = |rows: &[usize]| -> Result<_> {
        let frame = data.take(rows)?.frame().clone();
        Ok(fitted.transform(&frame, &source)?.mapv(|v| v as f32))
    };
    let sets = match labels {
        Labels::Classes(encoder, classes) => {
            let part = |rows: &[usize]| -> Result<Examples> {
                Ok(Examples::new(features(rows)?, rows.iter().map(|r| classes[*r]).collect())?)
            };
            let (train, val, test) = (part(&split.train)?, part(&split.val)?, part(&split.test)?);
            Sets::Classes { encoder, train, val, test }
        }
        Labels::Numbers(targets) => {
            let part = |name: &str, rows: &[usize]| -> Result<Rows<f32>> {
                Ok(Rows::new(name, features(rows)?, rows.iter().map(|r| targets[*r]).collect())?)
            };
            let train = part("training", &split.train)?;
            let target = TargetScaler::fit(train.targets(), "training")?;
            let (val, test) = (part("validation", &split.val)?, part("test", &split.test)?);
            Sets::Numeric { target, train, val, test }
        }
    };
    let model = model_config(&recipe.model, fitted.width(), sets.outputs(), config_path)?;
    Ok(Prepared { data, digest, source, quarantined, train_rows, pipeline, fitted, sets, model })
}

/// A JSON value (a trial's draw) as a TOML value.
fn to_toml(value: &serde_json::Value, name: &str) -> Result<toml::Value> {
    toml::Value::try_from(value).with_context(|| format!("sweep param {name}: {value} has no TOML form"))
}

/// Reports each epoch's objective to the trial (for the pruner) and logs the epoch's metrics
/// to the trial's run, so trials' curves can be compared.
struct TrialHooks<'t> {
    trial: &'t mut Trial,
    metric: MonitorMetric,
    pruned: bool,
    error: Option<kiln_train::Error>,
}

impl Hooks for TrialHooks<'_> {
    fn on_epoch(&mut self, e: &EpochReport) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow;
        let value = e.metric(self.metric.name());
        if value.is_none() {
            let mut known = vec!["train_loss".to_string()];
            known.extend(e.val_loss.map(|_| "val_loss".to_string()));
            known.extend(e.metrics.keys().cloned());
            self.error = Some(kiln_train::Error::Config(format!(
                "the sweep's objective {} is not reported by this training (it reports {})",
                self.metric,
                known.join(", ")
            )));
            return ControlFlow::Break(());
        }
        let step = e.epoch as u64;
        if let Some(run) = self.trial.run() {
            let mut values = vec![("train_loss", e.train_loss)];
            values.extend(e.val_loss.map(|v| ("val_loss", v)));
            values.extend(e.metrics.iter().map(|(k, v)| (k.as_str(), *v)));
            if let Err(err) = run.log_metrics(step, &values) {
                self.error = Some(err.into());
                return ControlFlow::Break(());
            }
        }
        let Some(value) = value else { return ControlFlow::Continue(()) };
        match self.trial.report(step, value).and_then(|()| self.trial.should_prune()) {
            Ok(false) => ControlFlow::Continue(()),
            Ok(true) => {
                self.pruned = true;
                ControlFlow::Break(())
            }
            Err(err) => {
                self.error = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}

/// `kiln train --study`: trials until the study has its total.
fn sweep_worker(
    store: &Store,
    recipe: &Recipe,
    table: &toml::Table,
    args: &TrainArgs,
    journal: &Path,
) -> Result<ExitCode> {
    let sweep =
        recipe.sweep.as_ref().with_context(|| format!("{}: --study needs a [sweep] section", args.config.display()))?;
    let space = SearchSpace { params: sweep.params.clone() };
    space.validate().with_context(|| format!("{}: [sweep] params", args.config.display()))?;
    let total = args.trials.unwrap_or(sweep.trials);
    let study = Study::open_or_create(journal, sweep.study_config(&recipe.experiment))?;
    let mut tracking = Tracking::new(store, &recipe.experiment);
    if let Some(parent) = &args.parent_run {
        tracking = tracking.parent(parent);
    }
    study.set_tracking(Some(tracking));
    let monitor = sweep.monitor();
    if monitor.mode.is_none() && monitor.metric.known_mode().is_none() {
        bail!(
            "{}: [sweep] objective = \"{}\" needs mode = \"min\" or \"max\" (kiln knows the direction of losses, errors, accuracies, AUCs, F1 and R² only)",
            args.config.display(),
            monitor.metric
        );
    }
    let metric = monitor.metric.clone();
    // Preparing the data again only when a trial changes [data] or [preprocess].
    let mut cache: Option<(String, Prepared)> = None;
    let objective = |trial: &mut Trial| -> Result<f64> {
        let drawn = trial.suggest_space(&space).map_err(anyhow::Error::from)?;
        let mut table = table.clone();
        for (name, value) in &drawn {
            let keys: Vec<String> = name.split('.').map(str::to_string).collect();
            set_path(&mut table, &keys, to_toml(value, name)?, &format!("sweep param {name}"))?;
        }
        let trial_recipe = self::recipe(&table, &args.config)?;
        let key = format!("{:?}{:?}", table.get("data"), table.get("preprocess"));
        if cache.as_ref().is_none_or(|(k, _)| *k != key) {
            cache = Some((key.clone(), prepare(&trial_recipe, &args.config)?));
        }
        let Some((_, prepared)) = cache.as_ref() else { bail!("no prepared data") };
        let model = model_config(&trial_recipe.model, prepared.fitted.width(), prepared.sets.outputs(), &args.config)?;
        let number = trial.number();
        let mut hooks = TrialHooks { trial, metric: metric.clone(), pruned: false, error: None };
        let trained = fit_prepared(prepared, &trial_recipe, &model, None, &mut hooks)?;
        if let Some(e) = hooks.error {
            return Err(e.into());
        }
        if hooks.pruned {
            return Err(hooks.trial.pruned().into());
        }
        let values = trained.history().iter().filter_map(|e| e.metric(metric.name()));
        let best = match monitor.mode() {
            Mode::Max => values.fold(f64::NEG_INFINITY, f64::max),
            Mode::Min => values.fold(f64::INFINITY, f64::min),
        };
        if !best.is_finite() {
            anyhow::bail!(
                "trial {number}: no epoch gave a finite {} (the validation set is empty or training diverged)",
                sweep.objective_name()
            );
        }
        eprintln!("trial {number}: {} = {best:.4} ({} epochs)", sweep.objective_name(), trained.history().len());
        Ok(best)
    };
    let report = study.optimize_total(objective, total)?;
    let best = study.best_trial()?;
    if args.json {
        say!(
            "{}",
            json!({"study": journal.display().to_string(), "completed": report.completed(), "pruned": report.pruned(),
                "failed": report.failed(), "best": best.as_ref().map(|b| json!({"number": b.number, "value": b.value.map(crate::util::finite_json),
                    "params": b.params}))})
        );
    } else {
        say!(
            "worker done: {} complete, {} pruned, {} failed (study {})",
            report.completed(),
            report.pruned(),
            report.failed(),
            journal.display()
        );
        if let Some(b) = &best {
            say!(
                "best so far: trial {} {} = {:.4} with {}",
                b.number,
                sweep.objective_name(),
                b.value.unwrap_or(f64::NAN),
                crate::util::params_text(&b.params)
            );
        }
    }
    if report.completed() == 0 && report.failed() > 0 {
        bail!("every trial of this worker failed ({}); the reasons are logged above", report.failed());
    }
    Ok(ExitCode::SUCCESS)
}

impl SweepSection {
    fn objective_name(&self) -> &str {
        self.objective.name()
    }

    /// The objective and its direction.
    fn monitor(&self) -> Monitor {
        Monitor { metric: self.objective.clone(), mode: self.mode }
    }
}

fn train(
    store: &Store,
    recipe: &Recipe,
    table: &toml::Table,
    config_path: &Path,
    parent: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let prepared = prepare(recipe, config_path)?;
    let Prepared { data, digest, source, quarantined, train_rows, pipeline, fitted, sets, model } = &prepared;
    let d = &recipe.data;
    let data_path = Path::new(source);
    let task_name = match recipe.task {
        TaskKind::Classification => "classification",
        TaskKind::Regression => "regression",
    };
    let mut builder = store.run_builder(&recipe.experiment);
    if let Some(name) = &recipe.run_name {
        builder = builder.name(name);
    }
    if let Some(parent) = parent {
        builder = builder.parent(parent);
    }
    let mut run = builder.start()?;
    // Whatever fails from here on fails the run with the reason, not only training.
    let outcome = (|| -> Result<_> {
        run.log_params(&json!({"data": {"path": source, "label": d.label, "fractions": d.fractions, "seed": d.seed,
            "task": task_name}, "model": model, "preprocess": pipeline}))?;
        run.log_input(DatasetInput {
            name: data_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            digest: digest.clone(),
            source: source.clone(),
            rows: Some(data.height() as u64),
            context: Some("train/validation/test".into()),
        })?;
        run.log_artifact_bytes("train_config.toml", toml::to_string_pretty(table)?.as_bytes())?;
        if let Some(q) = quarantined {
            let file = run.scratch_dir()?.join("quarantine.parquet");
            q.write_parquet(&file)?;
            run.log_artifact("quarantine.parquet", &file)?;
            run.log_metric("quarantined_rows", 0, q.report.bad_rows.len() as f64)?;
        }
        let [n_train, n_val, n_test] = sets.lens();
        if !json {
            let what = match sets {
                Sets::Classes { encoder, .. } => format!("{} classes", encoder.len()),
                Sets::Numeric { .. } => format!("regression of {}", d.label),
            };
            say!(
                "run {} in {}: {} rows ({n_train} train / {n_val} val / {n_test} test), {} features, {what}, {} parameters",
                run.id(),
                recipe.experiment,
                data.height(),
                fitted.width(),
                model.num_params()
            );
        }
        let quiet = json;
        let regression = matches!(sets, Sets::Numeric { .. });
        let mut report_epoch = |e: &EpochReport| {
            if quiet {
                return;
            }
            let (name, train, val) = if regression {
                ("rmse", e.metric("train_rmse"), e.metric("val_rmse"))
            } else {
                ("acc", e.train_accuracy(), e.val_accuracy())
            };
            let _ = std::io::Write::write_fmt(
                &mut std::io::stdout().lock(),
                format_args!(
                    "epoch {:>3}  train loss {:.4} {name} {:.4}  val loss {:.4} {name} {:.4}  ({:.2}s)\n",
                    e.epoch,
                    e.train_loss,
                    train.unwrap_or(f64::NAN),
                    e.val_loss.unwrap_or(f64::NAN),
                    val.unwrap_or(f64::NAN),
                    e.seconds
                ),
            );
        };
        let trained =
            fit_prepared(&prepared, recipe, model, Some(&mut run as &mut dyn kiln_track::Tracker), &mut report_epoch)?;
        let step = trained.history().len() as u64;
        let git_commit = store.run(run.id())?.environment.and_then(|e| e.git_commit);
        let run_id = run.id().to_string();
        let spec = |labels: LabelEncoder| PackageSpec {
            name: recipe.register.as_ref().map_or_else(|| recipe.experiment.clone(), |r| r.model.clone()),
            train_config: recipe.train.clone(),
            features: Vec::new(),
            input_schema: Schema::new(Vec::new()),
            scaler: None,
            pipeline: Some(fitted.clone()),
            labels,
            label_column: d.label.clone(),
            metrics: BTreeMap::new(),
            lineage: Lineage {
                run_id: Some(run_id.clone()),
                experiment: Some(recipe.experiment.clone()),
                dataset: Some(source.clone()),
                dataset_hash: Some(digest.clone()),
                dataset_digests: vec![digest.clone()],
                git_commit: git_commit.clone(),
                split_seed: Some(d.seed),
            },
        };
        let profile = DatasetProfile::of(train_rows.frame(), &ProfileOptions::default())?;
        let (package, evaluation) = match (&trained, sets) {
            (Outcome::Classifier(trained), Sets::Classes { encoder, test, .. }) => {
                let classifier = trained.classifier()?;
                let probabilities = classifier.predict_proba(test.x.view())?.mapv(f64::from);
                let evaluation = EvalReport::compute(&test.y, probabilities.view(), &encoder.classes)?;
                let package = ModelPackage::new(trained, spec(encoder.clone()))?
                    .with_profile(profile)
                    .with_eval(evaluation.clone());
                (package, Evaluation::Classes(Box::new(evaluation)))
            }
            (Outcome::Regression { fitted, task }, Sets::Numeric { test, .. }) => {
                let regressor = Regressor::from_weights(task.arch().clone(), task.target(), &fitted.weights)?;
                let predicted = regressor.predict(test.x().view())?;
                let truth: Vec<f64> = test.targets().iter().map(|v| f64::from(*v)).collect();
                let report = RegressionReport::new(&truth, &predicted)?;
                let plot = run.scratch_dir()?.join("residuals.svg");
                let title = format!("{}: test residuals", d.label);
                kiln_train::plot::residual_plot(&truth, &predicted, &title, &d.label, &plot)?;
                run.log_artifact("residuals.svg", &plot)?;
                let package = ModelPackage::regression(fitted, task, spec(LabelEncoder::default()))?
                    .with_profile(profile)
                    .with_regression_eval(report)?;
                (package, Evaluation::Numbers(report))
            }
            _ => bail!("the training and the data disagree on the task"),
        };
        let (metrics, report_json) = match &evaluation {
            Evaluation::Classes(e) => (e.metrics(), serde_json::to_vec_pretty(e)?),
            Evaluation::Numbers(r) => (r.metrics(), serde_json::to_vec_pretty(r)?),
        };
        for (name, value) in metrics {
            run.log_metric(&format!("test_{name}"), step, value)?;
        }
        run.log_artifact_bytes("eval_report.json", &report_json)?;
        let package_dir = run.scratch_dir()?.join("model");
        package.save(&package_dir)?;
        run.log_artifact("model", &package_dir)?;

        let mut registered: Option<(u32, Option<u32>)> = None;
        let mut refused: Vec<String> = Vec::new();
        if let Some(r) = &recipe.register {
            let gate = PromotionGate {
                thresholds: r.require.clone(),
                lower_is_better: r.require.keys().filter(|m| crate::util::lower_is_better(m)).cloned().collect(),
                tolerance: r.tolerance,
            };
            let promotion = gate.promote(
                &store.registry(),
                &r.model,
                &r.alias,
                &package_dir,
                RegisterOptions {
                    run_id: Some(run.id().into()),
                    dataset_digests: vec![digest.clone()],
                    metrics: package.manifest.metrics.clone(),
                    description: r.description.clone(),
                    ..Default::default()
                },
            )?;
            match promotion.version {
                Some(v) => registered = Some((v.version, promotion.replaced)),
                None => refused = promotion.decision.reasons,
            }
        }
        Ok((trained, evaluation, registered, refused))
    })();
    let (trained, evaluation, registered, refused) = match outcome {
        Ok(o) => o,
        Err(e) => {
            if let Err(fail) = run.fail(&format!("{e:#}")) {
                eprintln!("could not record the failure in the run: {fail}");
            }
            return Err(e);
        }
    };
    let run_id = run.id().to_string();
    run.finish()?;
    if json {
        let test = match &evaluation {
            Evaluation::Classes(e) => json!({"accuracy": e.classification.accuracy,
                "macro_f1": e.classification.macro_f1, "log_loss": e.log_loss, "ece": e.ece}),
            Evaluation::Numbers(r) => json!({"rmse": crate::util::finite_json(r.rmse),
                "mae": crate::util::finite_json(r.mae), "r2": crate::util::finite_json(r.r2), "rows": r.rows}),
        };
        say!(
            "{}",
            json!({"run_id": run_id, "experiment": recipe.experiment, "task": task_name, "device": trained.device(),
                "best_epoch": trained.best_epoch(), "epochs": trained.history().len(), "test": test,
                "quarantined_rows": quarantined.as_ref().map(|q| q.report.bad_rows.len()),
                "registered": registered.map(|(v, replaced)| json!({"model": recipe.register.as_ref().map(|r| &r.model),
                    "version": v, "replaced": replaced})),
                "refused": refused})
        );
    } else {
        say!("trained on {}; kept the weights of epoch {}", trained.device(), trained.best_epoch());
        match &evaluation {
            Evaluation::Classes(e) => say!(
                "test: accuracy {:.4}, macro F1 {:.4}, log loss {:.4}, ECE {:.4}",
                e.classification.accuracy,
                e.classification.macro_f1,
                e.log_loss,
                e.ece
            ),
            Evaluation::Numbers(r) => {
                say!("test ({} rows, {} units): RMSE {:.4}, MAE {:.4}, R² {:.4}", r.rows, d.label, r.rmse, r.mae, r.r2)
            }
        }
        if let (Some(r), Some((v, replaced))) = (&recipe.register, registered) {
            let from = replaced.map(|p| format!(" (was v{p})")).unwrap_or_default();
            say!("registered {} v{v} as {}{from}", r.model, r.alias);
        }
        if let Some(r) = &recipe.register
            && !refused.is_empty()
        {
            say!("{} not registered: {}", r.model, refused.join("; "));
        }
    }
    Ok(if refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_REFUSED) })
}

/// A test evaluation, by task.
enum Evaluation {
    Classes(Box<EvalReport>),
    Numbers(RegressionReport),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_in_order_env_then_set() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "experiment = \"e\"\n[train]\nepochs = 10\nlearning_rate = 0.1\n").unwrap_or_default();
        let env = [
            ("KILN_TRAIN__TRAIN__EPOCHS".to_string(), "3".to_string()),
            ("KILN_TRAIN__MODEL__HIDDEN".to_string(), "[8, 4]".to_string()),
            ("KILN_TRAIN__RUN_NAME".to_string(), "bare text".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let t = resolve(&path, env, &["train.learning_rate=0.5".into(), "train.epochs=7".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t["train"]["epochs"].as_integer(), Some(7));
        assert_eq!(t["train"]["learning_rate"].as_float(), Some(0.5));
        assert_eq!(t["model"]["hidden"].as_array().map(Vec::len), Some(2));
        assert_eq!(t["run_name"].as_str(), Some("bare text"));
        let err = resolve(&path, [], &["experiment.x=1".into()]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("experiment is a string, not a table"), "{err}");
    }

    #[test]
    fn an_override_that_breaks_a_valid_config_is_named() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/configs/penguins.toml");
        let env = [("KILN_TRAIN__TRAIN__EPOCHS".to_string(), "many".to_string())];
        let err = resolve(&path, env, &[]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("environment variable KILN_TRAIN__TRAIN__EPOCHS (applied to "), "{err}");
        let err = resolve(&path, [], &["train.epochs=-1".into()]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("--set \"train.epochs=-1\" (applied to "), "{err}");
        assert!(resolve(&path, [], &["train.epochs=2".into()]).is_ok());
    }
}
