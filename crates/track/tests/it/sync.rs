use kiln_track::{RegisterOptions, RunStatus, Store};

fn count(store: &Store, sql: &str) -> i64 {
    store
        .sql(&format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {sql}"))
        .unwrap()
        .column("n")
        .unwrap()
        .i64()
        .unwrap()
        .get(0)
        .unwrap()
}

#[test]
fn sync_copies_runs_artifacts_and_models_idempotently_including_live_runs() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = Store::open(dir.path().join("scratch")).unwrap();
    let project = Store::open(dir.path().join("project")).unwrap();

    let mut done = scratch.start_run("exp").unwrap();
    done.log_param("lr", 0.1).unwrap();
    for step in 0..100 {
        done.log_metric("loss", step, 1.0 / (step + 1) as f64).unwrap();
    }
    let weights = dir.path().join("weights.bin");
    std::fs::write(&weights, b"0123456789").unwrap();
    done.log_artifact("weights.bin", &weights).unwrap();
    let done_id = done.id().to_string();
    done.finish().unwrap();

    let mut live = scratch.start_run("exp").unwrap();
    for step in 0..10 {
        live.log_metric("loss", step, step as f64).unwrap();
    }
    live.flush().unwrap();
    let live_id = live.id().to_string();

    let pkg = dir.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("w"), "w").unwrap();
    let reg = scratch.registry();
    let v = reg.register("m", &pkg, RegisterOptions { run_id: Some(done_id.clone()), ..Default::default() }).unwrap();
    reg.set_alias("m", "production", v.version).unwrap();

    let first = scratch.sync_to(&project).unwrap();
    assert_eq!(first.runs_created, 2);
    assert_eq!(first.versions_copied, 1);
    assert!(first.objects_copied >= 1);
    assert!(first.conflicts.is_empty(), "{:?}", first.conflicts);
    assert_eq!(project.metrics(&done_id).unwrap(), scratch.metrics(&done_id).unwrap());
    assert_eq!(project.metrics(&live_id).unwrap().len(), 10);
    assert_eq!(project.run(&live_id).unwrap().status(), RunStatus::Running, "its writer (this process) is alive");
    let restored = dir.path().join("restored.bin");
    project.restore_artifact(&done_id, "weights.bin", &restored).unwrap();
    assert_eq!(std::fs::read(&restored).unwrap(), b"0123456789");
    assert_eq!(project.registry().resolve("m", "production").unwrap().version, 1);
    assert_eq!(project.registry().history("m").unwrap().len(), 2);

    // Again: nothing to do.
    let again = scratch.sync_to(&project).unwrap();
    assert!(again.is_noop(), "{again:?}");
    assert_eq!(again.runs_unchanged, 2);

    // The live run goes on; the project was compacted meanwhile; the next sync brings the rest.
    project.compact().unwrap();
    for step in 10..25 {
        live.log_metric("loss", step, step as f64).unwrap();
    }
    live.finish().unwrap();
    let later = scratch.sync_to(&project).unwrap();
    assert_eq!((later.runs_created, later.runs_updated), (0, 1));
    assert_eq!(project.metrics(&live_id).unwrap().len(), 25);
    assert_eq!(project.run(&live_id).unwrap().status(), RunStatus::Completed);
    assert_eq!(count(&project, "metrics"), 125, "every point once, compacted or not");
    project.compact().unwrap();
    assert_eq!(count(&project, "metrics"), 125);
    assert_eq!(count(&project, "runs"), 2);
}

#[test]
fn sync_never_overwrites_a_different_version_with_the_same_number() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path().join("a")).unwrap();
    let b = Store::open(dir.path().join("b")).unwrap();
    for (store, content) in [(&a, "from a"), (&b, "from b")] {
        let pkg = dir.path().join(content.replace(' ', "-"));
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("w"), content).unwrap();
        store.registry().register("m", &pkg, RegisterOptions::default()).unwrap();
    }
    let report = a.sync_to(&b).unwrap();
    assert_eq!(report.versions_copied, 0);
    assert_eq!(report.conflicts.len(), 1, "{:?}", report.conflicts);
    assert!(report.conflicts[0].contains("version 1"), "{:?}", report.conflicts);
    let kept = b.registry().version("m", 1).unwrap();
    assert_eq!(std::fs::read_to_string(kept.package_dir.join("w")).unwrap(), "from b");
}
