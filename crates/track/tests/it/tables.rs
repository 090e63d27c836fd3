use kiln_track::{RegisterOptions, RunStatus, Store};
use polars::prelude::DataFrame;

fn strings(df: &DataFrame, col: &str) -> Vec<String> {
    df.column(col).unwrap().str().unwrap().iter().map(|v| v.unwrap_or("<null>").to_string()).collect()
}

fn floats(df: &DataFrame, col: &str) -> Vec<f64> {
    df.column(col).unwrap().f64().unwrap().iter().map(|v| v.unwrap()).collect()
}

fn ints(df: &DataFrame, col: &str) -> Vec<i64> {
    let c = df.column(col).unwrap().cast(&polars::prelude::DataType::Int64).unwrap();
    c.i64().unwrap().iter().map(|v| v.unwrap()).collect()
}

/// The classic mini-tracker: six runs of four model families.
fn six_runs(store: &Store) -> Vec<String> {
    let runs = [
        ("LogisticRegression", 0.1, 32, 0.85),
        ("RandomForest", 0.05, 64, 0.91),
        ("MLP", 0.01, 32, 0.88),
        ("CNN", 0.001, 64, 0.93),
        ("MLP", 0.02, 128, 0.86),
        ("CNN", 0.0005, 64, 0.95),
    ];
    runs.iter()
        .map(|(model, lr, batch, acc)| {
            let mut run = store.run_builder("mini").name(model).start().unwrap();
            run.log_param("model", model).unwrap();
            run.log_param("learning_rate", lr).unwrap();
            run.log_param("batch_size", batch).unwrap();
            for epoch in 1..=5u64 {
                run.log_metric("accuracy", epoch, acc * epoch as f64 / 5.0).unwrap();
            }
            let id = run.id().to_string();
            run.finish().unwrap();
            id
        })
        .collect()
}

const ACC: &str = "(SELECT run_id, value AS accuracy FROM latest_metrics WHERE key = 'accuracy')";
const MODEL: &str = "(SELECT run_id, value AS model FROM params WHERE key = 'model')";

fn assert_mini_tracker_answers(store: &Store, ids: &[String]) {
    // Average accuracy per model.
    let q = format!(
        "SELECT p.model, AVG(a.accuracy) AS avg_accuracy, COUNT(*) AS runs FROM {MODEL} p JOIN {ACC} a ON p.run_id = a.run_id
         GROUP BY p.model ORDER BY p.model"
    );
    let df = store.sql(&q).unwrap();
    assert_eq!(strings(&df, "model"), ["CNN", "LogisticRegression", "MLP", "RandomForest"]);
    let avg = floats(&df, "avg_accuracy");
    let expected = [0.94, 0.85, 0.87, 0.91];
    for (a, e) in avg.iter().zip(expected) {
        assert!((a - e).abs() < 1e-12, "{avg:?}");
    }
    assert_eq!(ints(&df, "runs"), [2, 1, 2, 1]);

    // Runs per batch size.
    let df = store
        .sql("SELECT value_num AS batch_size, COUNT(*) AS runs FROM params WHERE key = 'batch_size' GROUP BY value_num ORDER BY value_num")
        .unwrap();
    assert_eq!(floats(&df, "batch_size"), [32.0, 64.0, 128.0]);
    assert_eq!(ints(&df, "runs"), [2, 3, 1]);

    // The best run.
    let q = format!(
        "SELECT r.run_id, r.run_name, a.accuracy FROM runs r JOIN {ACC} a ON r.run_id = a.run_id ORDER BY a.accuracy DESC LIMIT 1"
    );
    let df = store.sql(&q).unwrap();
    assert_eq!(strings(&df, "run_id"), [ids[5].clone()]);
    assert_eq!(strings(&df, "run_name"), ["CNN"]);
    assert!((floats(&df, "accuracy")[0] - 0.95).abs() < 1e-12);

    // Runs above 0.9, by the older table names too.
    let df = store.sql("SELECT run_id FROM run_metrics WHERE key = 'accuracy' AND value > 0.9 ORDER BY value").unwrap();
    assert_eq!(strings(&df, "run_id"), [ids[1].clone(), ids[3].clone(), ids[5].clone()]);

    let df = store.sql("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM metrics").unwrap();
    assert_eq!(ints(&df, "n"), [30]);
}

