use kiln_track::{RegisterOptions, Store, TABLES};
use polars::prelude::{DataType, ParquetReader, SerReader};

fn read_table(store: &Store, table: &str) -> polars::prelude::DataFrame {
    // Polars' own Parquet reader, independent of the arrow-rs writer that produced the file.
    ParquetReader::new(std::fs::File::open(store.table_path(table)).unwrap()).finish().unwrap()
}

#[test]
fn lakehouse_tables_hold_what_was_logged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let mut ids = Vec::new();
    for (i, acc) in [0.5, 0.9].iter().enumerate() {
        let mut run = store.start_run("exp").unwrap();
        run.log_param("seed", i).unwrap();
        run.set_tag("dataset_hash", "abc").unwrap();
        run.log_metrics(1, &[("loss", 1.0), ("acc", acc / 2.0)]).unwrap();
        run.log_metrics(2, &[("loss", 0.5), ("acc", *acc)]).unwrap();
        ids.push(run.id().to_string());
        run.finish().unwrap();
    }
    let pkg = dir.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("w"), "w").unwrap();
    let v = store
        .registry()
        .register("m", &pkg, RegisterOptions { run_id: Some(ids[1].clone()), ..Default::default() })
        .unwrap();
    store.registry().set_alias("m", "production", v.version).unwrap();
    store.refresh_tables().unwrap();

    for table in TABLES {
        assert!(store.table_path(table).exists(), "{table}");
    }
    let runs = read_table(&store, "experiment_runs");
    assert_eq!(runs.height(), 2);
    assert!(matches!(runs.column("start_time").unwrap().dtype(), DataType::Datetime(_, _)));
    let status: Vec<Option<&str>> = runs.column("status").unwrap().str().unwrap().iter().collect();
    assert_eq!(status, vec![Some("completed"), Some("completed")]);
    assert_eq!(read_table(&store, "epoch_metrics").height(), 8);
    let params = read_table(&store, "run_params");
    assert_eq!(params.height(), 2);
    let registry = read_table(&store, "model_registry");
    let aliases: Vec<Option<&str>> = registry.column("aliases").unwrap().str().unwrap().iter().collect();
    assert_eq!(aliases, vec![Some("production")]);

    let best = store
        .sql("SELECT r.run_id, m.value FROM experiment_runs r JOIN run_metrics m ON r.run_id = m.run_id WHERE m.metric = 'acc' ORDER BY m.value DESC")
        .unwrap();
    assert_eq!(best.height(), 2);
    let top: Vec<Option<&str>> = best.column("run_id").unwrap().str().unwrap().iter().collect();
    assert_eq!(top[0], Some(ids[1].as_str()));
    let value: Vec<Option<f64>> = best.column("value").unwrap().f64().unwrap().iter().collect();
    assert_eq!(value, vec![Some(0.9), Some(0.5)]);
}

#[test]
fn sql_errors_are_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = store.sql("SELECT nope FROM experiment_runs").unwrap_err();
    assert!(err.to_string().starts_with("sql: "), "{err}");
    assert!(store.sql("SELECT * FROM no_such_table").is_err());
    // Empty tables are queryable.
    assert_eq!(store.sql("SELECT * FROM experiment_runs").unwrap().height(), 0);
}
