//! Staged deployment, feedback, the prediction log, monitoring and the admin API, over real
//! HTTP on 127.0.0.1.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_data::polars::prelude::{Column, DataFrame};
use kiln_data::{
    ColumnSpec, DatasetProfile, InjectedDrift, LabelEncoder, ProfileOptions, Schema, StandardScaler, SyntheticSpec,
    synthetic_classification,
};
use kiln_serve::{
    CanaryPolicy, Client, Deployment, InferResponse, LoadedModel, LogConfig, MonitorConfig, ROLE_HEADER, ServeOptions,
    ServerHandle, SimulateSpec, Trigger, export_labeled, simulate,
};
use kiln_track::{RegisterOptions, Store};
use kiln_train::{DeviceSpec, Examples, ModelConfig, ModelPackage, PackageSpec, TrainConfig, train};
use ndarray::Array2;
use serde_json::{Value, json};

use super::{FEATURES, package_dir, package_dir_with, raw_post, rows};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// A frame of the toy's raw features `a`, `b`, `c` and its true label `y`.
fn toy_frame(n: usize) -> DataFrame {
    let x = rows(n);
    let mut columns: Vec<Column> =
        FEATURES.iter().enumerate().map(|(j, f)| Column::new((*f).into(), x.column(j).to_vec())).collect();
    let y: Vec<&str> = x.rows().into_iter().map(|r| if r[0] + r[1] > 10.0 { "high" } else { "low" }).collect();
    columns.push(Column::new("y".into(), y));
    DataFrame::new_infer_height(columns).unwrap()
}

fn features() -> Vec<String> {
    FEATURES.map(String::from).to_vec()
}