#[test]
fn the_mini_tracker_questions_have_exact_answers_before_and_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids = six_runs(&store);
    assert_mini_tracker_answers(&store, &ids);

    let report = store.compact().unwrap();
    assert_eq!((report.runs, report.points, report.batches.len()), (6, 30, 1));
    assert_mini_tracker_answers(&store, &ids);
    // Compacting again finds nothing new.
    assert_eq!(store.compact().unwrap().runs, 0);
    assert_mini_tracker_answers(&store, &ids);
}

#[test]
fn queries_see_compacted_live_and_resumed_runs_alike() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids = six_runs(&store);
    store.compact().unwrap();

    // A run still in progress is not compacted but is queryable.
    let mut live = store.run_builder("mini").name("live").start().unwrap();
    live.log_metric("accuracy", 1, 0.5).unwrap();
    live.flush().unwrap();
    assert_eq!(store.compact().unwrap().runs, 0);
    let df = store.sql("SELECT status FROM runs WHERE run_name = 'live'").unwrap();
    assert_eq!(strings(&df, "status"), ["running"]);

    // A compacted run resumed and extended: queries see the new data, not the compacted copy.
    let mut resumed = store.resume_run(&ids[0]).unwrap();
    resumed.log_metric("accuracy", 6, 0.99).unwrap();
    resumed.flush().unwrap();
    let q = format!("SELECT value, step FROM latest_metrics WHERE run_id = '{}' AND key = 'accuracy'", ids[0]);
    let df = store.sql(&q).unwrap();
    assert_eq!((floats(&df, "value"), ints(&df, "step")), (vec![0.99], vec![6]));
    let q = format!("SELECT status, attempt FROM runs WHERE run_id = '{}'", ids[0]);
    assert_eq!(strings(&store.sql(&q).unwrap(), "status"), ["running"]);
    resumed.finish().unwrap();
    live.finish().unwrap();

    let report = store.compact().unwrap();
    assert_eq!(report.runs, 2, "the resumed run and the finished live run");
    let df = store.sql(&q).unwrap();
    assert_eq!(strings(&df, "status"), ["completed"]);
    assert_eq!(ints(&df, "attempt"), [2]);
    let df = store.sql("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM runs").unwrap();
    assert_eq!(ints(&df, "n"), [7], "no run is counted twice");
    let df = store.sql("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM metrics").unwrap();
    assert_eq!(ints(&df, "n"), [30 + 1 + 1]);
}

#[test]
fn an_uncommitted_batch_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    six_runs(&store);
    let report = store.compact().unwrap();
    // Simulate a compaction that crashed before its `runs` file: copy a table file under a
    // new batch id with no matching runs file.
    let batch = &report.batches[0];
    let lake = dir.path().join("lakehouse");
    std::fs::copy(lake.join(format!("metrics/{batch}.parquet")), lake.join("metrics/b000000000001deadbeef.parquet"))
        .unwrap();
    let df = store.sql("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM metrics").unwrap();
    assert_eq!(ints(&df, "n"), [30]);
    // The next compaction removes the leftover (it is old: its id says 1970).
    assert_eq!(store.compact().unwrap().removed_uncommitted, 1);
    assert!(!lake.join("metrics/b000000000001deadbeef.parquet").exists());
}

