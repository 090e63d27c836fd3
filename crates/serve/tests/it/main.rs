//! kiln-serve over real HTTP on 127.0.0.1.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;

use kiln_data::{ColumnSpec, LabelEncoder, Schema, StandardScaler};
use kiln_serve::{BatchConfig, Client, InferResponse, LoadedModel, ServerHandle};
use kiln_track::{RegisterOptions, Store};
use kiln_train::{DeviceSpec, Examples, ModelConfig, ModelPackage, PackageSpec, TrainConfig, train};
use ndarray::Array2;
use serde_json::json;

const FEATURES: [&str; 3] = ["a", "b", "c"];

/// Raw rows whose class is whether a + b > 10.
fn rows(n: usize) -> Array2<f64> {
    Array2::from_shape_fn((n, 3), |(i, j)| ((i * 37 + j * 11) % 13) as f64)
}

mod deploy;

fn package_dir(dir: &std::path::Path) -> std::path::PathBuf {
    package_dir_with(dir, "pkg", ["low", "high"])
}

/// The toy package in `dir/<name>`, its classes named `classes` (swap them for a model that
/// is always wrong where the toy is right).
fn package_dir_with(dir: &std::path::Path, name: &str, classes: [&str; 2]) -> std::path::PathBuf {
    let raw = rows(120);
    let features: Vec<String> = FEATURES.map(String::from).to_vec();
    let scaler = StandardScaler::fit(raw.view(), &features).unwrap();
    let mut x = raw.clone();
    scaler.transform(&mut x).unwrap();
    let y: Vec<usize> = raw.rows().into_iter().map(|r| usize::from(r[0] + r[1] > 10.0)).collect();
    let cfg = TrainConfig { epochs: 5, device: DeviceSpec::Cpu, ..TrainConfig::default() };
    let trained = train(
        &cfg,
        &ModelConfig::mlp(3, &[8], 2),
        &Examples::new(x.mapv(|v| v as f32), y).unwrap(),
        None,
        None,
        &mut (),
    )
    .unwrap();
    let pkg = ModelPackage::new(
        &trained,
        PackageSpec {
            name: "toy".into(),
            train_config: cfg,
            features: features.clone(),
            input_schema: Schema::new(
                features.iter().map(|f| ColumnSpec::number(f.as_str()).range(0.0, 12.0)).collect(),
            ),
            scaler: Some(scaler),
            pipeline: None,
            labels: LabelEncoder::from_classes(classes.map(String::from).to_vec()),
            label_column: "y".into(),
            metrics: BTreeMap::new(),
            lineage: Default::default(),
        },
    )
    .unwrap();
    let out = dir.join(name);
    pkg.save(&out).unwrap();
    out
}

fn raw_post(url: &str, body: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent.post(url).content_type("application/json").send(body).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!({ "raw": text })))
}

#[test]
fn served_predictions_equal_in_process_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let store = Store::open(dir.path().join("store")).unwrap();
    let v = store.registry().register("toy", &pkg, RegisterOptions::default()).unwrap();
    store.registry().set_alias("toy", "production", v.version).unwrap();

    let server =
        ServerHandle::start("127.0.0.1:0", vec![LoadedModel::from_registry(&store, "toy", "production").unwrap()])
            .unwrap();
    assert!(server.addr().ip().is_loopback());
    let client = Client::new(&server.url());
    assert!(client.ready().unwrap());

    let input = rows(40);
    let expected = ModelPackage::load(&pkg).unwrap().predict(input.view()).unwrap();
    let as_rows: Vec<Vec<f64>> = input.rows().into_iter().map(|r| r.to_vec()).collect();
    let answer: InferResponse = client.infer("toy", &as_rows).unwrap();
    assert_eq!((answer.model_name.as_str(), answer.model_version.as_str()), ("toy", "1"));
    assert_eq!(answer.labels(), expected.iter().map(|p| p.label.clone()).collect::<Vec<_>>());
    let probs = answer.probabilities();
    assert_eq!(probs.len(), expected.len());
    for (served, local) in probs.iter().zip(&expected) {
        assert_eq!(served.len(), local.probabilities.len());
        for (s, l) in served.iter().zip(&local.probabilities) {
            // JSON carries f32 as its shortest decimal; allow for rounding through f64.
            assert!((s - l).abs() <= f32::EPSILON * l.abs().max(1.0), "{served:?} vs {:?}", local.probabilities);
        }
    }

    // One tensor per feature, named after it, gives the same answer as one [rows, 3] tensor.
    let columns: Vec<serde_json::Value> = FEATURES
        .iter()
        .enumerate()
        .map(|(j, f)| json!({"name": f, "shape": [40], "datatype": "FP64", "data": input.column(j).to_vec()}))
        .collect();
    let by_feature: InferResponse =
        client.post("/v2/models/toy/infer", &json!({"id": "r1", "inputs": columns})).unwrap();
    assert_eq!(by_feature.labels(), answer.labels());
    assert_eq!(by_feature.id.as_deref(), Some("r1"));
    server.shutdown().unwrap();
}

