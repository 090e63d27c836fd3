//! Against a real Slurm (`scripts/slurm-local.sh up`). Each test skips with a printed reason
//! when no controller answers, and fails instead when `KILN_REQUIRE_SLURM=1` (as in CI).

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_hpc::{Backend, Dependency, JobSpec, JobState, SlurmBackend, SlurmConfig, StageOutcome};

use crate::{TempDir, write_script};

fn cluster() -> Option<SlurmBackend> {
    // One probe per test binary, without retries: a controller that is down takes `scontrol`
    // about 9 s to report, and the backend's five retries of that would be over a minute per
    // test. The tests' own backends keep the retries.
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        SlurmBackend::connect(SlurmConfig { retries: 0, ..SlurmConfig::default() }).map(drop).map_err(|e| e.to_string())
    });
    let config = SlurmConfig {
        poll_interval: Duration::from_millis(500),
        max_poll_interval: Duration::from_secs(2),
        ..SlurmConfig::default()
    };
    match probe.clone().and_then(|()| SlurmBackend::connect(config).map_err(|e| e.to_string())) {
        Ok(b) => Some(b),
        Err(e) if std::env::var("KILN_REQUIRE_SLURM").as_deref() == Ok("1") => {
            panic!("KILN_REQUIRE_SLURM=1 but no Slurm controller answers: {e} (run scripts/slurm-local.sh up)")
        }
        Err(e) => {
            eprintln!(
                "skipping: no Slurm controller answers ({e}); run scripts/slurm-local.sh up, or set KILN_REQUIRE_SLURM=1 to fail"
            );
            None
        }
    }
}

/// A directory slurmd's jobs can write to (the node is this machine).
fn shared_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("slurm-{tag}"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const LIMIT: Option<Duration> = Some(Duration::from_secs(240));

#[test]
fn single_job_completes_with_its_log() {
    let Some(slurm) = cluster() else { return };
    let dir = shared_dir("single");
    let spec = JobSpec::builder("kiln-single", ["bash", "-c", "echo hello from $SLURM_JOB_ID; echo oops >&2"])
        .stdout(format!("{}/%x-%j.out", dir.path().display()))
        .stderr(format!("{}/%x-%j.err", dir.path().display()))
        .build()
        .unwrap();
    let sub = slurm.submit(&spec).unwrap();
    let r = slurm.wait(&sub, LIMIT).unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].success(), "{}", r[0]);
    assert_eq!(r[0].exit_code, Some(0));
    let out = r[0].stdout.as_ref().unwrap();
    assert_eq!(out, &dir.path().join(format!("kiln-single-{}.out", sub.parts[0].job)));
    assert_eq!(read(out).trim(), format!("hello from {}", sub.parts[0].job));
    assert_eq!(read(r[0].stderr.as_ref().unwrap()).trim(), "oops");
    let stats = slurm.poll_stats();
    assert!(stats.squeue <= stats.ticks + 1, "one squeue per tick: {stats:?}");
}

#[test]
fn failing_job_reports_its_exit_code() {
    let Some(slurm) = cluster() else { return };
    let spec = JobSpec::builder("kiln-exit3", ["bash", "-c", "exit 3"]).stdout("/dev/null").build().unwrap();
    let sub = slurm.submit(&spec).unwrap();
    let r = slurm.wait(&sub, LIMIT).unwrap();
    assert_eq!(r[0].state, JobState::Failed, "{}", r[0]);
    assert_eq!(r[0].exit_code, Some(3));
    assert_eq!(r[0].reason.as_deref(), Some("NonZeroExitCode"));
}