/// POST with a header, returning status, the `kiln-role` header and the JSON answer.
fn post_with(url: &str, header: Option<(&str, &str)>, body: &Value) -> (u16, String, Value) {
    let mut request = agent().post(url).content_type("application/json");
    if let Some((k, v)) = header {
        request = request.header(k, v);
    }
    let mut resp = request.send(body.to_string()).unwrap();
    let role = resp.headers().get(ROLE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, role, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A count column of a SQL answer.
fn counts(frame: &DataFrame, column: &str) -> Vec<u32> {
    let cast = frame.column(column).unwrap().cast(&kiln_data::polars::prelude::DataType::UInt32).unwrap();
    cast.u32().unwrap().into_no_null_iter().collect()
}

fn request(id: &str, row: &[f64]) -> Value {
    json!({"id": id, "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [row]}]})
}

#[test]
fn canary_traffic_is_within_three_points_of_its_share_and_sticky() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let primary = LoadedModel::from_dir("toy", "1", &pkg).unwrap();
    let canary = LoadedModel::from_dir("toy", "2", &pkg).unwrap();
    let server = ServerHandle::start("127.0.0.1:0", vec![Deployment::new(primary).with_canary(canary, 20.0)]).unwrap();

    let mut spec = SimulateSpec::new(&server.url(), "toy", features());
    spec.workers = 8;
    let frame = toy_frame(10_000);
    let report = simulate(&frame, &spec).unwrap();
    assert_eq!(report.statuses.get(&200), Some(&10_000), "{report:?}");
    let share = report.versions["2"] as f64 / 10_000.0 * 100.0;
    assert!((share - 20.0).abs() <= 3.0, "canary got {share}% of 10,000 requests, asked 20%");

    // Sticky: an id, or a routing key, always lands on the same version.
    let url = format!("{}/v2/models/toy/infer", server.url());
    for i in 0..40 {
        let id = format!("sim-{i}");
        let (_, first, a) = post_with(&url, None, &request(&id, &[1.0, 2.0, 3.0]));
        let (_, again, b) = post_with(&url, None, &request(&id, &[4.0, 5.0, 6.0]));
        assert_eq!(first, again);
        assert_eq!(a["model_version"], b["model_version"]);
        assert_eq!(first == "canary", a["model_version"] == "2");
        let key = format!("user-{i}");
        let roles: Vec<String> = (0..3)
            .map(|k| {
                post_with(&url, Some(("kiln-route-key", &key)), &request(&format!("{key}-{k}"), &[1.0, 1.0, 1.0])).1
            })
            .collect();
        assert!(roles.iter().all(|r| *r == roles[0]), "{roles:?}");
    }
    // Asking for a version bypasses the split.
    let (status, role, answer) =
        post_with(&format!("{}/v2/models/toy/versions/2/infer", server.url()), None, &request("x", &[1.0, 1.0, 1.0]));
    assert_eq!((status, role.as_str(), &answer["model_version"]), (200, "direct", &json!("2")));
    let metadata: Value = Client::new(&server.url()).get("/v2/models/toy").unwrap();
    assert_eq!(metadata["versions"], json!(["1", "2"]));
}

#[test]
fn a_shadow_never_changes_answers_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let flipped = package_dir_with(dir.path(), "flipped", ["high", "low"]);
    let store = Store::open(dir.path().join("store")).unwrap();
    let alone = ServerHandle::start("127.0.0.1:0", vec![LoadedModel::from_dir("toy", "1", &pkg).unwrap()]).unwrap();
    let deployment = Deployment::new(LoadedModel::from_dir("toy", "1", &pkg).unwrap())
        .with_shadow(LoadedModel::from_dir("toy", "9", &flipped).unwrap());
    let options = ServeOptions { store: Some(store.clone()), ..Default::default() };
    let shadowed = ServerHandle::start_with("127.0.0.1:0", vec![deployment], options).unwrap();

    let x = rows(60);
    for (i, row) in x.rows().into_iter().enumerate() {
        let body = request(&format!("s{i}"), &row.to_vec());
        let (s1, role1, a) = post_with(&format!("{}/v2/models/toy/infer", alone.url()), None, &body);
        let (s2, role2, b) = post_with(&format!("{}/v2/models/toy/infer", shadowed.url()), None, &body);
        assert_eq!((s1, s2), (200, 200));
        assert_eq!((role1.as_str(), role2.as_str()), ("primary", "primary"));
        assert_eq!(a, b, "the shadow changed an answer");
    }
    // The shadow's answers are counted and logged, apart from the primary's.
    let mut disagreed = 0;
    for _ in 0..100 {
        let text = super::metrics_text(&shadowed);
        let line = text.lines().find(|l| l.starts_with("kiln_shadow_rows_total") && l.contains("outcome=\"disagree\""));
        disagreed = line.and_then(|l| l.rsplit(' ').next()).map_or(0, |v| v.parse::<u64>().unwrap());
        if disagreed == 60 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(disagreed, 60, "the flipped shadow disagrees on every row");
    shadowed.control().flush_logs();
    let by_role =
        store.sql("SELECT role, version, count(*) AS n FROM predictions GROUP BY role, version ORDER BY role").unwrap();
    let roles: Vec<&str> = by_role.column("role").unwrap().str().unwrap().iter().flatten().collect();
    let counts: Vec<u32> = counts(&by_role, "n");
    assert_eq!(roles, ["primary", "shadow"]);
    assert_eq!(counts, [60, 60]);
    // Feedback scores the shadow too: it is right exactly where the primary is wrong.
    for i in 0..60 {
        let r = x.row(i);
        let label = if r[0] + r[1] > 10.0 { "high" } else { "low" };
        let (status, _) = raw_post(
            &format!("{}/v2/models/toy/feedback", shadowed.url()),
            &json!({"id": format!("s{i}"), "label": label}).to_string(),
        );
        assert_eq!(status, 200);
    }
    let status = shadowed.control().status("toy").unwrap();
    let (p, s) = (&status.online["1"], &status.online["9"]);
    assert_eq!((p.labeled, s.labeled), (60, 60));
    assert_eq!(p.correct + s.correct, 60);
}

#[test]
fn a_bad_canary_is_rolled_back_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let flipped = package_dir_with(dir.path(), "flipped", ["high", "low"]);
    let policy = CanaryPolicy { min_labeled: 20, max_accuracy_drop: 0.05, ..CanaryPolicy::default() };
    let deployment = Deployment::new(LoadedModel::from_dir("toy", "1", &pkg).unwrap())
        .with_canary(LoadedModel::from_dir("toy", "2", &flipped).unwrap(), 50.0)
        .with_policy(policy);
    let server = ServerHandle::start("127.0.0.1:0", vec![deployment]).unwrap();
    // The truth, as far as this test is concerned, is what the primary predicts: it is always
    // right, and the flipped canary always wrong.
    let truth = |n: usize| {
        let mut frame = toy_frame(n);
        let labels: Vec<String> =
            ModelPackage::load(&pkg).unwrap().predict(rows(n).view()).unwrap().into_iter().map(|p| p.label).collect();
        frame.with_column(Column::new("y".into(), labels)).unwrap();
        frame
    };
    let mut spec = SimulateSpec::new(&server.url(), "toy", features());
    spec.label_column = Some("y".into());
    spec.workers = 1;
    let report = simulate(&truth(200), &spec).unwrap();
    assert_eq!(report.statuses.get(&200), Some(&200));
    let status = server.control().status("toy").unwrap();
    assert!(status.canary.is_none(), "the canary should be gone: {status:?}");
    let rollback = status.events.iter().find(|e| e.event == "auto_rollback").expect("an auto_rollback event");
    assert_eq!(rollback.version, "2");
    assert!(rollback.reason.as_deref().unwrap().contains("online accuracy"), "{rollback:?}");
    // It fired as soon as both sides had 20 labels: the canary answered few after that.
    let canary_answers = report.versions.get("2").copied().unwrap_or(0);
    assert!((20..60).contains(&canary_answers), "canary answered {canary_answers}");
    let metrics = super::metrics_text(&server);
    assert!(metrics.contains("kiln_canary_rollbacks_total{model=\"toy\"} 1"), "{metrics}");
    // Everything goes to the primary now.
    let after = simulate(&truth(50), &SimulateSpec { id_prefix: "after".into(), ..spec }).unwrap();
    assert_eq!(after.versions.get("1"), Some(&50));
}

#[test]
fn feedback_joins_exactly_and_labeled_data_exports_with_a_digest() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let store = Store::open(dir.path().join("store")).unwrap();
    let options = ServeOptions { store: Some(store.clone()), ..Default::default() };
    let server =
        ServerHandle::start_with("127.0.0.1:0", vec![LoadedModel::from_dir("toy", "1", &pkg).unwrap()], options)
            .unwrap();
    let client = Client::new(&server.url());
    let x = rows(12);
    // Ten one-row requests and one of two rows.
    let mut predicted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..10 {
        let answer: InferResponse =
            client.post("/v2/models/toy/infer", &request(&format!("f{i}"), &x.row(i).to_vec())).unwrap();
        predicted.insert(format!("f{i}"), answer.labels());
    }
    let pair = json!({"id": "pair", "inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64",
        "data": [x.row(10).to_vec(), x.row(11).to_vec()]}]});
    let answer: InferResponse = client.post("/v2/models/toy/infer", &pair).unwrap();
    predicted.insert("pair".into(), answer.labels());
    // Unnamed requests get an id to send feedback with.
    let unnamed: InferResponse = client.infer("toy", &[x.row(0).to_vec()]).unwrap();
    assert!(unnamed.id.as_deref().is_some_and(|id| !id.is_empty()));

    let other = |l: &str| if l == "low" { "high" } else { "low" };
    let url = format!("{}/v2/models/toy/feedback", server.url());
    // The script: f0..f6 right, f7..f9 wrong, pair: row 0 right, row 1 wrong → 8 of 12.
    for i in 0..10 {
        let p = &predicted[&format!("f{i}")][0];
        let label = if i < 7 { p.clone() } else { other(p).to_string() };
        let (status, answer) = raw_post(&url, &json!({"id": format!("f{i}"), "label": label}).to_string());
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["joined"], json!(true));
        assert_eq!(answer["stored"], json!(true));
        assert_eq!(answer["correct"], json!([i < 7]));
    }
    let pair_labels = [predicted["pair"][0].clone(), other(&predicted["pair"][1]).to_string()];
    let (status, answer) = raw_post(&url, &json!({"id": "pair", "labels": pair_labels}).to_string());
    assert_eq!((status, &answer["correct"]), (200, &json!([true, false])), "{answer}");

    // Mistakes are refused with their reason, and change nothing.
    let refused = [
        (json!({"id": "f0", "label": "low"}), 409, "already has a label"),
        (json!({"id": "f1", "label": "medium"}), 400, "\"medium\" is not one of"),
        (json!({"id": "pair", "label": "low", "row": 5}), 400, "row 5 is out of range"),
        (json!({"id": "f1"}), 400, "expected `label`"),
        (json!({"id": "f1", "label": "low", "labels": ["low"]}), 400, "not both"),
        (json!({"id": "f1", "label": "low", "extra": 1}), 400, "unknown field"),
    ];
    for (body, want, reason) in refused {
        let (status, answer) = raw_post(&url, &body.to_string());
        assert_eq!(status, want, "{body} → {answer}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{body} → {answer}");
    }
    // A label for an answer the server no longer holds is stored, not joined.
    let (status, answer) = raw_post(&url, &json!({"id": "ancient", "label": "low"}).to_string());
    assert_eq!((status, &answer["joined"], &answer["stored"]), (200, &json!(false), &json!(true)));

    let status = server.control().status("toy").unwrap();
    let online = &status.online["1"];
    assert_eq!((online.labeled, online.correct), (12, 8));
    assert_eq!(online.accuracy, Some(8.0 / 12.0));
    let metrics = super::metrics_text(&server);
    assert!(
        metrics.contains(&format!("kiln_online_accuracy{{model=\"toy\",version=\"1\"}} {}", 8.0 / 12.0)),
        "{metrics}"
    );
    assert!(metrics.contains("kiln_feedback_labels_total{model=\"toy\",outcome=\"unjoined\"} 1"));

    // The store has both logs, read back by Polars (the writer is arrow-rs).
    server.control().flush_logs();
    let feedback = store.sql("SELECT count(*) AS n, sum(CAST(correct AS INT)) AS right FROM feedback").unwrap();
    assert_eq!(feedback.column("n").unwrap().get(0).unwrap().try_extract::<u32>().unwrap(), 13);
    assert_eq!(feedback.column("right").unwrap().get(0).unwrap().try_extract::<i64>().unwrap(), 8);
    let logged = store.sql("SELECT request_id, row, inputs, label FROM predictions ORDER BY request_id, row").unwrap();
    assert_eq!(logged.height(), 13, "12 rows answered by id and one unnamed");
    let pair_row: Vec<&str> = logged.column("inputs").unwrap().str().unwrap().iter().flatten().collect();
    let expected_inputs = json!({"a": x[[11, 0]], "b": x[[11, 1]], "c": x[[11, 2]]});
    assert!(pair_row.iter().any(|i| serde_json::from_str::<Value>(i).unwrap() == expected_inputs));

    let out = dir.path().join("labeled.parquet");
    let export = export_labeled(&store, "toy", "y", &out).unwrap();
    assert_eq!((export.rows, export.unmatched_labels), (12, 1));
    assert_eq!(export.digest, kiln_data::hash_path(&out, None).unwrap().digest);
    let frame = kiln_data::scan(&out, &kiln_data::ScanOptions::default()).unwrap().collect().unwrap();
    let names: Vec<&str> = frame.get_column_names().into_iter().map(|n| n.as_str()).collect();
    assert_eq!(&names[..4], ["a", "b", "c", "y"]);
    let wrong = frame
        .column("y")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .zip(frame.column("predicted").unwrap().str().unwrap().iter().flatten())
        .filter(|(y, p)| y != p)
        .count();
    assert_eq!(wrong, 4);
}