#[test]
fn bad_requests_get_clear_errors_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let server = ServerHandle::start("127.0.0.1:0", vec![LoadedModel::from_dir("toy", "7", &pkg).unwrap()]).unwrap();
    let url = format!("{}/v2/models/toy/infer", server.url());

    let cases: [(&str, u16, &str); 14] = [
        (
            r#"{"inputs": [{"name": "input", "shape": [4611686018427387904, 4], "datatype": "FP32", "data": [1]}]}"#,
            400,
            "too large",
        ),
        ("{not json", 400, "invalid inference request"),
        (r#"{"inputs": []}"#, 400, "no inputs"),
        (
            r#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}"#,
            400,
            "needs 3 values, got 2",
        ),
        (
            r#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}"#,
            400,
            "takes 3 features",
        ),
        (
            r#"{"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": [[1, 2, 3], [1, 99, 3]]}]}"#,
            400,
            "input row 2, feature `b`: expected a number in 0..=12, found 99",
        ),
        (
            r#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "BYTES", "data": ["x", "y", "z"]}]}"#,
            400,
            "must be numeric",
        ),
        (
            r#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "INT64", "data": [1, 2.5, 3]}]}"#,
            400,
            "input `input` (INT64), value 1: 2.5 is not an integer",
        ),
        (
            r#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, "2", 3]}]}"#,
            400,
            "value 1: expected a number or null",
        ),
        (
            r#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "COMPLEX", "data": [1, 2, 3]}]}"#,
            400,
            "datatype \"COMPLEX\" is not supported",
        ),
        (
            r#"{"inputs": [{"name": "input", "shape": [-1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}"#,
            400,
            "negative dimension",
        ),
        (
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}, {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}"#,
            400,
            "input `a` is given twice",
        ),
        (
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}, {"name": "b", "shape": [1], "datatype": "FP32", "data": [1]}]}"#,
            400,
            "missing inputs for features: c",
        ),
        (
            r#"{"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["1"]}, {"name": "b", "shape": [1], "datatype": "FP32", "data": [1]}]}"#,
            400,
            "input `a`: the feature is numeric, got BYTES",
        ),
    ];
    for (body, status, text) in cases {
        let (got, answer) = raw_post(&url, body);
        assert_eq!(got, status, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(text), "{body}: {message:?} lacks {text:?}");
    }
    let (status, answer) = raw_post(&format!("{}/v2/models/nope/infer", server.url()), "{}");
    assert_eq!(status, 404);
    assert!(answer["error"].as_str().unwrap().contains("nope"));
    let (status, _) = raw_post(&format!("{}/v2/models/toy/versions/3/infer", server.url()), "{}");
    assert_eq!(status, 404);

    let good = r#"{"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]}"#;
    assert_eq!(raw_post(&format!("{}/v2/models/toy/versions/7/infer", server.url()), good).0, 200);

    let client = Client::new(&server.url());
    let meta: serde_json::Value = client.get("/v2/models/toy").unwrap();
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3]));
    assert_eq!(meta["parameters"]["labels"], json!(["low", "high"]));
    let metrics = ureq::get(&format!("{}/metrics", server.url())).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(metrics.contains(r#"kiln_infer_requests_total{model="toy",version="7",code="400"} 14"#), "{metrics}");
    assert!(metrics.contains(r#"kiln_infer_rows_total{model="toy",version="7",code="200"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"kiln_infer_in_flight{model="toy"} 0"#), "{metrics}");
    let bad_timeout = ureq::Agent::config_builder().http_status_as_error(false).build();
    let bad_timeout: ureq::Agent = bad_timeout.into();
    let resp = bad_timeout.post(&url).header("kiln-timeout-ms", "soon").content_type("application/json").send(good);
    assert_eq!(resp.unwrap().status().as_u16(), 400);
    let err = client.infer("toy", &[vec![1.0, 2.0]]).unwrap_err().to_string();
    assert!(err.contains("HTTP 400") && err.contains("takes 3 features"), "{err}");
    server.shutdown().unwrap();
}

#[test]
fn loading_errors_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = LoadedModel::from_registry(&store, "ghost", "production").unwrap_err().to_string();
    assert!(err.contains("ghost"), "{err}");
    let err = LoadedModel::from_dir("x", "1", &dir.path().join("missing")).unwrap_err().to_string();
    assert!(err.contains("kiln-package.json"), "{err}");
    assert!(ServerHandle::start("256.0.0.1:0", Vec::<LoadedModel>::new()).is_err());
}

fn toy_server(dir: &std::path::Path, batching: BatchConfig) -> ServerHandle {
    let pkg = package_dir(dir);
    ServerHandle::start("127.0.0.1:0", vec![LoadedModel::from_dir("toy", "1", &pkg).unwrap().with_batching(batching)])
        .unwrap()
}

fn one_row(row: &[f64]) -> String {
    json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [row]}]}).to_string()
}