#[test]
fn array_throttle_holds_at_two() {
    let Some(slurm) = cluster() else { return };
    let dir = shared_dir("throttle");
    let log = dir.path().join("events");
    let body = format!("echo start $(date +%s%N) >> {l}; sleep 2; echo end $(date +%s%N) >> {l}", l = log.display());
    let spec = JobSpec::builder("kiln-throttle", ["bash", "-c", &body])
        .array(1, 6)
        .throttle(2)
        .stdout(format!("{}/%x-%A_%a.out", dir.path().display()))
        .build()
        .unwrap();
    let sub = slurm.submit(&spec).unwrap();
    let mut max_running = 0;
    let started = Instant::now();
    loop {
        let now = slurm.status(&sub).unwrap();
        max_running = max_running.max(now.iter().filter(|r| r.state == JobState::Running).count());
        if now.iter().all(|r| r.state.is_terminal()) || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = slurm.wait(&sub, LIMIT).unwrap();
    assert_eq!(r.len(), 6);
    assert!(r.iter().all(|t| t.success()), "{r:?}");
    assert_eq!(r.iter().map(|t| t.task.unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert!((1..=2).contains(&max_running), "observed {max_running} running");
    assert_eq!(crate::local_max_overlap(&log), 2, "overlap measured from the tasks' own timestamps");
    assert_eq!(r[2].stdout.as_ref().unwrap(), &dir.path().join(format!("kiln-throttle-{}_3.out", sub.parts[0].job)));
}

#[test]
fn afterok_chain_runs_in_order_and_a_failed_parent_cancels_the_child() {
    let Some(slurm) = cluster() else { return };
    let dir = shared_dir("chain");
    let order = dir.path().join("order");
    let step = |name: &str, code: i32, deps: Vec<Dependency>| {
        let mut b = JobSpec::builder(
            name,
            ["bash", "-c", &format!("sleep 1; echo {name} >> {}; exit {code}", order.display())],
        )
        .stdout("/dev/null");
        for d in deps {
            b = b.dependency(d);
        }
        b.build().unwrap()
    };
    let a = slurm.submit(&step("kiln-a", 0, vec![])).unwrap();
    let b = slurm.submit(&step("kiln-b", 0, vec![a.after_ok()])).unwrap();
    let c = slurm.submit(&step("kiln-c", 0, vec![b.after_ok()])).unwrap();
    let bad = slurm.submit(&step("kiln-bad", 5, vec![])).unwrap();
    let orphan = slurm.submit(&step("kiln-orphan", 0, vec![bad.after_ok()])).unwrap();
    assert!(slurm.wait(&c, LIMIT).unwrap()[0].success());
    let o = slurm.wait(&orphan, LIMIT).unwrap();
    assert!(matches!(o[0].state, JobState::Cancelled { .. }), "{}", o[0]);
    assert_eq!(o[0].reason.as_deref(), Some("DependencyNeverSatisfied"));
    let lines: Vec<String> = read(&order).lines().filter(|l| *l != "kiln-bad").map(str::to_string).collect();
    assert_eq!(lines, ["kiln-a", "kiln-b", "kiln-c"]);
}

#[test]
fn scancel_cancels_a_running_job() {
    let Some(slurm) = cluster() else { return };
    let spec = JobSpec::builder("kiln-cancel", ["sleep", "300"]).stdout("/dev/null").build().unwrap();
    let sub = slurm.submit(&spec).unwrap();
    let started = Instant::now();
    while slurm.status(&sub).unwrap()[0].state != JobState::Running {
        assert!(started.elapsed() < Duration::from_secs(60), "never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    slurm.cancel(&sub).unwrap();
    let r = slurm.wait(&sub, LIMIT).unwrap();
    assert!(matches!(r[0].state, JobState::Cancelled { .. }), "{}", r[0]);
    assert_eq!(r[0].signal, Some(15));
}

#[test]
fn time_limit_kills_the_job() {
    let Some(slurm) = cluster() else { return };
    let spec = JobSpec::builder("kiln-timeout", ["sleep", "600"])
        .time_limit(Duration::from_secs(60))
        .stdout("/dev/null")
        .build()
        .unwrap();
    let sub = slurm.submit(&spec).unwrap();
    let r = slurm.wait(&sub, LIMIT).unwrap();
    assert_eq!(r[0].state, JobState::Timeout, "{}", r[0]);
    assert!(r[0].elapsed.unwrap() >= Duration::from_secs(60), "{:?}", r[0].elapsed);
}

/// A kiln-style worker: on SIGUSR2 it checkpoints and exits 75; on its second start it
/// resumes from the checkpoint and finishes. The preemption warning is sent with
/// `scancel --batch --signal=USR2`, as a preempting scheduler would.
#[test]
fn usr2_checkpoint_requeue_and_finish_on_the_second_start() {
    let Some(slurm) = cluster() else { return };
    let dir = shared_dir("requeue");
    let worker = dir.path().join("worker.sh");
    let ckpt = dir.path().join("ckpt");
    write_script(
        &worker,
        &format!(
            "#!/bin/bash\necho \"start restart=${{SLURM_RESTART_COUNT:-0}}\"\n\
             if [ -e {c} ]; then echo \"resumed from $(cat {c})\"; echo done; exit 0; fi\n\
             trap 'echo step-42 > {c}; echo checkpointed; exit 75' USR2\n\
             echo running > {r}\nwhile true; do sleep 0.1; done\n",
            c = ckpt.display(),
            r = dir.path().join("running").display()
        ),
    );
    let spec = JobSpec::builder("kiln-requeue", [worker.to_str().unwrap()])
        .time_limit(Duration::from_secs(600))
        .signal_before_end(60)
        .requeue_limit(2)
        .stdout(format!("{}/%x-%j.out", dir.path().display()))
        .build()
        .unwrap();
    let sub = slurm.submit(&spec).unwrap();
    let started = Instant::now();
    while !dir.path().join("running").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the worker never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    slurm.signal(&sub, "USR2").unwrap();
    let r = slurm.wait(&sub, LIMIT).unwrap();
    assert!(r[0].success(), "{}", r[0]);
    assert_eq!(r[0].restarts, 1);
    let log = read(r[0].stdout.as_ref().unwrap());
    for want in [
        "start restart=0",
        "SIGUSR2 received (preemption)",
        "checkpointed",
        "exited with status 75 after preemption; requeueing",
        "start restart=1",
        "resumed from step-42",
        "done",
    ] {
        assert!(log.contains(want), "missing {want:?} in\n{log}");
    }
}

#[test]
fn pipeline_runs_as_chained_jobs_then_is_fully_cached() {
    let Some(slurm) = cluster() else { return };
    let dir = shared_dir("pipeline");
    let d = dir.path();
    std::fs::write(d.join("raw.csv"), "x,y\n5,6\n").unwrap();
    let first = crate::pipeline::three_stages(d, "0.5").run(&slurm).unwrap();
    assert!(first.success(), "{first}");
    assert_eq!(first.count(|o| *o == StageOutcome::Ran), 3, "{first}");
    assert!(first.stages.iter().all(|s| s.records[0].id.job > 0));
    let second = crate::pipeline::three_stages(d, "0.5").run(&slurm).unwrap();
    assert_eq!(second.count(|o| *o == StageOutcome::Cached), 3, "{second}");
    assert_eq!(read(&d.join("runs")).lines().count(), 3);
    assert_eq!(read(&d.join("model.txt")), "X,Y\n5,6\nlr=0.5\n");
}

/// The command-count benchmark (`scripts/bench-slurm-commands.sh`; docs/benchmarks.md): track a
/// large array to completion with every Slurm tool wrapped to log its calls, and count them.
#[test]
#[ignore = "a benchmark of a few minutes: run by scripts/bench-slurm-commands.sh"]
fn command_count_while_tracking_a_large_array() {
    let Some(_) = cluster() else { return };
    let tasks: u32 = std::env::var("KILN_BENCH_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dir = shared_dir("count");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.path().join("calls");
    let path = std::env::var("PATH").unwrap_or_default();
    for tool in ["sbatch", "squeue", "sacct", "scontrol", "scancel"] {
        let real = std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file());
        let Some(real) = real else { continue };
        write_script(
            &bin.join(tool),
            &format!("#!/bin/bash\necho {tool} >> {}\nexec {} \"$@\"\n", calls.display(), real.display()),
        );
    }
    let config = SlurmConfig {
        bin_dir: Some(bin),
        poll_interval: Duration::from_secs(2),
        max_poll_interval: Duration::from_secs(10),
        ..SlurmConfig::default()
    };
    let slurm = SlurmBackend::connect(config).unwrap();
    let spec = JobSpec::builder("kiln-count", ["true"]).array(0, tasks - 1).stdout("/dev/null").build().unwrap();
    let started = Instant::now();
    let sub = slurm.submit(&spec).unwrap();
    // Many waiters, as many threads of a sweep driver would be: they share the one poller.
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let (slurm, sub) = (slurm.clone(), sub.clone());
            std::thread::spawn(move || slurm.wait(&sub, Some(Duration::from_secs(1800))).unwrap())
        })
        .collect();
    let records: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    let elapsed = started.elapsed();
    assert!(records.iter().all(|r| r.len() == tasks as usize && r.iter().all(|t| t.success())));
    let log = read(&calls);
    let count = |tool: &str| log.lines().filter(|l| *l == tool).count();
    let stats = slurm.poll_stats();
    println!(
        "tracked {tasks} array tasks with 8 waiters in {:.1}s: {} poll ticks; commands on PATH: sbatch {}, squeue {}, sacct {}, scontrol {}, scancel {} (poller's own count: {stats:?})",
        elapsed.as_secs_f64(),
        stats.ticks,
        count("sbatch"),
        count("squeue"),
        count("sacct"),
        count("scontrol"),
        count("scancel"),
    );
    assert_eq!(count("squeue") as u64, stats.ticks, "one squeue per tick");
    assert_eq!(count("sbatch"), 1);
}
