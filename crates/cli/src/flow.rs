//! `kiln flow`: cached pipelines of shell stages from a TOML file, on Slurm or locally.
//!
//! ```toml
//! name = "penguins"
//!
//! [[stage]]
//! name = "split"
//! command = "kiln data split data/penguins.csv --label species --out splits"
//! inputs = ["data/penguins.csv"]
//! outputs = ["splits"]
//!
//! [[stage]]
//! name = "train"
//! command = ["kiln", "train", "--config", "penguins.toml"]
//! after = ["split"]
//! cpus = 2
//! time = "30m"
//! ```
//!
//! A stage is skipped while its command, params, inputs (by content) and the stages it runs
//! after are as at its last success and its outputs still hold what it wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use kiln_hpc::{JobSpec, Pipeline, Stage, StageOutcome};
use serde::Deserialize;

use crate::util::parse_duration;

/// The exit status of `kiln flow run` when a stage failed (and of `kiln flow status` when a
/// stage would run).
pub const EXIT_STAGE: u8 = 4;

/// The `kiln flow` subcommands.
#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Run a flow: every stage whose inputs changed since its last success, in dependency
    /// order (on Slurm, all submitted at once, chained with afterok). Exits 4 if a stage fails.
    ///
    /// Example: kiln flow run retrain.flow.toml --backend local
    Run {
        /// The flow file (TOML).
        file: PathBuf,
        /// Where stages run: `slurm`, `local` or `auto`.
        #[arg(long, default_value = "auto", value_parser = ["slurm", "local", "auto"])]
        backend: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Which stages are cached and which would run, and why. Exits 4 if any would run.
    ///
    /// Example: kiln flow status retrain.flow.toml
    Status {
        /// The flow file (TOML).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowFile {
    /// The flow's name (its default state directory).
    name: String,
    /// Where stage records go, relative to the file (default `.kiln-flow/<name>`).
    #[serde(default)]
    state_dir: Option<PathBuf>,
    /// The stages, in any order (`after` orders them).
    #[serde(rename = "stage")]
    stages: Vec<StageFile>,
}

/// One `[[stage]]` of a flow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFile {
    /// The stage's name, unique in the flow.
    name: String,
    /// A shell line (run with `sh -c`) or an argv array.
    command: toml::Value,
    /// Files or directories the stage reads, relative to the flow file; their content is part
    /// of the cache key.
    #[serde(default)]
    inputs: Vec<PathBuf>,
    /// Files or directories the stage writes; the stage runs again if they change or vanish.
    #[serde(default)]
    outputs: Vec<PathBuf>,
    /// Stages this one runs after (and whose results are part of its cache key).
    #[serde(default)]
    after: Vec<String>,
    /// Values that are part of the cache key without being files.
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    /// A version string for the code the command runs (a change reruns the stage).
    #[serde(default)]
    code_version: Option<String>,
    /// How often a failed stage is tried again (5 s apart).
    #[serde(default)]
    retries: u32,
    /// CPUs per task.
    #[serde(default)]
    cpus: Option<u32>,
    /// Memory, as Slurm writes it (`4G`, `500M`).
    #[serde(default)]
    mem: Option<String>,
    /// GPUs.
    #[serde(default)]
    gpus: Option<u32>,
    /// The time limit (`30m`, `2h`, `1-00:00:00`).
    #[serde(default)]
    time: Option<String>,
    /// The Slurm partition.
    #[serde(default)]
    partition: Option<String>,
    /// The Slurm account.
    #[serde(default)]
    account: Option<String>,
    /// Environment variables for the command.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Shell lines run before the command (`module load cuda`).
    #[serde(default)]
    setup: Vec<String>,
}

/// A stage's command as an argv: a string runs with `sh -c`.
fn argv(command: &toml::Value) -> std::result::Result<Vec<String>, String> {
    const EXPECTED: &str = "expected a shell line (a string) or an argv (an array of strings)";
    match command {
        toml::Value::String(line) => Ok(vec!["sh".to_string(), "-c".to_string(), line.clone()]),
        toml::Value::Array(items) => {
            let argv = items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!("command[{i}] is {}; {EXPECTED}", a(other.type_str()))),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if argv.is_empty() {
                return Err("the command is empty".to_string());
            }
            Ok(argv)
        }
        other => Err(format!("command is {}; {EXPECTED}", a(other.type_str()))),
    }
}

/// A TOML type name with its article ("an integer", "a boolean").
fn a(kind: &str) -> String {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { format!("an {kind}") } else { format!("a {kind}") }
}