#[test]
fn compacted_tables_are_plain_parquet_read_back_by_arrow_rs() {
    use arrow::array::{Array, Float64Array, StringArray, UInt64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut run = store.start_run("exp").unwrap();
    run.log_metric("loss", 1, 0.5).unwrap();
    run.log_metric("loss", 2, f64::NAN).unwrap();
    run.log_metric("acc", 1, 0.75).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    store.compact().unwrap();

    let files = store.table_files("metrics").unwrap();
    assert_eq!(files.len(), 1);
    // The parquet crate's reader, not the code path kiln uses to query.
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&files[0]).unwrap()).unwrap().build().unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
    let run_ids = col("run_id");
    let run_ids = run_ids.as_any().downcast_ref::<StringArray>().unwrap();
    let keys = col("key");
    let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
    let steps = col("step");
    let steps = steps.as_any().downcast_ref::<UInt64Array>().unwrap();
    let values = col("value");
    let values = values.as_any().downcast_ref::<Float64Array>().unwrap();
    let finite = col("finite");
    let finite = finite.as_any().downcast_ref::<arrow::array::BooleanArray>().unwrap();
    // Sorted by run, key, step.
    let rows: Vec<(String, String, u64, bool)> = (0..batch.num_rows())
        .map(|i| (run_ids.value(i).to_string(), keys.value(i).to_string(), steps.value(i), finite.value(i)))
        .collect();
    assert_eq!(
        rows,
        [
            (id.clone(), "acc".into(), 1, true),
            (id.clone(), "loss".into(), 1, true),
            (id.clone(), "loss".into(), 2, false)
        ]
    );
    assert!(values.value(2).is_nan(), "NaN kept and flagged");
    assert_eq!(values.null_count(), 0);

    let runs = store.table_files("runs").unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&runs[0]).unwrap()).unwrap();
    let fields: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
    for expected in ["run_id", "experiment", "status", "start_time", "git_commit", "slurm_job_id"] {
        assert!(fields.contains(&expected.to_string()), "{fields:?}");
    }
}

#[test]
fn registry_and_dataset_tables() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let mut run = store.start_run("exp").unwrap();
    run.log_input(kiln_track::DatasetInput {
        name: "digits".into(),
        digest: "d1".into(),
        source: "data/digits.csv".into(),
        rows: Some(1797),
        context: Some("train".into()),
    })
    .unwrap();
    run.set_tag("owner", "ada").unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let pkg = dir.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("w"), "w").unwrap();
    let reg = store.registry();
    let v = reg.register("m", &pkg, RegisterOptions { run_id: Some(id.clone()), ..Default::default() }).unwrap();
    reg.set_alias("m", "production", v.version).unwrap();

    let df = store.sql("SELECT model, version, run_id, dataset_digests, aliases FROM models").unwrap();
    assert_eq!(strings(&df, "run_id"), std::slice::from_ref(&id));
    assert_eq!(strings(&df, "dataset_digests"), ["d1"], "lineage from the run's inputs");
    assert_eq!(strings(&df, "aliases"), ["production"]);
    let df = store.sql("SELECT event FROM model_events ORDER BY at").unwrap();
    assert_eq!(strings(&df, "event"), ["registered", "alias_set"]);
    let df = store.sql("SELECT name, digest, rows FROM dataset_catalog").unwrap();
    assert_eq!(strings(&df, "digest"), ["d1"]);
    let df = store.sql("SELECT value FROM tags WHERE key = 'owner'").unwrap();
    assert_eq!(strings(&df, "value"), ["ada"]);
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Completed);
}

#[test]
fn sql_errors_are_reported_not_panicked_and_empty_tables_are_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = store.sql("SELECT nope FROM runs").unwrap_err();
    assert!(err.to_string().starts_with("sql: "), "{err}");
    assert!(store.sql("SELECT * FROM no_such_table").is_err());
    for (table, alias) in kiln_track::TABLES {
        assert_eq!(store.sql(&format!("SELECT * FROM {table}")).unwrap().height(), 0);
        assert_eq!(store.table(alias).unwrap().height(), 0);
    }
}
