//! What a run ran on, captured when it starts: no network, a handful of local processes run
//! in parallel (git, nvidia-smi), a few milliseconds in all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The environment of a run: enough to find the code and the machine again.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Environment {
    /// `git rev-parse HEAD` of the working directory's repository, if it is one.
    pub git_commit: Option<String>,
    /// The checked-out branch (`None` when detached or not a repository).
    pub git_branch: Option<String>,
    /// Whether tracked files had uncommitted changes (the diff is stored as the run's
    /// `git.diff` artifact).
    pub git_dirty: Option<bool>,
    /// The URL of the `origin` remote.
    pub git_remote: Option<String>,
    /// The compiler that built this program (`rustc --version`).
    pub rustc_version: String,
    /// The cargo that built it (`cargo --version`).
    pub cargo_version: String,
    /// BLAKE3 of the nearest `Cargo.lock` above the working directory: the exact dependency set.
    pub cargo_lock_blake3: Option<String>,
    /// The version of the kiln crates.
    pub kiln_version: String,
    /// Operating system and architecture, e.g. `linux-x86_64`.
    pub platform: String,
    /// The host name.
    pub hostname: String,
    /// Logical CPUs available to this process.
    pub cpu_count: usize,
    /// Physical memory of the host in bytes (Linux: `MemTotal`).
    pub memory_bytes: Option<u64>,
    /// GPUs reported by `nvidia-smi`, when it exists.
    pub gpus: Vec<Gpu>,
    /// The user name (`USER`).
    pub user: Option<String>,
    /// The command line of the process.
    pub command: Vec<String>,
    /// The working directory.
    pub working_dir: Option<String>,
    /// Every `SLURM_*` variable, and accelerator and threading variables
    /// (`CUDA_VISIBLE_DEVICES`, `OMP_NUM_THREADS`, ...).
    pub variables: BTreeMap<String, String>,
    /// How long the capture took, in milliseconds.
    pub capture_ms: f64,
}

/// One GPU, as `nvidia-smi` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Gpu {
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Driver version.
    pub driver_version: String,
    /// The highest CUDA version the driver supports.
    pub cuda_version: Option<String>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
}

const VARIABLES: [&str; 8] = [
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "KILN_DEVICE",
    "KILN_STORE",
    "HOSTNAME",
    "PBS_JOBID",
    "LSB_JOBID",
];

impl Environment {
    /// Captures the environment of this process, returning it and the uncommitted diff of
    /// tracked files (empty when clean). Never fails: what cannot be found is `None`.
    pub fn capture() -> (Self, String) {
        let started = Instant::now();
        let cwd = std::env::current_dir().ok();
        let (git, gpus) = std::thread::scope(|s| {
            let git = s.spawn(|| cwd.as_deref().map(git_state).unwrap_or_default());
            let gpus = s.spawn(nvidia_gpus);
            (git.join().unwrap_or_default(), gpus.join().unwrap_or_default())
        });
        let variables =
            std::env::vars().filter(|(k, _)| k.starts_with("SLURM_") || VARIABLES.contains(&k.as_str())).collect();
        let cargo_lock_blake3 = cwd
            .as_deref()
            .and_then(find_up("Cargo.lock"))
            .and_then(|p| std::fs::read(p).ok().map(|bytes| blake3::hash(&bytes).to_hex().to_string()));
        let env = Self {
            git_commit: git.commit,
            git_branch: git.branch,
            git_dirty: git.dirty,
            git_remote: git.remote,
            rustc_version: env!("KILN_RUSTC_VERSION").to_string(),
            cargo_version: env!("KILN_CARGO_VERSION").to_string(),
            cargo_lock_blake3,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            hostname: hostname(),
            cpu_count: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_bytes: memory_bytes(),
            gpus,
            user: std::env::var("USER").ok(),
            command: std::env::args().collect(),
            working_dir: cwd.map(|d| d.display().to_string()),
            variables,
            capture_ms: 0.0,
        };
        let capture_ms = started.elapsed().as_secs_f64() * 1e3;
        (Self { capture_ms, ..env }, git.diff)
    }

