use std::io::Write;

use kiln_track::{Error, RunStatus, Store};

#[test]
fn a_run_round_trips_params_metrics_environment_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut run = store.start_named_run("exp", Some("first")).unwrap();
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
    let id = run.id().to_string();
    run.finish().unwrap();

    let rec = store.run(&id).unwrap();
    assert_eq!(rec.meta.name, "first");
    assert_eq!(rec.status(), RunStatus::Completed);
    assert_eq!(rec.params["lr"], serde_json::json!(0.01));
    assert_eq!(rec.params["optimizer.name"], serde_json::json!("adam"));
    assert_eq!(rec.final_metrics["loss"], 1.0 / 3.0);
    assert!(rec.final_metrics["weird"].is_nan());
    let env = rec.environment.unwrap();
    assert!(env.cpu_count >= 1 && !env.hostname.is_empty() && env.rustc_version.starts_with("rustc "));
    assert_eq!(store.metrics(&id).unwrap().len(), 4);
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
    assert!(rec.summary.unwrap().error.unwrap().contains("without finish"));
    assert_eq!(rec.final_metrics["loss"], 0.5);
}

#[test]
fn a_torn_last_line_is_skipped_but_a_corrupt_middle_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut run = store.start_run("exp").unwrap();
    run.log_metric("loss", 1, 0.5).unwrap();
    run.log_metric("loss", 2, 0.25).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let log = dir.path().join("runs").join(&id).join("metrics.jsonl");
    // A crash in the middle of a write leaves a line without its newline.
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"{\"step\":3,\"na").unwrap();
    assert_eq!(store.metrics(&id).unwrap().len(), 2);

    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(1, "not json");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let err = store.metrics(&id).unwrap_err();
    assert!(matches!(err, Error::Corrupt { line: Some(2), .. }), "{err}");
    assert!(err.to_string().contains("metrics.jsonl, line 2"), "{err}");
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
}

/// Child half of `a_killed_writer_loses_nothing_it_flushed`: logs metrics forever (at most 20
/// seconds), flushing every 10 values and saying so on stdout.
fn killable_writer(store: &str) {
    let store = Store::open(store).unwrap();
    let mut run = store.start_run("crash").unwrap();
    let started = std::time::Instant::now();
    let mut step = 0u64;
    while started.elapsed() < std::time::Duration::from_secs(20) {
        run.log_metric("x", step, step as f64).unwrap();
        step += 1;
        if step.is_multiple_of(10) {
            run.flush().unwrap();
            println!("flushed {step}");
        }
    }
}

#[test]
fn a_killed_writer_loses_nothing_it_flushed() {
    if let Ok(store) = std::env::var("KILN_TEST_KILLABLE_STORE") {
        return killable_writer(&store);
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "runs::a_killed_writer_loses_nothing_it_flushed", "--nocapture", "--test-threads=1"])
        .env("KILN_TEST_KILLABLE_STORE", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut acknowledged = 0u64;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("flushed ") {
            acknowledged = n.parse().unwrap();
            if acknowledged >= 2000 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acknowledged >= 2000, "the child stopped early");

    let store = Store::open(dir.path()).unwrap();
    let runs = store.runs(Some("crash")).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status(), RunStatus::Running, "a killed run cannot record its end");
    let points = store.metrics(&runs[0].meta.run_id).unwrap();
    assert!(points.len() as u64 >= acknowledged, "{} points on disk, {acknowledged} acknowledged", points.len());
    for (i, p) in points.iter().enumerate() {
        assert_eq!((p.step, p.value), (i as u64, i as f64));
    }
}

#[test]
fn summaries_that_say_finished_read_as_completed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let run = store.start_run("exp").unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let summary = dir.path().join("runs").join(&id).join("summary.json");
    let text = std::fs::read_to_string(&summary).unwrap().replace("\"completed\"", "\"finished\"");
    std::fs::write(&summary, text).unwrap();
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Completed);
}
