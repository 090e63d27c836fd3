use std::io::{BufRead, Write};

use kiln_track::{ArtifactKind, DatasetInput, Error, RunStatus, Store};

#[test]
fn a_run_round_trips_params_metrics_inputs_environment_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let sweep = store.run_builder("exp").name("sweep").start().unwrap();
    let sweep_id = sweep.id().to_string();
    let mut run = store.run_builder("exp").name("first").tag("team", "vision").parent(&sweep_id).start().unwrap();
    #[derive(serde::Serialize)]
    struct Params {
        lr: f64,
        optimizer: Opt,
    }
    #[derive(serde::Serialize)]
    struct Opt {
        name: &'static str,
        betas: [f64; 2],
    }
    run.log_params(&Params { lr: 0.01, optimizer: Opt { name: "adam", betas: [0.9, 0.999] } }).unwrap();
    for step in 1..=3 {
        run.log_metric("loss", step, 1.0 / step as f64).unwrap();
    }
    run.log_metric("weird", 3, f64::NAN).unwrap();
    run.log_metric("weird", 4, f64::NEG_INFINITY).unwrap();
    run.log_input(DatasetInput {
        name: "digits".into(),
        digest: "abc123".into(),
        source: "data/digits.csv".into(),
        rows: Some(1797),
        context: Some("train".into()),
    })
    .unwrap();
    run.set_tag("stage", "done").unwrap();
    let id = run.id().to_string();
    assert_eq!(run.last_metrics()["loss"], 1.0 / 3.0);
    run.finish().unwrap();
    sweep.finish().unwrap();

    let rec = store.run(&id).unwrap();
    assert_eq!(rec.meta.name, "first");
    assert_eq!(rec.meta.parent_run_id.as_deref(), Some(sweep_id.as_str()));
    assert_eq!(rec.status(), RunStatus::Completed);
    assert_eq!(rec.state.attempt, 1);
    assert!(rec.state.end_ms.unwrap() >= rec.meta.start_ms);
    assert_eq!(rec.params["lr"], serde_json::json!(0.01));
    assert_eq!(rec.params["optimizer.name"], serde_json::json!("adam"));
    assert_eq!(rec.params["optimizer.betas"], serde_json::json!([0.9, 0.999]));
    assert_eq!(rec.tags["team"], "vision");
    assert_eq!(rec.tags["stage"], "done");
    assert_eq!(rec.inputs[0].rows, Some(1797));
    assert_eq!(rec.final_metrics["loss"], 1.0 / 3.0);
    assert_eq!(rec.final_metrics["weird"], f64::NEG_INFINITY);
    let points = store.metrics(&id).unwrap();
    assert_eq!(points.len(), 5);
    assert!(points[3].value.is_nan() && !points[3].is_finite(), "NaN is kept, not dropped");
    let env = rec.environment.unwrap();
    assert!(env.cpu_count >= 1 && !env.hostname.is_empty() && env.rustc_version.starts_with("rustc "));
    assert!(env.cargo_version.starts_with("cargo "), "{}", env.cargo_version);
    assert!(!env.command.is_empty());
    // The tests run inside the kiln repository: its commit and Cargo.lock are found.
    assert_eq!(env.git_commit.as_ref().map(String::len), Some(40));
    assert_eq!(env.cargo_lock_blake3.as_ref().map(String::len), Some(64));
    if env.git_dirty == Some(true) {
        assert!(rec.artifacts.contains_key("git.diff"), "a dirty tree's diff is kept");
    }
}

#[test]
fn relogging_a_param_with_another_value_is_refused_unless_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut run = store.start_run("exp").unwrap();
    run.log_param("lr", 0.1).unwrap();
    run.log_param("lr", 0.1).unwrap(); // the same value again is fine
    let err = run.log_param("lr", 0.2).unwrap_err();
    assert!(matches!(&err, Error::ParamConflict { key, .. } if key == "lr"), "{err}");
    assert!(err.to_string().contains("0.1") && err.to_string().contains("0.2"), "{err}");
    // A struct with one conflicting field logs nothing.
    #[derive(serde::Serialize)]
    struct P {
        lr: f64,
        batch: u32,
    }
    assert!(run.log_params(&P { lr: 0.3, batch: 64 }).is_err());
    assert!(!run.params().contains_key("batch"));
    run.overwrite_param("lr", 0.2).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    assert_eq!(store.run(&id).unwrap().params["lr"], serde_json::json!(0.2));
}

