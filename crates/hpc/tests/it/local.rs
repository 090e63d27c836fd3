//! The local executor: concurrency, arrays, throttle, dependencies, time limits, requeue.

use std::time::{Duration, Instant};

use kiln_hpc::{Backend, Dependency, Error, JobContext, JobSpec, JobState, LocalExecutor};

use crate::{TempDir, write_script};

#[test]
fn array_tasks_see_slurm_variables_and_output_is_captured() {
    let dir = TempDir::new("local-array");
    let exec = LocalExecutor::new(dir.path()).unwrap();
    let spec = JobSpec::builder(
        "echo",
        [
            "sh",
            "-c",
            "echo task=$SLURM_ARRAY_TASK_ID kiln=$KILN_ARRAY_TASK_ID count=$SLURM_ARRAY_TASK_COUNT name=$SLURM_JOB_NAME x=$X; exit $SLURM_ARRAY_TASK_ID",
        ],
    )
    .array(0, 2)
    .env("X", "y")
    .build()
    .unwrap();
    let records = exec.run(&spec).unwrap();
    assert_eq!(records.len(), 3);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.task, Some(i as u32));
        assert_eq!(r.exit_code, Some(i as i32));
        let want = if i == 0 { JobState::Completed } else { JobState::Failed };
        assert_eq!(r.state, want);
        let out = std::fs::read_to_string(r.stdout.as_ref().unwrap()).unwrap();
        assert_eq!(out.trim(), format!("task={i} kiln={i} count=3 name=echo x=y"));
    }
    assert!(records[0].success() && !records[1].success());
    let missing = JobSpec::builder("nope", ["/nonexistent/program"]).build().unwrap();
    let r = exec.run(&missing).unwrap();
    assert_eq!(r[0].state, JobState::Failed);
    assert!(r[0].reason.as_deref().unwrap_or("").contains("cannot start"), "{:?}", r[0]);
}

#[test]
fn throttle_and_concurrency_limit_hold() {
    let dir = TempDir::new("local-throttle");
    let log = dir.path().join("events");
    let body = format!("echo start $(date +%s%N) >> {l}; sleep 0.3; echo end $(date +%s%N) >> {l}", l = log.display());
    let exec = LocalExecutor::with_parallelism(dir.path(), 3).unwrap();
    let throttled = JobSpec::builder("t", ["sh", "-c", &body]).array(1, 6).throttle(2).build().unwrap();
    let records = exec.run(&throttled).unwrap();
    assert!(records.iter().all(|r| r.success()));
    assert_eq!(crate::local_max_overlap(&log), 2);
    std::fs::remove_file(&log).unwrap();
    let wide = JobSpec::builder("w", ["sh", "-c", &body]).array(1, 9).build().unwrap();
    exec.run(&wide).unwrap();
    assert_eq!(crate::local_max_overlap(&log), 3, "the executor's limit of 3");
}

#[test]
fn dependencies_chain_and_a_failed_dependency_cancels() {
    let dir = TempDir::new("local-deps");
    let exec = LocalExecutor::new(dir.path()).unwrap();
    let out = dir.path().join("order");
    let step = |name: &str, code: i32| {
        JobSpec::builder(name, ["sh", "-c", &format!("sleep 0.2; echo {name} >> {}; exit {code}", out.display())])
            .build()
            .unwrap()
    };
    let a = exec.submit(&step("a", 0)).unwrap();
    let mut b = step("b", 3);
    b.dependencies.push(a.after_ok());
    let b = exec.submit(&b).unwrap();
    let mut c = step("c", 0);
    c.dependencies.push(b.after_ok());
    let c = exec.submit(&c).unwrap();
    let mut d = step("d", 0);
    d.dependencies.push(Dependency::AfterNotOk(b.job_ids()));
    let d = exec.submit(&d).unwrap();
    let c = exec.wait(&c, Some(Duration::from_secs(30))).unwrap();
    assert_eq!(c[0].state, JobState::Cancelled { by: None });
    assert!(c[0].reason.as_deref().unwrap_or("").contains("DependencyNeverSatisfied"));
    assert!(exec.wait(&d, None).unwrap()[0].success());
    assert_eq!(exec.wait(&b, None).unwrap()[0].exit_code, Some(3));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\nb\nd\n");
    let mut unknown = step("e", 0);
    unknown.dependencies.push(Dependency::AfterOk(vec![999_999]));
    assert!(matches!(exec.submit(&unknown), Err(Error::InvalidSpec { .. })));
}