fn metrics_text(server: &ServerHandle) -> String {
    ureq::get(&format!("{}/metrics", server.url())).call().unwrap().body_mut().read_to_string().unwrap()
}

#[test]
fn sixty_four_concurrent_clients_get_their_own_answers_from_shared_batches() {
    let dir = tempfile::tempdir().unwrap();
    let batching = BatchConfig { max_delay: std::time::Duration::from_millis(20), ..BatchConfig::default() };
    let server = toy_server(dir.path(), batching);
    let input = rows(64);
    let expected = ModelPackage::load(&dir.path().join("pkg")).unwrap().predict(input.view()).unwrap();
    let url = format!("{}/v2/models/toy/infer", server.url());
    let barrier = std::sync::Barrier::new(64);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let (url, input, barrier) = (&url, &input, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    raw_post(url, &one_row(&input.row(i).to_vec()))
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let (status, answer) = h.join().unwrap();
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["outputs"][0]["data"][0], json!(expected[i].label), "row {i}");
        }
    });
    let metrics = metrics_text(&server);
    let alone: u64 = metrics
        .lines()
        .find(|l| l.starts_with(r#"kiln_infer_batch_rows_bucket{model="toy",le="1"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(alone < 64, "requests shared batches: only {alone} of 64 ran alone\n{metrics}");
    assert!(metrics.contains(r#"kiln_infer_requests_total{model="toy",version="1",code="200"} 64"#), "{metrics}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // Two requests may wait; a batch forms for 800 ms, so the third is refused.
    let batching = BatchConfig {
        queue_capacity: 2,
        max_delay: std::time::Duration::from_millis(800),
        max_batch_rows: 1000,
        ..BatchConfig::default()
    };
    let server = toy_server(dir.path(), batching);
    let url = format!("{}/v2/models/toy/infer", server.url());
    let body = one_row(&[1.0, 2.0, 3.0]);
    std::thread::scope(|scope| {
        let waiting: Vec<_> = (0..2).map(|_| scope.spawn(|| raw_post(&url, &body))).collect();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut refused = agent.post(&url).content_type("application/json").send(&body).unwrap();
        assert_eq!(refused.status().as_u16(), 503);
        assert_eq!(refused.headers().get("retry-after").unwrap(), "1");
        let text = refused.body_mut().read_to_string().unwrap();
        assert!(text.contains("overloaded"), "{text}");
        for w in waiting {
            assert_eq!(w.join().unwrap().0, 200);
        }
    });
    assert_eq!(raw_post(&url, &body).0, 200, "answered once the queue drained");
    assert!(metrics_text(&server).contains(r#"code="503"} 1"#));
}

#[test]
fn a_request_whose_deadline_passes_in_the_queue_answers_504() {
    let dir = tempfile::tempdir().unwrap();
    let batching = BatchConfig {
        max_delay: std::time::Duration::from_millis(400),
        max_batch_rows: 1000,
        ..BatchConfig::default()
    };
    let server = toy_server(dir.path(), batching);
    let url = format!("{}/v2/models/toy/infer", server.url());
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .post(&url)
        .header(kiln_serve::TIMEOUT_HEADER, "50")
        .content_type("application/json")
        .send(&one_row(&[1.0, 2.0, 3.0]))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 504);
    assert!(resp.body_mut().read_to_string().unwrap().contains("deadline of 50 ms"));
    // Without a header the default deadline (10 s) leaves room for the batch delay.
    assert_eq!(raw_post(&url, &one_row(&[1.0, 2.0, 3.0])).0, 200);
}

#[test]
fn nested_flat_and_per_feature_tensors_of_every_numeric_type_agree() {
    let dir = tempfile::tempdir().unwrap();
    let server = toy_server(dir.path(), BatchConfig::unbatched());
    let url = format!("{}/v2/models/toy/infer", server.url());
    let bodies = [
        json!({"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}]}),
        json!({"inputs": [{"name": "input", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}]}),
        json!({"inputs": [
            {"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 4]},
            {"name": "b", "shape": [2, 1], "datatype": "FP64", "data": [[2], [5]]},
            {"name": "c", "shape": [2], "datatype": "UINT8", "data": [3, 6]},
        ]}),
    ];
    let answers: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| {
            let (status, answer) = raw_post(&url, &b.to_string());
            assert_eq!(status, 200, "{b}: {answer}");
            answer["outputs"].clone()
        })
        .collect();
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
    // BOOL features are 0/1; null is a missing value, which this scaler model refuses by name.
    let missing = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, null, 3]}]});
    let (status, answer) = raw_post(&url, &missing.to_string());
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("feature `b`"), "{answer}");
    let bools =
        json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "BOOL", "data": [true, false, true]}]});
    assert_eq!(raw_post(&url, &bools.to_string()).0, 200);
}

