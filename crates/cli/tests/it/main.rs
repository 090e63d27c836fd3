//! The `kiln` binary against a real store.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::{Command, Output};

use kiln_track::{RegisterOptions, Store};

fn kiln(store: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).arg("--store").arg(store).args(args).output().expect("run kiln")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn runs_sql_and_models_read_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    let mut run = store.start_run("exp").unwrap();
    run.log_metric("test_accuracy", 1, 0.875).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("w"), "w").unwrap();
    let v = store
        .registry()
        .register("m", &pkg, RegisterOptions { run_id: Some(id.clone()), ..Default::default() })
        .unwrap();
    store.registry().set_alias("m", "production", v.version).unwrap();

    let out = kiln(&store_dir, &["runs"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&id) && text.contains("completed") && text.contains("test_accuracy=0.8750"), "{text}");

    let out = kiln(&store_dir, &["sql", "SELECT run_id, value FROM latest_metrics WHERE key = 'test_accuracy'"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&id) && text.contains("0.875"), "{text}");

    let out = kiln(&store_dir, &["compact"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("compacted 1 run(s), 1 metric point(s) into 1 batch(es)"), "{}", stdout(&out));
    assert_eq!(store.table_files("runs").unwrap().len(), 1);
    let out = kiln(&store_dir, &["sql", "SELECT run_id, value FROM latest_metrics WHERE key = 'test_accuracy'"]);
    let text = stdout(&out);
    assert!(text.contains(&id) && text.contains("0.875"), "the same answer from the compacted table: {text}");

    let text = stdout(&kiln(&store_dir, &["models"]));
    assert!(text.contains("m  1 version(s)  production=v1"), "{text}");
    let text = stdout(&kiln(&store_dir, &["models", "m"]));
    assert!(text.starts_with("v1  run ") && text.contains("production"), "{text}");
}

#[test]
fn failures_exit_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln(dir.path(), &["sql", "SELEKT 1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sql:"), "{out:?}");
    let out = kiln(dir.path(), &["serve", "--model", "ghost@production", "--addr", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ghost@production") && err.contains("not found"), "{err}");
}