/// The flow in `file` and its state directory.
fn load(file: &Path) -> Result<(Pipeline, PathBuf)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading the flow {}", file.display()))?;
    let flow: FlowFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
    let base = std::path::absolute(file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    let state_dir = base.join(flow.state_dir.clone().unwrap_or_else(|| Path::new(".kiln-flow").join(&flow.name)));
    let names: Vec<&str> = flow.stages.iter().map(|s| s.name.as_str()).collect();
    let mut pipeline = Pipeline::new(&flow.name, &state_dir);
    for s in &flow.stages {
        let at = |what: &str| format!("{}: stage {:?}: {what}", file.display(), s.name);
        if let Some(missing) = s.after.iter().find(|a| !names.contains(&a.as_str())) {
            bail!(at(&format!("runs after {missing:?}, which is not a stage of this flow")));
        }
        let command = argv(&s.command).map_err(|e| anyhow::anyhow!(at(&e)))?;
        let mut spec = JobSpec::builder(&s.name, command).workdir(&base);
        if let Some(c) = s.cpus {
            spec = spec.cpus(c);
        }
        if let Some(g) = s.gpus {
            spec = spec.gpus(g);
        }
        if let Some(m) = &s.mem {
            spec = spec.mem_mb(crate::slurm::parse_mem(m).with_context(|| at("mem"))?);
        }
        if let Some(t) = &s.time {
            spec = spec.time_limit(parse_duration(t).with_context(|| at("time"))?);
        }
        if let Some(p) = &s.partition {
            spec = spec.partition(p);
        }
        if let Some(a) = &s.account {
            spec = spec.account(a);
        }
        for (k, v) in &s.env {
            spec = spec.env(k, v);
        }
        for line in &s.setup {
            spec = spec.setup(line);
        }
        spec = spec.stdout(state_dir.join("logs").join(format!("{}-%j.out", s.name)).display().to_string());
        let mut stage = Stage::new(spec.build().with_context(|| at("invalid job"))?);
        for i in &s.inputs {
            stage = stage.input(base.join(i));
        }
        for o in &s.outputs {
            stage = stage.output(base.join(o));
        }
        for a in &s.after {
            stage = stage.after(a);
        }
        for (k, v) in &s.params {
            stage = stage.param(k, v);
        }
        if let Some(v) = &s.code_version {
            stage = stage.code_version(v);
        }
        if s.retries > 0 {
            stage = stage.retries(s.retries, std::time::Duration::from_secs(5));
        }
        pipeline = pipeline.stage(stage);
    }
    Ok((pipeline, state_dir))
}

/// Runs one `kiln flow` subcommand.
pub fn run(command: FlowCommand) -> Result<ExitCode> {
    match command {
        FlowCommand::Run { file, backend, json } => {
            let (pipeline, state_dir) = load(&file)?;
            let backend = crate::slurm::backend(&backend, &state_dir.join("logs"))?;
            let report = pipeline.run(backend.as_ref())?;
            if json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                say!("{}", report.to_string().trim_end());
            }
            Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_STAGE) })
        }
        FlowCommand::Status { file, json } => {
            let report = load(&file)?.0.status()?;
            if json {
                say!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                say!("{}", report.to_string().trim_end());
            }
            let stale = report.count(|o| !matches!(o, StageOutcome::Cached));
            Ok(if stale == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_STAGE) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::argv;

    #[test]
    fn a_command_is_a_shell_line_or_an_argv_of_strings() {
        let shell = argv(&toml::Value::String("echo hi".into()));
        assert_eq!(shell, Ok(vec!["sh".to_string(), "-c".to_string(), "echo hi".to_string()]));
        let list: toml::Value = toml::from_str::<toml::Table>("c = [\"kiln\", \"train\"]").unwrap()["c"].clone();
        assert_eq!(argv(&list), Ok(vec!["kiln".to_string(), "train".to_string()]));
        let mixed: toml::Value = toml::from_str::<toml::Table>("c = [\"kiln\", 3]").unwrap()["c"].clone();
        assert_eq!(
            argv(&mixed).unwrap_err(),
            "command[1] is an integer; expected a shell line (a string) or an argv (an array of strings)"
        );
        assert_eq!(argv(&toml::Value::Array(Vec::new())).unwrap_err(), "the command is empty");
        assert!(argv(&toml::Value::Boolean(true)).unwrap_err().starts_with("command is a boolean;"));
    }
}