#[test]
fn the_load_generator_measures_closed_and_open_loops() {
    use kiln_serve::{LoadMode, LoadSpec, run_load};
    let dir = tempfile::tempdir().unwrap();
    let server = toy_server(dir.path(), BatchConfig::default());
    let url = format!("{}/v2/models/toy/infer", server.url());
    let bodies: Vec<String> = rows(16).rows().into_iter().map(|r| one_row(&r.to_vec())).collect();
    let closed = LoadSpec {
        url: url.clone(),
        bodies: bodies.clone(),
        mode: LoadMode::Closed { concurrency: 8 },
        requests: 400,
        warmup: 20,
    };
    let report = run_load(&closed).unwrap();
    assert_eq!((report.requests, report.errors()), (400, 0), "{report:?}");
    assert!(report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms, "{report:?}");
    assert!(report.throughput > 0.0);
    // 100 requests at 200/s take half a second whatever the server's speed.
    let open =
        LoadSpec { mode: LoadMode::Open { rate: 200.0, workers: 4 }, requests: 100, warmup: 0, ..closed.clone() };
    let report = run_load(&open).unwrap();
    assert_eq!(report.errors(), 0);
    assert!((0.45..1.5).contains(&report.seconds), "{report:?}");
    let mut bad = closed.clone();
    bad.url = format!("{}/v2/models/ghost/infer", server.url());
    bad.requests = 5;
    bad.warmup = 0;
    assert_eq!(run_load(&bad).unwrap().statuses.get(&404), Some(&5));
    assert!(run_load(&LoadSpec { bodies: Vec::new(), ..closed }).is_err());
}