#[test]
fn cancel_and_wait_timeout() {
    let dir = TempDir::new("local-cancel");
    let exec = LocalExecutor::new(dir.path()).unwrap().kill_wait(Duration::from_millis(300));
    let spec = JobSpec::builder("sleepy", ["sleep", "30"]).build().unwrap();
    let sub = exec.submit(&spec).unwrap();
    let err = exec.wait(&sub, Some(Duration::from_millis(300))).unwrap_err();
    assert!(matches!(err, Error::Timeout { pending: 1, .. }), "{err}");
    assert!(err.to_string().contains("RUNNING"), "{err}");
    let t = Instant::now();
    exec.cancel(&sub).unwrap();
    let r = exec.wait(&sub, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(r[0].state, JobState::Cancelled { by: None });
    assert_eq!(r[0].signal, Some(15));
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// A worker that checkpoints on SIGUSR2 (exit 75), and on its second start finishes. The time
/// limit is Slurm's minimum, 60 s, with the signal asked for 59 s before it: the warning comes
/// after 1 s.
#[test]
fn time_limit_signal_checkpoint_and_requeue() {
    let dir = TempDir::new("local-requeue");
    let worker = dir.path().join("worker.sh");
    write_script(
        &worker,
        "#!/bin/bash\necho \"start restart=$SLURM_RESTART_COUNT left=$(( KILN_JOB_END_TIME - $(date +%s) ))\"\n\
         if [ \"$SLURM_RESTART_COUNT\" -ge 1 ]; then echo done; exit 0; fi\n\
         trap 'echo checkpoint; exit 75' USR2\nwhile true; do sleep 0.05; done\n",
    );
    let exec = LocalExecutor::new(dir.path()).unwrap();
    let spec = JobSpec::builder("resumable", [worker.to_str().unwrap()])
        .time_limit(Duration::from_secs(60))
        .signal_before_end(59)
        .requeue_limit(2)
        .build()
        .unwrap();
    let r = exec.run(&spec).unwrap();
    assert!(r[0].success(), "{}", r[0]);
    assert_eq!(r[0].restarts, 1);
    let log = std::fs::read_to_string(r[0].stdout.as_ref().unwrap()).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(lines[0].starts_with("start restart=0 left=") && lines[1] == "checkpoint", "{log}");
    assert!(lines[2].starts_with("start restart=1") && lines[3] == "done", "{log}");
}

#[test]
fn time_limit_kills_a_job_that_ignores_the_warning() {
    let dir = TempDir::new("local-timeout");
    let exec = LocalExecutor::new(dir.path()).unwrap().kill_wait(Duration::from_millis(200));
    // `trap '' TERM USR2` ignores both: only the SIGKILL after KillWait ends it. The limit is
    // the spec minimum, so the test takes about a minute.
    let spec = JobSpec::builder("stubborn", ["bash", "-c", "trap '' TERM USR2; while true; do sleep 0.05; done"])
        .time_limit(Duration::from_secs(60))
        .signal_before_end(30)
        .requeue_limit(1)
        .build()
        .unwrap();
    let r = exec.run(&spec).unwrap();
    assert_eq!(r[0].state, JobState::Timeout, "{}", r[0]);
    assert_eq!(r[0].signal, Some(9));
    assert_eq!(r[0].restarts, 0);
    assert!(r[0].elapsed.unwrap() >= Duration::from_secs(60));
}

#[test]
fn job_context_inside_a_local_array_task() {
    let dir = TempDir::new("local-context");
    let exec = LocalExecutor::new(dir.path()).unwrap();
    let spec = JobSpec::builder("ctx", ["env"]).array(4, 5).cpus(2).build().unwrap();
    let r = exec.run(&spec).unwrap();
    let env = std::fs::read_to_string(r[1].stdout.as_ref().unwrap()).unwrap();
    let ctx = JobContext::from_vars(env.lines().filter_map(|l| l.split_once('=')));
    assert_eq!(ctx.task_id, Some(5));
    assert_eq!((ctx.task_min, ctx.task_max, ctx.task_count), (Some(4), Some(5), Some(2)));
    assert_eq!(ctx.array_job_id, Some(r[1].id.job));
    assert_ne!(ctx.job_id, ctx.array_job_id, "each task has its own job id");
    assert_eq!((ctx.cpus_per_task, ctx.restart_count, ctx.proc_id), (Some(2), 0, Some(0)));
}

#[test]
fn one_log_file_for_both_streams_keeps_both() {
    let dir = TempDir::new("local-onelog");
    let exec = LocalExecutor::new(dir.path()).unwrap();
    let log = dir.path().join("logs/%x-%j.log");
    let spec = JobSpec::builder("both", ["sh", "-c", "echo out; echo err >&2; echo out2"])
        .stdout(log.to_str().unwrap())
        .build()
        .unwrap();
    let r = exec.run(&spec).unwrap();
    assert_eq!(r[0].stdout, r[0].stderr);
    let path = r[0].stdout.as_ref().unwrap();
    assert_eq!(path, &dir.path().join(format!("logs/both-{}.log", r[0].id.job)));
    assert_eq!(std::fs::read_to_string(path).unwrap(), "out\nerr\nout2\n");
}

#[test]
fn cancel_reaches_the_whole_process_group() {
    let dir = TempDir::new("local-group");
    let exec = LocalExecutor::new(dir.path()).unwrap().kill_wait(Duration::from_millis(300));
    let pidfile = dir.path().join("grandchild");
    // bash starts a grandchild and waits; the grandchild must die with the job.
    let body = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let sub = exec.submit(&JobSpec::builder("group", ["bash", "-c", &body]).build().unwrap()).unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(&pidfile).map_or(true, |s| s.trim().is_empty()) {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    exec.cancel(&sub).unwrap();
    exec.wait(&sub, Some(Duration::from_secs(10))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Gone, or a zombie waiting for its new parent to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next().unwrap_or('?'));
    assert!(state.is_none() || state == Some('Z'), "grandchild {pid} survived the cancel: {stat}");
}
