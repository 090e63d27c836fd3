//! `kiln runs`, `kiln query`, `kiln registry` and `kiln store` against a store written with
//! kiln-track, read back through the CLI's text and JSON output.

use std::path::Path;
use std::process::Output;

use kiln_track::{RegisterOptions, Store};
use serde_json::Value;

use crate::{kiln, stdout};

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// Two finished runs of `exp` with different params and metrics, one failed run, and a model
/// with two versions (v1 production).
fn fixture(dir: &Path) -> (Store, String, String) {
    let store = Store::open(dir.join("store")).unwrap();
    let mut ids = Vec::new();
    for (lr, acc) in [(0.1, 0.80), (0.01, 0.90)] {
        let mut run = store.start_run("exp").unwrap();
        run.log_params(&serde_json::json!({"lr": lr, "batch": 32, "optimizer": "adam"})).unwrap();
        for step in 1..=3u64 {
            run.log_metric("val_loss", step, 1.0 / step as f64 + lr).unwrap();
        }
        run.log_metric("test_accuracy", 3, acc).unwrap();
        ids.push(run.id().to_string());
        run.finish().unwrap();
    }
    let failed = store.start_run("other").unwrap();
    failed.fail("out of memory").unwrap();
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    for (i, (id, acc)) in ids.iter().zip([0.80, 0.90]).enumerate() {
        std::fs::write(pkg.join("weights"), format!("w{i}")).unwrap();
        store
            .registry()
            .register(
                "m",
                &pkg,
                RegisterOptions {
                    run_id: Some(id.clone()),
                    metrics: [("test_accuracy".to_string(), acc)].into(),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    store.registry().set_alias("m", "production", 1).unwrap();
    (store, ids[0].clone(), ids[1].clone())
}

#[test]
fn runs_ls_show_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let (store, a, b) = fixture(dir.path());
    let root = store.root();

    // `kiln runs` is `kiln runs ls`.
    let text = stdout(&kiln(root, &["runs"]));
    assert!(text.contains(&a) && text.contains(&b) && text.contains("failed"), "{text}");
    assert!(text.contains("test_accuracy=0.9000"), "{text}");

    let rows = json(&kiln(root, &["runs", "ls", "--experiment", "exp", "--sort", "test_accuracy", "--json"]));
    let order: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(order, [b.as_str(), a.as_str()], "best first");
    assert_eq!(rows[0]["params"]["lr"], 0.01);
    assert_eq!(rows[0]["status"], "completed");
    // Loss sorts ascending by its name.
    let rows = json(&kiln(root, &["runs", "ls", "--sort", "val_loss", "--limit", "1", "--json"]));
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["run_id"], b.as_str());
    let rows = json(&kiln(root, &["runs", "ls", "--status", "failed", "--json"]));
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["error"], "out of memory");
    let out = kiln(root, &["runs", "ls", "--status", "exploded"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad value: {out:?}");

    // A unique prefix is enough; an ambiguous one says so.
    let prefix = &b[..b.len() - 3];
    let show = json(&kiln(root, &["runs", "show", prefix, "--json"]));
    assert_eq!(show["run_id"], b.as_str());
    assert_eq!(show["metric_summary"]["val_loss"]["count"], 3);
    assert_eq!(show["metric_summary"]["val_loss"]["min"], 1.0 / 3.0 + 0.01);
    assert_eq!(show["metric_summary"]["val_loss"]["last"], 1.0 / 3.0 + 0.01);
    let text = stdout(&kiln(root, &["runs", "show", &b]));
    assert!(text.contains("experiment  exp") && text.contains("optimizer") && text.contains("val_loss"), "{text}");
    let common: String = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect();
    if common.len() < a.len() {
        let out = kiln(root, &["runs", "show", &common]);
        assert!(!out.status.success());
        let n = store.run_ids().unwrap().iter().filter(|id| id.starts_with(&common)).count();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("matches {n} runs")) && err.contains("give more of the id"), "{out:?}");
    }
    let out = kiln(root, &["runs", "show", "ffffffff"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run \"ffffffff\""), "{out:?}");

    let cmp = json(&kiln(root, &["runs", "compare", &a, &b, "--json"]));
    assert_eq!(cmp["params"]["lr"], serde_json::json!([0.1, 0.01]), "{cmp}");
    assert!(cmp["params"].get("batch").is_none(), "only params that differ: {cmp}");
    assert_eq!(cmp["metrics"]["test_accuracy"], serde_json::json!([0.8, 0.9]));
    let cmp = json(&kiln(root, &["runs", "compare", "--experiment", "exp", "--all", "--json"]));
    assert_eq!(cmp["params"]["batch"], serde_json::json!([32, 32]));
    let text = stdout(&kiln(root, &["runs", "compare", &a, &b]));
    assert!(text.contains("0.9000*"), "the best value is marked: {text}");
}