#[test]
fn a_dropped_run_is_recorded_as_failed_and_flushed_metrics_survive() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut run = store.start_run("exp").unwrap();
    run.log_metric("loss", 1, 0.5).unwrap();
    run.flush().unwrap();
    let id = run.id().to_string();
    drop(run);
    let rec = store.run(&id).unwrap();
    assert_eq!(rec.status(), RunStatus::Failed);
    assert!(rec.state.error.unwrap().contains("without finish"));
    assert_eq!(rec.final_metrics["loss"], 0.5);
}

#[test]
fn a_torn_segment_tail_is_ignored_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut run = store.start_run("exp").unwrap();
    run.log_metric("loss", 1, 0.5).unwrap();
    run.log_metric("loss", 2, 0.25).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let segment = dir.path().join("runs").join(&id).join("metrics").join("000000.seg");
    let whole = std::fs::read(&segment).unwrap();
    // A crash in the middle of a block write: half a block header, then garbage.
    std::fs::OpenOptions::new().append(true).open(&segment).unwrap().write_all(b"KBLK\x10\x00\x00\x00junk").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.metrics(&id).unwrap().len(), 2);
    // A block whose bytes were not all written: its checksum fails, it is ignored.
    std::fs::write(&segment, &whole[..whole.len() - 5]).unwrap();
    assert_eq!(store.metrics(&id).unwrap().len(), 0, "the one block (both points) was torn");
    // Not a segment at all: an error naming the file.
    std::fs::write(&segment, b"this is not a segment").unwrap();
    let err = store.metrics(&id).unwrap_err();
    assert!(err.to_string().contains("000000.seg"), "{err}");
}

#[test]
fn concurrent_runs_get_distinct_ids_and_are_listed_by_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                s.spawn(move || {
                    let mut run = store.start_run(if i % 2 == 0 { "even" } else { "odd" }).unwrap();
                    run.log_metric("task", 0, i as f64).unwrap();
                    let id = run.id().to_string();
                    run.finish().unwrap();
                    id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 8);
    assert_eq!(store.runs(Some("even")).unwrap().len(), 4);
    assert_eq!(store.runs(None).unwrap().len(), 8);
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for name in ["", "../escape", "a/b", ".hidden"] {
        assert!(matches!(store.start_run(name), Err(Error::InvalidName { .. })), "{name:?}");
    }
    assert!(matches!(store.run("nope"), Err(Error::NotFound(_))));
    assert!(matches!(store.run("../../etc"), Err(Error::InvalidName { .. })));
    let mut run = store.start_run("exp").unwrap();
    assert!(matches!(run.log_metric("", 0, 1.0), Err(Error::InvalidName { .. })));
    assert!(matches!(run.log_artifact_bytes("../x", b"x"), Err(Error::InvalidName { .. })));
    assert!(matches!(store.run_builder("exp").parent("nope").start(), Err(Error::NotFound(_))));
    run.finish().unwrap();
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("store.json"), r#"{"format_version": 99}"#).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("store format 99"), "{err}");
}