/// A package trained on synthetic data with a reference profile of its training features.
fn synthetic_package(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let spec =
        SyntheticSpec { rows: 1500, numeric: 4, categorical: 0, classes: 2, seed: 7, ..SyntheticSpec::default() };
    let frame = synthetic_classification(&spec).unwrap();
    let features: Vec<String> = (0..4).map(|j| format!("num_{j}")).collect();
    let raw = Array2::from_shape_fn((frame.height(), 4), |(i, j)| {
        frame.column(&features[j]).unwrap().f64().unwrap().get(i).unwrap()
    });
    let labels = LabelEncoder::from_classes(vec!["c0".into(), "c1".into()]);
    let y: Vec<usize> =
        frame.column("label").unwrap().str().unwrap().iter().flatten().map(|l| usize::from(l == "c1")).collect();
    let scaler = StandardScaler::fit(raw.view(), &features).unwrap();
    let mut x = raw.clone();
    scaler.transform(&mut x).unwrap();
    let cfg = TrainConfig { epochs: 3, device: DeviceSpec::Cpu, ..TrainConfig::default() };
    let trained = train(
        &cfg,
        &ModelConfig::mlp(4, &[16], 2),
        &Examples::new(x.mapv(|v| v as f32), y).unwrap(),
        None,
        None,
        &mut (),
    )
    .unwrap();
    let profile = DatasetProfile::of(&frame.select(features.clone()).unwrap(), &ProfileOptions::default()).unwrap();
    let package = ModelPackage::new(
        &trained,
        PackageSpec {
            name: "synth".into(),
            train_config: cfg,
            features: features.clone(),
            input_schema: Schema::new(features.iter().map(|f| ColumnSpec::number(f.as_str())).collect()),
            scaler: Some(scaler),
            pipeline: None,
            labels,
            label_column: "label".into(),
            metrics: BTreeMap::from([("test_accuracy".into(), 0.9)]),
            lineage: Default::default(),
        },
    )
    .unwrap()
    .with_profile(profile);
    let out = dir.join("synth");
    package.save(&out).unwrap();
    (out, features)
}