#[test]
fn query_prints_every_row_as_text_json_or_csv() {
    let dir = tempfile::tempdir().unwrap();
    let (store, a, b) = fixture(dir.path());
    let root = store.root();
    let sql = "SELECT run_id, value FROM latest_metrics WHERE key = 'test_accuracy' ORDER BY value";
    let rows = json(&kiln(root, &["query", sql, "--json"]));
    assert_eq!(rows, serde_json::json!([{"run_id": a, "value": 0.8}, {"run_id": b, "value": 0.9}]));
    let csv = stdout(&kiln(root, &["query", sql, "--csv"]));
    assert_eq!(csv, format!("run_id,value\n{a},0.8\n{b},0.9\n"));
    // The older name still answers.
    let text = stdout(&kiln(root, &["sql", sql]));
    assert!(text.contains(&a) && text.contains("0.9"), "{text}");
    let out = kiln(root, &["query", "SELECT nope FROM runs"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"), "{out:?}");
}

#[test]
fn registry_promotes_through_a_gate_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, b) = fixture(dir.path());
    let root = store.root();
    let models = json(&kiln(root, &["registry", "ls", "--json"]));
    assert_eq!(models[0]["model"], "m");
    assert_eq!(models[0]["versions"], 2);
    assert_eq!(models[0]["aliases"]["production"], 1);
    let versions = json(&kiln(root, &["registry", "ls", "m", "--json"]));
    assert_eq!(versions[1]["run_id"], b.as_str());
    assert_eq!(versions[0]["aliases"], serde_json::json!(["production"]));

    // The gate refuses: exit 3, the reason, production unchanged.
    let out = kiln(root, &["registry", "promote", "m", "2", "--require", "test_accuracy=0.95"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout(&out).contains("test_accuracy 0.9000 is below the minimum 0.95"), "{}", stdout(&out));
    assert_eq!(store.registry().resolve("m", "production").unwrap().version, 1);
    // It passes: production moves, with the reason in the history.
    let out = kiln(root, &["registry", "promote", "m", "2", "--require", "test_accuracy=0.85", "--reason", "better"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "m production: v1 -> v2");
    assert_eq!(store.registry().resolve("m", "production").unwrap().version, 2);
    // Back to v1 without a gate would be worse by 0.1: refused at tolerance 0.05.
    let out = kiln(root, &["registry", "promote", "m", "1", "--require", "test_accuracy=0.5", "--tolerance", "0.05"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout(&out).contains("worse than production's"), "{}", stdout(&out));

    let out = kiln(root, &["registry", "rollback", "m", "--reason", "canary regressed"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "m production rolled back: v2 -> v1");
    assert_eq!(store.registry().resolve("m", "production").unwrap().version, 1);

    assert!(kiln(root, &["registry", "alias", "m", "staging", "latest"]).status.success());
    assert_eq!(store.registry().resolve("m", "staging").unwrap().version, 2);
    assert!(kiln(root, &["registry", "alias", "m", "staging", "--remove"]).status.success());
    assert!(!store.registry().aliases("m").unwrap().contains_key("staging"));

    let history = json(&kiln(root, &["registry", "history", "m", "--json"]));
    let events: Vec<&str> = history.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["registered", "registered", "alias_set", "alias_set", "rollback", "alias_set", "alias_removed"]
    );
    assert_eq!(history[3]["reason"], "better");
    assert_eq!(history[4]["reason"], "canary regressed");
    let text = stdout(&kiln(root, &["registry", "history", "m"]));
    assert!(text.contains("rollback production: v2 -> v1  (canary regressed)"), "{text}");
    let out = kiln(root, &["registry", "history", "ghost"]);
    assert!(!out.status.success());
}

#[test]
fn store_compact_sync_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let (store, a, _) = fixture(dir.path());
    let root = store.root();
    // An artifact logged twice under one name leaves one unreferenced object.
    let mut run = store.resume_run(&a).unwrap();
    run.log_artifact_bytes("checkpoint", b"epoch 1").unwrap();
    run.log_artifact_bytes("checkpoint", b"epoch 2").unwrap();
    run.finish().unwrap();

    let out = json(&kiln(root, &["store", "compact", "--json"]));
    assert_eq!(out["runs"], 3);
    assert_eq!(store.table_files("runs").unwrap().len(), 1);

    let dest = dir.path().join("shared");
    let out = json(&kiln(root, &["store", "sync", dest.to_str().unwrap(), "--json"]));
    assert_eq!(out["runs_created"], 3, "{out}");
    assert_eq!(out["versions_copied"], 2, "{out}");
    let copy = Store::open(&dest).unwrap();
    assert_eq!(copy.run_ids().unwrap(), store.run_ids().unwrap());
    assert_eq!(copy.registry().resolve("m", "production").unwrap().version, 1);
    let again = json(&kiln(root, &["store", "sync", dest.to_str().unwrap(), "--json"]));
    assert_eq!((again["runs_created"].as_u64(), again["runs_unchanged"].as_u64()), (Some(0), Some(3)));

    let young = json(&kiln(root, &["store", "gc", "--json"]));
    assert_eq!((young["removed_objects"].as_u64(), young["young_unreferenced"].as_u64()), (Some(0), Some(1)));
    let dry = json(&kiln(root, &["store", "gc", "--grace", "0s", "--dry-run", "--json"]));
    assert_eq!((dry["removed_objects"].as_u64(), dry["dry_run"].as_bool()), (Some(1), Some(true)));
    let out = kiln(root, &["store", "gc", "--grace", "0s"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --force"), "{out:?}");
    let text = stdout(&kiln(root, &["store", "gc", "--grace", "0s", "--force"]));
    assert!(text.contains("removed 1 unreferenced"), "{text}");
    let out = dir.path().join("ckpt");
    store.restore_artifact(&a, "checkpoint", &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"epoch 2");
    let out = kiln(root, &["store", "gc", "--grace", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