    /// The Slurm job id (`SLURM_JOB_ID`), if the run was a Slurm job.
    pub fn slurm_job_id(&self) -> Option<&str> {
        self.variables.get("SLURM_JOB_ID").map(String::as_str)
    }
}

/// This host's name.
pub(crate) fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[derive(Default)]
struct GitState {
    commit: Option<String>,
    branch: Option<String>,
    dirty: Option<bool>,
    remote: Option<String>,
    diff: String,
}

fn run(program: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The largest diff kept as an artifact; bigger ones are cut and say so.
const MAX_DIFF_BYTES: usize = 8 << 20;

fn git_state(dir: &Path) -> GitState {
    let Some(commit) = run("git", &["rev-parse", "HEAD"], Some(dir)).map(|c| c.trim().to_string()) else {
        return GitState::default();
    };
    // The remaining queries are independent: run them side by side.
    let (branch, remote, mut diff) = std::thread::scope(|s| {
        let branch = s.spawn(|| run("git", &["symbolic-ref", "--short", "-q", "HEAD"], Some(dir)));
        let remote = s.spawn(|| run("git", &["remote", "get-url", "origin"], Some(dir)));
        let diff = s.spawn(|| run("git", &["diff", "HEAD", "--no-color", "--no-ext-diff"], Some(dir)));
        (branch.join().ok().flatten(), remote.join().ok().flatten(), diff.join().ok().flatten().unwrap_or_default())
    });
    if diff.len() > MAX_DIFF_BYTES {
        let mut cut = MAX_DIFF_BYTES;
        while !diff.is_char_boundary(cut) {
            cut -= 1;
        }
        diff.truncate(cut);
        diff.push_str("\n# kiln: diff truncated at 8 MiB\n");
    }
    GitState {
        commit: Some(commit).filter(|c| !c.is_empty()),
        branch: branch.map(|b| b.trim().to_string()).filter(|b| !b.is_empty()),
        dirty: Some(!diff.is_empty()),
        remote: remote.map(|r| r.trim().to_string()).filter(|r| !r.is_empty()),
        diff,
    }
}

fn find_up(name: &'static str) -> impl Fn(&Path) -> Option<PathBuf> {
    move |start| start.ancestors().map(|d| d.join(name)).find(|p| p.is_file())
}

fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

fn nvidia_gpus() -> Vec<Gpu> {
    if !on_path("nvidia-smi") {
        return Vec::new();
    }
    let query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"];
    let Some(table) = run("nvidia-smi", &query, None) else {
        return Vec::new();
    };
    // The CUDA version is only in the banner of the plain report.
    let cuda = run("nvidia-smi", &[], None).and_then(|banner| {
        let at = banner.find("CUDA Version:")?;
        banner[at + "CUDA Version:".len()..].split_whitespace().next().map(str::to_string)
    });
    parse_gpu_table(&table, cuda)
}

fn parse_gpu_table(table: &str, cuda: Option<String>) -> Vec<Gpu> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split(',').map(str::trim);
            Gpu {
                name: fields.next().unwrap_or_default().to_string(),
                driver_version: fields.next().unwrap_or_default().to_string(),
                memory_mib: fields.next().and_then(|m| m.parse().ok()),
                cuda_version: cuda.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_rows_are_parsed() {
        let gpus =
            parse_gpu_table("NVIDIA H100 80GB HBM3, 550.54.15, 81559\nTesla V100, 535.1, [N/A]\n", Some("12.4".into()));
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[0].driver_version, "550.54.15");
        assert_eq!(gpus[0].memory_mib, Some(81559));
        assert_eq!(gpus[1].memory_mib, None);
        assert_eq!(gpus[1].cuda_version.as_deref(), Some("12.4"));
    }
}