#[test]
fn artifacts_are_content_addressed_deduplicated_and_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let src = dir.path().join("model");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("weights.bin"), vec![7u8; 100_000]).unwrap();
    std::fs::write(src.join("sub/config.json"), "{}").unwrap();
    let mut ids = Vec::new();
    let mut digests = Vec::new();
    for _ in 0..2 {
        let mut run = store.start_run("exp").unwrap();
        let a = run.log_artifact("model", &src).unwrap();
        assert_eq!(a.kind, ArtifactKind::Directory);
        assert_eq!(a.files.len(), 2);
        assert_eq!(a.size, 100_002);
        run.log_artifact("plots/config.json", &src.join("sub/config.json")).unwrap();
        digests.push(a.digest);
        ids.push(run.id().to_string());
        run.finish().unwrap();
    }
    assert_eq!(digests[0], digests[1]);
    // Two runs × (two files + one) stored as two objects (the weights and the config).
    let mut objects = 0;
    for shard in std::fs::read_dir(dir.path().join("store/objects")).unwrap() {
        let shard = shard.unwrap().path();
        if shard.file_name().unwrap() != "tmp" {
            objects += std::fs::read_dir(shard)
                .unwrap()
                .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
                .count();
        }
    }
    let extra = store.run(&ids[0]).unwrap().artifacts.contains_key("git.diff") as usize;
    assert_eq!(objects, 2 + extra);
    let out = dir.path().join("restored");
    store.restore_artifact(&ids[1], "model", &out).unwrap();
    assert_eq!(std::fs::read(out.join("weights.bin")).unwrap(), vec![7u8; 100_000]);
    assert_eq!(std::fs::read_to_string(out.join("sub/config.json")).unwrap(), "{}");
    let single = dir.path().join("config-copy.json");
    store.restore_artifact(&ids[1], "plots/config.json", &single).unwrap();
    assert_eq!(std::fs::read_to_string(single).unwrap(), "{}");
    assert!(matches!(store.restore_artifact(&ids[1], "nope", &out), Err(Error::NotFound(_))));
}

#[test]
fn a_stopped_run_resumes_in_a_new_attempt_and_later_values_win() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut run = store.start_run("exp").unwrap();
    run.log_param("lr", 0.1).unwrap();
    for step in 0..10 {
        run.log_metric("loss", step, 10.0 - step as f64).unwrap();
    }
    let id = run.id().to_string();
    // A live run has one writer: resuming it from elsewhere is refused.
    assert!(matches!(store.resume_run(&id), Err(Error::RunBusy { .. })));
    run.kill("preempted").unwrap();
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Killed);

    let mut resumed = store.resume_run(&id).unwrap();
    assert_eq!(resumed.attempt(), 2);
    assert!(matches!(resumed.log_param("lr", 0.2), Err(Error::ParamConflict { .. })), "params survive resume");
    assert_eq!(resumed.last_metrics()["loss"], 1.0);
    // The checkpoint was at step 7: steps 8 and 9 run again, with other values.
    for step in 8..12 {
        resumed.log_metric("loss", step, 100.0 + step as f64).unwrap();
    }
    resumed.finish().unwrap();
    let rec = store.run(&id).unwrap();
    assert_eq!((rec.status(), rec.state.attempt), (RunStatus::Completed, 2));
    let points = store.metrics(&id).unwrap();
    let steps: Vec<u64> = points.iter().map(|p| p.step).collect();
    assert_eq!(steps, (0..12).collect::<Vec<_>>(), "one value per step");
    assert_eq!(points[8].value, 108.0, "the re-run step's value wins");
    assert_eq!(points[7].value, 3.0);
    assert_eq!(rec.final_metrics["loss"], 111.0);
    let segments = std::fs::read_dir(dir.path().join("runs").join(&id).join("metrics")).unwrap().count();
    assert_eq!(segments, 2, "each attempt writes its own segment");
}

#[test]
fn a_run_whose_process_died_reads_as_killed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let run = store.start_run("exp").unwrap();
    let id = run.id().to_string();
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Running);
    // Leak the run: the process stays alive, so the run stays `running`...
    std::mem::forget(run);
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Running);
    // ...until its heartbeat names a process that no longer exists.
    let beat = dir.path().join("runs").join(&id).join("heartbeat.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&beat).unwrap()).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    json["pid"] = dead.into();
    std::fs::write(&beat, json.to_string()).unwrap();
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Killed);
    // On another host, a heartbeat older than a minute means the same.
    json["host"] = "some-other-node".into();
    json["seen_ms"] = 0.into();
    std::fs::write(&beat, json.to_string()).unwrap();
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Killed);
}