#[test]
fn every_route_in_the_openapi_document_answers_and_large_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = package_dir(dir.path());
    let store = Store::open(dir.path().join("store")).unwrap();
    for _ in 0..2 {
        store.registry().register("toy", &pkg, RegisterOptions::default()).unwrap();
    }
    let model = LoadedModel::from_registry(&store, "toy", "1").unwrap();
    let options = kiln_serve::ServeOptions {
        max_body_bytes: 4096,
        store: Some(store),
        admin_token: Some("s3cret".into()),
        ..Default::default()
    };
    let server = ServerHandle::start_with("127.0.0.1:0", vec![model], options).unwrap();
    let doc: serde_json::Value = Client::new(&server.url()).get("/openapi.json").unwrap();
    assert_eq!(doc["openapi"], json!("3.0.3"));
    let good = one_row(&[1.0, 2.0, 3.0]);
    let infer_once = json!({"id": "q1", "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]}]});
    // Every documented route, in an order where each call is valid: the table must cover
    // the document exactly.
    let calls: Vec<(&str, &str, String)> = vec![
        ("get", "/v2", String::new()),
        ("get", "/v2/health/live", String::new()),
        ("get", "/v2/health/ready", String::new()),
        ("get", "/v2/models/{name}", String::new()),
        ("get", "/v2/models/{name}/versions/{version}", String::new()),
        ("get", "/v2/models/{name}/ready", String::new()),
        ("post", "/v2/models/{name}/infer", infer_once.to_string()),
        ("post", "/v2/models/{name}/versions/{version}/infer", good.clone()),
        ("post", "/v2/models/{name}/feedback", json!({"id": "q1", "label": "low"}).to_string()),
        ("get", "/v2/models/{name}/monitor", String::new()),
        ("get", "/metrics", String::new()),
        ("get", "/openapi.json", String::new()),
        ("get", "/admin/models/{name}", String::new()),
        ("post", "/admin/models/{name}/canary", json!({"version": "2", "percent": 10}).to_string()),
        ("delete", "/admin/models/{name}/canary", String::new()),
        ("post", "/admin/models/{name}/shadow", json!({"version": "2"}).to_string()),
        ("post", "/admin/models/{name}/promote", String::new()),
        ("post", "/admin/models/{name}/rollback", String::new()),
        ("post", "/admin/models/{name}/shadow", json!({"version": "2"}).to_string()),
        ("delete", "/admin/models/{name}/shadow", String::new()),
    ];
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    let mut called: Vec<(String, String)> = calls.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    called.sort();
    called.dedup();
    documented.sort();
    assert_eq!(called, documented);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for (method, path, body) in &calls {
        let url = format!("{}{}", server.url(), path.replace("{name}", "toy").replace("{version}", "1"));
        let status = match *method {
            "get" => agent.get(&url).header("authorization", "Bearer s3cret").call(),
            "delete" => agent.delete(&url).header("authorization", "Bearer s3cret").call(),
            "post" => agent
                .post(&url)
                .header("authorization", "Bearer s3cret")
                .content_type("application/json")
                .send(body.as_str()),
            other => panic!("undocumented method {other}"),
        }
        .unwrap()
        .status()
        .as_u16();
        assert_eq!(status, 200, "{method} {path}");
    }
    let unknown = agent.get(&format!("{}/v2/nothing", server.url())).call().unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    let big = json!({"inputs": [{"name": "input", "shape": [1000, 3], "datatype": "FP64", "data": vec![1.0; 3000]}]});
    let resp = agent
        .post(&format!("{}/v2/models/toy/infer", server.url()))
        .content_type("application/json")
        .send(&big.to_string());
    let mut resp = resp.unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let answer: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert!(answer["error"].as_str().unwrap().contains("length limit"), "{answer}");
}