fn stream(drift: Option<InjectedDrift>) -> DataFrame {
    let spec = SyntheticSpec {
        rows: 600,
        numeric: 4,
        categorical: 0,
        classes: 2,
        seed: 7,
        sample: 3,
        drift,
        ..SyntheticSpec::default()
    };
    synthetic_classification(&spec).unwrap()
}

#[test]
fn drift_is_flagged_on_a_shifted_stream_and_fires_the_trigger_but_not_on_an_unshifted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (pkg, features) = synthetic_package(dir.path());
    let fired = dir.path().join("fired.txt");
    let monitor = MonitorConfig {
        window_rows: 500,
        min_rows: 300,
        interval: Duration::from_millis(100),
        trigger: Some(Trigger {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("echo \"$KILN_TRIGGER $KILN_MODEL $KILN_VERSION\" >> {}", fired.display()),
            ],
            on_degradation: false,
            ..Trigger::default()
        }),
        ..MonitorConfig::default()
    };
    let start = || {
        let options = ServeOptions { monitor: monitor.clone(), ..Default::default() };
        ServerHandle::start_with("127.0.0.1:0", vec![LoadedModel::from_dir("synth", "4", &pkg).unwrap()], options)
            .unwrap()
    };

    // The same population, another draw: no drift, no trigger. Its labels come back
    // swapped, so the model looks degraded (and the trigger ignores degradation here).
    let steady = start();
    let mut frame = stream(None);
    let swapped: Vec<&str> = frame
        .column("label")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .map(|l| if l == "c0" { "c1" } else { "c0" })
        .collect();
    frame.with_column(Column::new("swapped".into(), swapped)).unwrap();
    let mut spec = SimulateSpec::new(&steady.url(), "synth", features.clone());
    spec.label_column = Some("swapped".into());
    let report = simulate(&frame, &spec).unwrap();
    assert_eq!(report.statuses.get(&200), Some(&600));
    assert_eq!(report.feedback_joined, 600);
    let calm: Value = Client::new(&steady.url()).get("/v2/models/synth/monitor").unwrap();
    assert_eq!(calm["window_rows"], json!(500));
    assert_eq!(calm["drift_detected"], json!(false), "{calm}");
    assert_eq!(calm["recent_labeled"], json!(500));
    assert!(calm["online_accuracy"].as_f64().unwrap() < 0.5, "{calm}");
    assert_eq!(calm["degraded"], json!(true), "{calm}");
    assert_eq!(calm["drift"]["columns"].as_array().unwrap().len(), 4);
    std::thread::sleep(Duration::from_millis(400));
    assert!(!fired.exists(), "the trigger fired without drift");
    drop(steady);

    // Shifted by 1.5 standard deviations: drift on every feature, and the trigger runs.
    let shifted = start();
    let drift = InjectedDrift { mean_shift: 1.5, ..InjectedDrift::default() };
    simulate(&stream(Some(drift)), &SimulateSpec::new(&shifted.url(), "synth", features)).unwrap();
    let report: Value = Client::new(&shifted.url()).get("/v2/models/synth/monitor").unwrap();
    assert_eq!(report["drift_detected"], json!(true), "{report}");
    assert_eq!(report["drift"]["share_drifted"], json!(1.0), "{report}");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&fired).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(text.trim(), "drift synth 4");
    let metrics = super::metrics_text(&shifted);
    assert!(metrics.contains("kiln_drift_detected{model=\"synth\"} 1"), "{metrics}");
    assert!(metrics.contains("kiln_drift_feature_drifted{model=\"synth\",feature=\"num_0\""), "{metrics}");
    assert!(metrics.contains("kiln_monitor_triggers_total{model=\"synth\"} 1"), "{metrics}");
}