/// Child half of the multi-process tests: logs `KILN_TEST_POINTS` points to a new run in
/// `KILN_TEST_STORE` (forever when 0, flushing every 10 and saying so), then finishes.
fn child_writer(store: &str) {
    let store = Store::open(store).unwrap();
    let points: u64 = std::env::var("KILN_TEST_POINTS").unwrap().parse().unwrap();
    let mut run = store.start_run("multi").unwrap();
    println!("run {}", run.id());
    let started = std::time::Instant::now();
    let mut step = 0u64;
    while (points == 0 && started.elapsed() < std::time::Duration::from_secs(30)) || step < points {
        run.log_metric("x", step, step as f64).unwrap();
        step += 1;
        if points == 0 && step.is_multiple_of(10) {
            run.flush().unwrap();
            println!("flushed {step}");
        }
    }
    run.finish().unwrap();
}

fn spawn_writer(test: &str, store: &std::path::Path, points: u64) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("KILN_TEST_STORE", store)
        .env("KILN_TEST_POINTS", points.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_writer_loses_nothing_it_flushed() {
    if let Ok(store) = std::env::var("KILN_TEST_STORE") {
        return child_writer(&store);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_writer("runs::a_killed_writer_loses_nothing_it_flushed", dir.path(), 0);
    let mut acknowledged = 0u64;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("flushed ") {
            acknowledged = n.parse().unwrap();
            if acknowledged >= 2000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert!(acknowledged >= 2000, "the child stopped early");

    let store = Store::open(dir.path()).unwrap();
    let runs = store.runs(Some("multi")).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state.status, RunStatus::Running, "a killed run cannot record its end");
    assert_eq!(runs[0].status(), RunStatus::Killed, "but its dead writer shows");
    let points = store.metrics(&runs[0].meta.run_id).unwrap();
    assert!(points.len() as u64 >= acknowledged, "{} points on disk, {acknowledged} acknowledged", points.len());
    for (i, p) in points.iter().enumerate() {
        assert_eq!((p.step, p.value), (i as u64, i as f64));
    }
    // The killed run resumes and completes.
    let id = runs[0].meta.run_id.clone();
    store.resume_run(&id).unwrap().finish().unwrap();
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Completed);
}

#[test]
fn thirty_two_processes_log_into_one_store_and_every_point_is_kept() {
    if let Ok(store) = std::env::var("KILN_TEST_STORE") {
        return child_writer(&store);
    }
    const PROCESSES: usize = 32;
    const POINTS: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            spawn_writer("runs::thirty_two_processes_log_into_one_store_and_every_point_is_kept", dir.path(), POINTS)
        })
        .collect();
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a writer failed: {status}");
    }
    let store = Store::open(dir.path()).unwrap();
    let runs = store.runs(Some("multi")).unwrap();
    assert_eq!(runs.len(), PROCESSES);
    for run in &runs {
        assert_eq!(run.status(), RunStatus::Completed);
        let points = store.metrics(&run.meta.run_id).unwrap();
        assert_eq!(points.len() as u64, POINTS, "run {}", run.meta.run_id);
        assert!(points.iter().enumerate().all(|(i, p)| p.step == i as u64 && p.value == i as f64));
    }
    let total = store.sql("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM metrics").unwrap();
    assert_eq!(total.column("n").unwrap().i64().unwrap().get(0), Some(PROCESSES as i64 * POINTS as i64));
}

#[test]
fn a_reused_pid_does_not_keep_a_dead_run_alive() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let run = store.run_builder("exp").capture_environment(false).start().unwrap();
    let beat = store.run(run.id()).unwrap().heartbeat.unwrap();
    assert!(beat.start_ticks.is_some(), "the writer's start time is recorded");
    assert!(beat.is_alive());
    // The same pid on the same host, but a process that started at another time: a restarted
    // container's pid 1, or a recycled pid.
    let other = kiln_track::Heartbeat { start_ticks: beat.start_ticks.map(|t| t + 1), ..beat.clone() };
    assert!(!other.is_alive());
    run.finish().unwrap();
}
