//! Batch scripts: golden files for the rendering, and the wrapper's signal handling run for
//! real under bash with stand-ins for `squeue` and `scontrol`.

use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_hpc::{Dependency, JobSpec};

use crate::{TempDir, write_script};

fn golden(name: &str, actual: &str) {
    let path = crate::crate_dir().join("tests/golden").join(name);
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with KILN_BLESS=1 to create it)", path.display()));
    assert_eq!(actual, expected, "{} differs; rerun with KILN_BLESS=1 after checking the change", path.display());
}

#[test]
fn plain_job_script() {
    let spec = JobSpec::builder("prep", ["kiln", "data", "prep", "--in", "raw data.csv"]).build().unwrap();
    golden("plain.sh", &spec.to_sbatch_script());
}

#[test]
fn full_job_script() {
    let spec = JobSpec::builder("train-1", ["kiln", "train", "--lr", "it's"])
        .partition("gpu")
        .account("lab42")
        .qos("high")
        .time_limit(Duration::from_secs(26 * 3600 + 61))
        .nodes(1)
        .ntasks(2)
        .cpus(4)
        .mem_mb(8000)
        .gpus(2)
        .gpu_type("a100")
        .constraint("ib&avx512")
        .array(0, 9)
        .throttle(2)
        .dependency(Dependency::AfterOk(vec![101, 102]))
        .dependency(Dependency::AfterAny(vec![103]))
        .dependency(Dependency::Singleton)
        .stdout("logs/%x-%A_%a.out")
        .stderr("logs/%x-%A_%a.err")
        .directive("--exclusive")
        .directive("--mail-type=END")
        .setup("module load cuda/12.4")
        .setup("source ~/venv/bin/activate")
        .workdir("/scratch/lab42/run")
        .env("KILN_STORE", "/scratch/store dir")
        .build()
        .unwrap();
    golden("full.sh", &spec.to_sbatch_script());
}

#[test]
fn wrapped_job_script() {
    let spec = JobSpec::builder("resumable", ["kiln-train", "--resume"])
        .time_limit(Duration::from_secs(3600))
        .signal_before_end(120)
        .requeue_limit(3)
        .array(0, 3)
        .build()
        .unwrap();
    golden("wrapped.sh", &spec.to_sbatch_script());
}

/// Runs a wrapped script under bash, outside Slurm: `squeue` prints `end_in` seconds from now as
/// the end time, `scontrol` logs its arguments and, as a requeue does, kills the script (the
/// exit code is then -1). The command is a shell script that checkpoints
/// on SIGUSR2 (exit 75) unless `SLURM_RESTART_COUNT` says it already did.
fn run_wrapper(end_in: i64, restarts: u32, requeue_limit: u32) -> (i32, String, String) {
    let dir = TempDir::new("wrapper");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_script(
        &bin.join("squeue"),
        &format!(
            "#!/bin/bash\necho \"squeue $*\" >> {d}/calls\ndate -d @$(( $(date +%s) + {end_in} )) +%Y-%m-%dT%H:%M:%S\n",
            d = dir.path().display()
        ),
    );
    // Like Slurm, a requeue ends the batch script at once.
    write_script(
        &bin.join("scontrol"),
        &format!("#!/bin/bash\necho \"scontrol $*\" >> {}/calls\nkill -KILL $PPID\n", dir.path().display()),
    );
    let worker = dir.path().join("worker.sh");
    write_script(
        &worker,
        "#!/bin/bash\ntrap 'echo checkpointed; exit 75' USR2\necho started\nfor i in $(seq 100); do sleep 0.1; done\necho finished\n",
    );
    let spec = JobSpec::builder("w", [worker.to_str().unwrap()])
        .time_limit(Duration::from_secs(3600))
        .signal_before_end(60)
        .requeue_limit(requeue_limit)
        .build()
        .unwrap();
    let script = dir.path().join("job.sh");
    std::fs::write(&script, spec.to_sbatch_script()).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let child = Command::new("bash")
        .arg(&script)
        .env("PATH", path)
        .env("SLURM_JOB_ID", "77")
        .env("SLURM_RESTART_COUNT", restarts.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let sent = Command::new("kill").args(["-s", "USR2", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap_or_default();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), log, calls)
}

#[test]
fn wrapper_forwards_the_signal_and_requeues_after_a_preemption() {
    let (code, log, calls) = run_wrapper(3000, 0, 2);
    assert_eq!(code, -1, "ended by the requeue: {log}");
    assert!(log.contains("started") && log.contains("checkpointed") && !log.contains("finished"), "{log}");
    assert!(log.contains("SIGUSR2 received (preemption)"), "{log}");
    assert!(calls.contains("squeue -h -j 77 -O EndTime"), "{calls}");
    assert!(calls.contains("scontrol requeue 77"), "{calls}");
    assert!(log.contains("restart 1 of 2"), "{log}");
}

#[test]
fn wrapper_tells_a_time_limit_warning_from_a_preemption() {
    let (code, log, calls) = run_wrapper(55, 1, 2);
    assert_eq!(code, -1, "ended by the requeue: {log}");
    assert!(log.contains("SIGUSR2 received (timeout)"), "{log}");
    assert!(calls.contains("scontrol requeue 77"), "{calls}");
    assert!(log.contains("restart 2 of 2"), "{log}");
}

#[test]
fn wrapper_stops_requeueing_at_the_limit() {
    let (code, log, calls) = run_wrapper(3000, 2, 2);
    assert_eq!(code, 75, "{log}");
    assert!(!calls.contains("scontrol requeue"), "{calls}");
    assert!(log.contains("not requeueing (restarted 2 times, limit 2)"), "{log}");
}