#[test]
fn the_admin_api_needs_its_token_and_moves_registry_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let store = Store::open(dir.path().join("store")).unwrap();
    let registry = store.registry();
    for _ in 0..2 {
        registry.register("toy", &pkg, RegisterOptions::default()).unwrap();
    }
    registry.set_alias("toy", "production", 1).unwrap();
    registry.set_alias("toy", "canary", 2).unwrap();
    let model = LoadedModel::from_registry(&store, "toy", "production").unwrap();

    // No token configured: the admin API is off.
    let closed =
        ServerHandle::start("127.0.0.1:0", vec![LoadedModel::from_registry(&store, "toy", "1").unwrap()]).unwrap();
    let resp = agent().get(&format!("{}/admin/models/toy", closed.url())).call().unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    let options = ServeOptions { store: Some(store.clone()), admin_token: Some("t0ken".into()), ..Default::default() };
    let server = ServerHandle::start_with("127.0.0.1:0", vec![model], options).unwrap();
    let admin = |method: &str, path: &str, token: Option<&str>, body: Option<Value>| -> (u16, Value) {
        let url = format!("{}/admin/models/toy{path}", server.url());
        let auth = token.map(|t| format!("Bearer {t}"));
        let call = match (method, body) {
            ("get", _) => {
                let mut r = agent().get(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            ("delete", _) => {
                let mut r = agent().delete(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = agent().post(&url).content_type("application/json");
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send(body.unwrap_or(Value::Null).to_string())
            }
        };
        let mut resp = call.unwrap();
        let status = resp.status().as_u16();
        (status, serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
    };
    assert_eq!(admin("get", "", None, None).0, 401);
    assert_eq!(admin("get", "", Some("wrong"), None).0, 401);
    assert_eq!(admin("post", "/promote", Some("t0ken"), None).0, 409, "nothing to promote yet");
    assert_eq!(admin("post", "/canary", Some("t0ken"), Some(json!({"version": "canary"}))).0, 400, "percent missing");
    assert_eq!(admin("post", "/canary", Some("t0ken"), Some(json!({"version": "7", "percent": 5}))).0, 404);
    assert_eq!(admin("post", "/canary", Some("t0ken"), Some(json!({"version": "1", "percent": 5}))).0, 409, "1 serves");

    let (status, body) = admin("post", "/canary", Some("t0ken"), Some(json!({"version": "canary", "percent": 25})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["canary"], json!({"version": "2", "registry_version": 2, "percent": 25.0}));
    let (_, body) = admin("post", "/canary", Some("t0ken"), Some(json!({"version": "2", "percent": 60})));
    assert_eq!(body["canary"]["percent"], json!(60.0), "same version: only the share changes");

    let (status, body) = admin("post", "/promote", Some("t0ken"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["primary"]["version"], &body["previous"]["version"], &body["canary"]),
        (&json!("2"), &json!("1"), &Value::Null)
    );
    let aliases = registry.aliases("toy").unwrap();
    assert_eq!(aliases.get("production"), Some(&2));
    assert_eq!(aliases.get("canary"), None, "the canary alias goes with the promotion");
    let answer: InferResponse = Client::new(&server.url()).infer("toy", &[vec![1.0, 2.0, 3.0]]).unwrap();
    assert_eq!(answer.model_version, "2");

    let (status, body) = admin("post", "/rollback", Some("t0ken"), None);
    assert_eq!((status, &body["primary"]["version"]), (200, &json!("1")));
    assert_eq!(registry.aliases("toy").unwrap().get("production"), Some(&1));
    assert_eq!(admin("post", "/rollback", Some("t0ken"), None).0, 409, "nothing left to roll back");
    let events: Vec<&str> = body["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["canary_set", "canary_percent", "promoted", "rolled_back"]);
    // The registry recorded why each alias moved.
    let history = registry.history("toy").unwrap();
    assert!(history.iter().any(|e| e.reason.as_deref() == Some("promoted by kiln-serve")));
    assert!(history.iter().any(|e| e.reason.as_deref() == Some("rolled back by kiln-serve")));
}

#[test]
fn prediction_log_sampling_keeps_whole_requests() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let store = Store::open(dir.path().join("store")).unwrap();
    let log = LogConfig { sample_rate: 0.25, ..LogConfig::default() };
    let options = ServeOptions { store: Some(store.clone()), log, ..Default::default() };
    let server =
        ServerHandle::start_with("127.0.0.1:0", vec![LoadedModel::from_dir("toy", "1", &pkg).unwrap()], options)
            .unwrap();
    let x = rows(2);
    let body = |i: usize| {
        json!({"id": format!("p{i}"), "inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64",
            "data": [x.row(0).to_vec(), x.row(1).to_vec()]}]})
    };
    for i in 0..400 {
        let (status, _, _) = post_with(&format!("{}/v2/models/toy/infer", server.url()), None, &body(i));
        assert_eq!(status, 200);
    }
    server.shutdown().unwrap();
    let logged = store.sql("SELECT request_id, count(*) AS n FROM predictions GROUP BY request_id").unwrap();
    let requests = logged.height();
    assert!((60..140).contains(&requests), "{requests} of 400 requests logged at a 25% rate");
    let rows: Vec<u32> = counts(&logged, "n");
    assert!(rows.iter().all(|n| *n == 2), "a sampled request is logged whole");
}
