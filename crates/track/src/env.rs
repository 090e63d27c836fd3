//! What a run ran on, captured when it starts.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The environment of a run: enough to find the code and the machine again.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Environment {
    /// `git rev-parse HEAD` of the working directory's repository, if it is one.
    pub git_commit: Option<String>,
    /// Whether that repository had uncommitted changes to tracked files.
    pub git_dirty: Option<bool>,
    /// The compiler that built this program (`rustc --version`).
    pub rustc_version: String,
    /// The version of kiln-track.
    pub kiln_version: String,
    /// The host name.
    pub hostname: String,
    /// Logical CPUs available to this process.
    pub cpu_count: usize,
    /// Operating system and architecture, e.g. `linux-x86_64`.
    pub platform: String,
    /// The user name (`USER`).
    pub user: Option<String>,
    /// The command line of the process.
    pub command: Vec<String>,
    /// The working directory.
    pub working_dir: Option<String>,
    /// Scheduler and accelerator variables (`SLURM_*`, `CUDA_VISIBLE_DEVICES`, ...).
    pub variables: BTreeMap<String, String>,
}

const VARIABLE_PREFIXES: [&str; 4] = ["SLURM_JOB", "SLURM_ARRAY", "SLURM_CLUSTER", "SLURM_NODELIST"];
const VARIABLES: [&str; 4] = ["CUDA_VISIBLE_DEVICES", "SLURM_PROCID", "SLURM_NTASKS", "OMP_NUM_THREADS"];

impl Environment {
    /// Captures the environment of this process. Never fails: what cannot be found is `None`.
    pub fn capture() -> Self {
        let cwd = std::env::current_dir().ok();
        let (git_commit, git_dirty) = match cwd.as_deref() {
            Some(dir) => git_state(dir),
            None => (None, None),
        };
        let variables = std::env::vars()
            .filter(|(k, _)| VARIABLES.contains(&k.as_str()) || VARIABLE_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();
        Self {
            git_commit,
            git_dirty,
            rustc_version: env!("KILN_RUSTC_VERSION").to_string(),
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            cpu_count: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            user: std::env::var("USER").ok(),
            command: std::env::args().collect(),
            working_dir: cwd.map(|d| d.display().to_string()),
            variables,
        }
    }
}

fn git_state(dir: &Path) -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]).filter(|c| !c.is_empty());
    let dirty =
        commit.as_ref().and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"])).map(|s| !s.is_empty());
    (commit, dirty)
}
