//! The tracking server and its client over real HTTP on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kiln_track::api::Value64;
use kiln_track::client::{Client, RunQuery};
use kiln_track::server::{ServerConfig, TrackingServer};
use kiln_track::{DatasetInput, Error, RunStatus, Store};

const TOKEN: &str = "correct-horse-battery-staple";

fn server(store: &Store, token: Option<&str>) -> TrackingServer {
    let config = ServerConfig { addr: "127.0.0.1:0".into(), token: token.map(String::from), ..ServerConfig::default() };
    TrackingServer::start(store.clone(), config).unwrap()
}

/// One HTTP/1.1 request over a plain socket, so paths reach the server exactly as written
/// (HTTP client libraries normalise `..` away). Returns the status and the body.
fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A port nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[test]
fn a_remote_run_round_trips_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let server = server(&store, Some(TOKEN));
    let client = Client::new(&server.url()).with_token(TOKEN).with_spool(dir.path().join("spool"));
    assert!(client.health().unwrap().token_required);

    let mut run = client.run_builder("digits").name("remote-mlp").tag("team", "vision").start().unwrap();
    assert!(!run.is_spooling());
    run.log_param("lr", 0.01).unwrap();
    run.log_params(&serde_json::json!({"optimizer": {"name": "adam"}})).unwrap();
    assert!(matches!(run.log_param("lr", 0.1), Err(Error::ParamConflict { .. })), "conflicts are caught locally");
    run.log_input(DatasetInput {
        name: "digits".into(),
        digest: "d1g1t5".into(),
        source: "data/digits.csv".into(),
        rows: Some(1797),
        context: Some("train".into()),
    })
    .unwrap();
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for step in 0..25_000u64 {
        let value = if step == 20_000 { f64::NAN } else { 1.0 / (1.0 + step as f64) };
        run.log_metric("loss", step, value).unwrap();
    }
    run.log_metric("loss", 12_345, 50.0).unwrap(); // a spike, logged again at an existing step
    run.set_tag("stage", "trained").unwrap();
    run.flush().unwrap();
    run.log_artifact_bytes("plots/loss.txt", b"loss went down").unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();

    // The store on the server's side, read directly.
    let rec = store.run(&id).unwrap();
    assert_eq!(rec.meta.name, "remote-mlp");
    assert_eq!(rec.status(), RunStatus::Completed);
    assert_eq!(rec.params["lr"], serde_json::json!(0.01));
    assert_eq!(rec.params["optimizer.name"], serde_json::json!("adam"));
    assert_eq!(rec.tags["team"], "vision");
    assert_eq!(rec.tags["stage"], "trained");
    assert_eq!(rec.inputs[0].digest, "d1g1t5");
    let env = rec.environment.as_ref().expect("the client's environment is recorded");
    assert!(env.cpu_count >= 1);
    let points = store.metrics(&id).unwrap();
    assert_eq!(points.len(), 25_000, "every step arrives once");
    assert!(points[20_000].value.is_nan(), "NaN survives the trip");
    assert_eq!(points[12_345].value, 50.0, "the later value of a step wins");
    assert!(points.iter().all(|p| p.ts >= before - 1), "client timestamps are kept");

    // The same through the API.
    let page = client.runs(&RunQuery { experiment: Some("digits".into()), ..RunQuery::default() }).unwrap();
    assert_eq!((page.total, page.runs.len()), (1, 1));
    assert_eq!(page.runs[0].status, RunStatus::Completed);
    assert_eq!(page.runs[0].final_metrics["loss"], Value64(1.0 / 25_000.0));
    let detail = client.run(&id).unwrap();
    assert_eq!(detail.params["lr"], serde_json::json!(0.01));
    assert!(detail.artifacts.iter().any(|a| a.name == "plots/loss.txt"));
    assert_eq!(client.artifact(&id, "plots/loss.txt").unwrap(), b"loss went down");
    let summaries = client.metrics(&id).unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!((summaries[0].points, summaries[0].non_finite), (25_000, 1));
    assert_eq!(summaries[0].max, Some(Value64(50.0)));
    let history = client.metric_history(&id, "loss", 200).unwrap();
    assert_eq!(history.total_points, 25_000);
    assert!(history.downsampled && history.points.len() <= 200, "{} points", history.points.len());
    assert!(history.points.windows(2).all(|w| w[0].step < w[1].step));
    assert!(history.points.iter().any(|p| p.step == 12_345 && p.value == Value64(50.0)), "the spike is kept");
    assert!(history.points.iter().any(|p| p.step == 20_000 && p.value.0.is_nan()), "the NaN is kept");
    assert_eq!(history.points.last().unwrap().step, 24_999);
    let experiments = client.experiments().unwrap();
    assert_eq!((experiments[0].experiment.as_str(), experiments[0].runs), ("digits", 1));
    match client.metric_history(&id, "nope", 100) {
        Err(Error::Http { status: Some(404), code: Some(code), .. }) => assert_eq!(code, "not_found"),
        other => panic!("expected a 404, got {other:?}"),
    }
    server.shutdown().unwrap();
}

#[test]
fn concurrent_remote_runs_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let server = server(&store, None);
    let url = server.url();
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let client = Client::new(&url).with_spool(dir.path().join("spool"));
                s.spawn(move || {
                    let mut run = client.run_builder("array").capture_environment(false).start().unwrap();
                    run.log_param("task", t).unwrap();
                    for step in 0..5_000u64 {
                        run.log_metrics(step, &[("a", step as f64), ("b", t as f64)]).unwrap();
                    }
                    let id = run.id().to_string();
                    run.finish().unwrap();
                    id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for id in &ids {
        let rec = store.run(id).unwrap();
        assert_eq!(rec.status(), RunStatus::Completed);
        assert_eq!(store.metrics(id).unwrap().len(), 10_000, "run {id}");
    }
    assert!(!dir.path().join("spool").exists(), "nothing was spooled");
}

#[test]
fn writes_need_the_token_and_reads_can_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let server = server(&store, Some(TOKEN));
    let addr = server.addr();
    let create = r#"{"experiment": "exp"}"#;
    let (status, body) = raw(addr, "POST", "/api/runs", &[], create);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    let (status, _) = raw(addr, "POST", "/api/runs", &[("Authorization", "Bearer wrong")], create);
    assert_eq!(status, 401);
    let (status, body) = raw(addr, "POST", "/api/runs", &[("Authorization", &bearer())], create);
    assert_eq!(status, 201, "{body}");
    assert_eq!(store.run_ids().unwrap().len(), 1, "only the authorised create made a run");
    // Reads are open unless protect_reads is set; the health check always is.
    assert_eq!(raw(addr, "GET", "/api/runs", &[], "").0, 200);
    // A client without the token is refused, not silently spooled.
    let spool = dir.path().join("spool");
    match Client::new(&server.url()).with_spool(&spool).start_run("exp") {
        Err(Error::Http { status: Some(401), .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(!spool.exists());
    server.shutdown().unwrap();

    let config = ServerConfig {
        addr: "127.0.0.1:0".into(),
        token: Some(TOKEN.into()),
        protect_reads: true,
        ..ServerConfig::default()
    };
    let guarded = TrackingServer::start(store.clone(), config).unwrap();
    assert_eq!(raw(guarded.addr(), "GET", "/api/runs", &[], "").0, 401);
    assert_eq!(raw(guarded.addr(), "GET", "/api/runs", &[("Authorization", &bearer())], "").0, 200);
    assert_eq!(raw(guarded.addr(), "GET", "/api/health", &[], "").0, 200);
}

#[test]
fn listening_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let open = ServerConfig { addr: "0.0.0.0:0".into(), ..ServerConfig::default() };
    match TrackingServer::start(store.clone(), open) {
        Err(Error::Server(message)) => assert!(message.contains("without a token"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let empty = ServerConfig { addr: "0.0.0.0:0".into(), token: Some(String::new()), ..ServerConfig::default() };
    assert!(TrackingServer::start(store.clone(), empty).is_err(), "an empty token is no token");
    let tokened = ServerConfig { addr: "0.0.0.0:0".into(), token: Some(TOKEN.into()), ..ServerConfig::default() };
    let server = TrackingServer::start(store, tokened).unwrap();
    // Only loopback traffic in tests: talk to it through 127.0.0.1.
    let local = SocketAddr::from(([127, 0, 0, 1], server.addr().port()));
    assert_eq!(raw(local, "POST", "/api/runs", &[], r#"{"experiment": "exp"}"#).0, 401);
}

#[test]
fn artifact_paths_cannot_escape_the_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "do not serve me").unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let mut run = store.run_builder("exp").capture_environment(false).start().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::write(model.join("weights.bin"), [1u8, 2, 3]).unwrap();
    std::fs::write(model.join("sub/config.json"), "{}").unwrap();
    run.log_artifact("model", &model).unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let server = server(&store, Some(TOKEN));
    let addr = server.addr();

    let (status, body) = raw(addr, "GET", &format!("/api/runs/{id}/artifacts/model/weights.bin"), &[], "");
    assert_eq!((status, body.as_bytes()), (200, &[1u8, 2, 3][..]));
    let (status, body) = raw(addr, "GET", &format!("/api/runs/{id}/artifacts/model"), &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("sub/config.json"), "a directory artifact lists its files: {body}");

    // Names that would escape are refused as names (400), however they are encoded.
    let escapes = [
        format!("/api/runs/{id}/artifacts/../../store.json"),
        format!("/api/runs/{id}/artifacts/model/../../../../secret.txt"),
        format!("/api/runs/{id}/artifacts/%2e%2e/%2e%2e/%2e%2e/secret.txt"),
        format!("/api/runs/{id}/artifacts/model/..%2F..%2F..%2F..%2Fsecret.txt"),
        format!("/api/runs/{id}/artifacts/%2Fetc%2Fpasswd"),
        format!("/api/runs/{id}/artifacts/model%5C..%5C..%5Csecret.txt"),
        "/api/runs/..%2F..%2F..%2Fsecret.txt/artifacts/x".to_string(),
    ];
    for path in &escapes {
        let (status, body) = raw(addr, "GET", path, &[], "");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"code\":\"invalid\""), "{path}: {body}");
    }
    // Paths no route matches are 404; nothing leaks either way.
    for path in ["/api/runs/../../secret.txt", "/../secret.txt"] {
        let (status, body) = raw(addr, "GET", path, &[], "");
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("do not serve me"), "{path} leaked: {body}");
    }
    // Uploads cannot escape either, even into a run that takes uploads, and nothing is
    // written outside the store.
    let (status, body) = raw(addr, "POST", "/api/runs", &[("Authorization", &bearer())], r#"{"experiment": "exp"}"#);
    assert_eq!(status, 201, "{body}");
    let open: serde_json::Value = serde_json::from_str(&body).unwrap();
    let open = open["run_id"].as_str().unwrap();
    for name in ["../../evil.txt", "..%2F..%2Fevil.txt", "%2Fevil.txt", "a/./b"] {
        let path = format!("/api/runs/{open}/artifacts/{name}");
        let (status, body) = raw(addr, "PUT", &path, &[("Authorization", &bearer())], "x");
        assert_eq!(status, 400, "{name}: {body}");
    }
    let (status, body) =
        raw(addr, "PUT", &format!("/api/runs/{open}/artifacts/fine.txt"), &[("Authorization", &bearer())], "x");
    assert_eq!(status, 200, "a proper name is accepted: {body}");
    assert!(!dir.path().join("evil.txt").exists() && !dir.path().join("store/evil.txt").exists());
}

#[test]
fn a_client_spools_when_the_server_is_down_and_pushes_later() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let offline = Client::new(&dead_url()).with_spool(&spool).with_retries(1, Duration::from_millis(10));
    let mut run = offline.run_builder("offline").name("on-a-plane").tag("site", "node17").start().unwrap();
    assert!(run.is_spooling(), "an unreachable server means spooling, not an error");
    run.log_param("lr", 0.5).unwrap();
    for step in 0..1_000u64 {
        run.log_metric("loss", step, 1.0 / (1.0 + step as f64)).unwrap();
    }
    run.log_artifact_bytes("notes.txt", b"written offline").unwrap();
    let id = run.id().to_string();
    run.finish().unwrap();
    let spooled = Store::open(&spool).unwrap().run(&id).unwrap();
    assert_eq!(spooled.status(), RunStatus::Completed);

    let store = Store::open(dir.path().join("store")).unwrap();
    let server = server(&store, Some(TOKEN));
    let online = Client::new(&server.url()).with_token(TOKEN).with_spool(&spool);
    let report = online.sync_spool().unwrap();
    // notes.txt, and git.diff when the tree running the test is dirty.
    let files = spooled.artifacts.values().map(|a| a.files.len()).sum::<usize>();
    assert!(spooled.artifacts.contains_key("notes.txt"));
    assert_eq!((report.runs_pushed, report.points_pushed, report.artifacts_pushed), (1, 1_000, files), "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    let rec = store.run(&id).unwrap();
    assert_eq!(rec.meta.name, "on-a-plane");
    assert_eq!(rec.status(), RunStatus::Completed);
    assert_eq!(rec.params["lr"], serde_json::json!(0.5));
    assert_eq!(rec.tags["site"], "node17");
    assert_eq!(store.metrics(&id).unwrap().len(), 1_000);
    assert_eq!(online.artifact(&id, "notes.txt").unwrap(), b"written offline");

    let again = online.sync_spool().unwrap();
    assert_eq!((again.runs_pushed, again.already_pushed), (0, 1));
    assert_eq!(store.metrics(&id).unwrap().len(), 1_000);
}

#[test]
fn a_run_survives_a_server_outage_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let spool = dir.path().join("spool");
    let first = server(&store, None);
    let addr = first.addr();
    let client = Client::new(&first.url()).with_spool(&spool).with_retries(1, Duration::from_millis(10));
    let mut run = client.run_builder("outage").capture_environment(false).start().unwrap();
    for step in 0..500u64 {
        run.log_metric("loss", step, step as f64).unwrap();
    }
    run.flush().unwrap();
    let id = run.id().to_string();
    assert_eq!(store.metrics(&id).unwrap().len(), 500, "flushed points are on the server's disk");
    first.shutdown().unwrap();
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Killed, "a stopping server ends its open runs");

    for step in 500..1_000u64 {
        run.log_metric("loss", step, step as f64).unwrap();
    }
    run.flush().unwrap();
    assert!(run.is_spooling());
    run.finish().unwrap();

    // The server comes back on the same address; the spool is pushed into the same run.
    let config = ServerConfig { addr: addr.to_string(), ..ServerConfig::default() };
    let second = TrackingServer::start(store.clone(), config).unwrap();
    let report = client.sync_spool().unwrap();
    assert_eq!(report.runs_pushed, 1, "{report:?}");
    let rec = store.run(&id).unwrap();
    assert_eq!(rec.status(), RunStatus::Completed);
    assert_eq!(rec.state.attempt, 2, "the server resumed the run it had ended as killed");
    let points = store.metrics(&id).unwrap();
    assert_eq!(points.len(), 1_000);
    assert!(points.iter().enumerate().all(|(i, p)| p.step == i as u64 && p.value == i as f64));
    second.shutdown().unwrap();
}

#[test]
fn silent_clients_have_their_runs_ended_and_replays_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let config =
        ServerConfig { addr: "127.0.0.1:0".into(), idle_timeout: Duration::from_secs(1), ..ServerConfig::default() };
    let server = TrackingServer::start(store.clone(), config).unwrap();
    let addr = server.addr();
    let (status, body) =
        raw(addr, "POST", "/api/runs", &[], r#"{"experiment": "exp", "run_id": "0123456789abcdef0123"}"#);
    assert_eq!(status, 201, "{body}");
    let (status, _) = raw(addr, "POST", "/api/runs", &[], r#"{"experiment": "exp", "run_id": "0123456789abcdef0123"}"#);
    assert_eq!(status, 200, "creating again is idempotent");
    let (status, _) =
        raw(addr, "POST", "/api/runs", &[], r#"{"experiment": "other", "run_id": "0123456789abcdef0123"}"#);
    assert_eq!(status, 400, "the same id in another experiment is refused");
    let id = "0123456789abcdef0123";
    let batch = r#"{"params": {"lr": 0.1}, "metrics": [{"key": "loss", "step": 1, "value": 0.5, "ts": 42}, {"key": "loss", "step": 2, "value": "NaN"}]}"#;
    for _ in 0..2 {
        let (status, body) = raw(addr, "POST", &format!("/api/runs/{id}/log"), &[], batch);
        assert_eq!(status, 200, "{body}");
    }
    let points = store.metrics(id).unwrap();
    assert_eq!(points.len(), 2, "a replayed batch is counted once");
    assert_eq!(points[0].ts, 42, "the client's timestamp is kept");
    assert!(points[1].value.is_nan());
    // A batch with anything invalid applies nothing of itself.
    let bad = r#"{"params": {"momentum": 0.9}, "metrics": [{"key": "acc", "step": 1, "value": 0.5}, {"key": "", "step": 1, "value": 1}]}"#;
    let (status, body) = raw(addr, "POST", &format!("/api/runs/{id}/log"), &[], bad);
    assert_eq!(status, 400, "{body}");
    let rec = store.run(id).unwrap();
    assert!(!rec.params.contains_key("momentum"), "{:?}", rec.params);
    assert_eq!(store.metrics(id).unwrap().len(), 2);
    let (status, body) = raw(addr, "POST", &format!("/api/runs/{id}/log"), &[], r#"{"params": {"lr": 0.2}}"#);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("param_conflict"), "{body}");
    let (status, body) = raw(addr, "POST", &format!("/api/runs/{id}/log"), &[], r#"{"metrics": [{"key": "loss"}]}"#);
    assert_eq!(status, 422, "a malformed batch is refused with a reason: {body}");
    assert!(body.contains("step"), "{body}");

    // Silence for longer than the idle timeout: the run is ended as killed ...
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.run(id).unwrap().state.status == RunStatus::Running {
        assert!(std::time::Instant::now() < deadline, "the idle run was never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rec = store.run(id).unwrap();
    assert_eq!(rec.status(), RunStatus::Killed);
    assert!(rec.state.error.as_deref().unwrap_or_default().contains("no word"), "{:?}", rec.state.error);
    // ... and resumed by the next batch.
    let (status, body) = raw(
        addr,
        "POST",
        &format!("/api/runs/{id}/log"),
        &[],
        r#"{"metrics": [{"key": "loss", "step": 3, "value": 0.25}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""attempt":2"#), "{body}");
    let (status, _) = raw(addr, "POST", &format!("/api/runs/{id}/end"), &[], r#"{"status": "completed"}"#);
    assert_eq!(status, 200);
    let (status, _) = raw(addr, "POST", &format!("/api/runs/{id}/end"), &[], r#"{"status": "completed"}"#);
    assert_eq!(status, 200, "ending again the same way is a retry");
    let (status, body) = raw(
        addr,
        "POST",
        &format!("/api/runs/{id}/log"),
        &[],
        r#"{"metrics": [{"key": "loss", "step": 4, "value": 0.1}]}"#,
    );
    assert_eq!(status, 409, "an ended run takes no more data: {body}");
    assert!(body.contains("run_ended"), "{body}");
    assert_eq!(store.metrics(id).unwrap().len(), 3);
    let (status, _) = raw(addr, "GET", "/api/runs/not-a-run-id", &[], "");
    assert_eq!(status, 400);
    let (status, _) = raw(addr, "GET", "/api/runs?limit=100000", &[], "");
    assert_eq!(status, 400);
}

#[test]
fn the_registry_and_pages_of_runs_are_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut run =
            store.run_builder(if i % 2 == 0 { "even" } else { "odd" }).capture_environment(false).start().unwrap();
        run.log_metric("acc", 1, f64::from(i) / 10.0).unwrap();
        ids.push(run.id().to_string());
        run.finish().unwrap();
    }
    let package = dir.path().join("package");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join("model.json"), "{}").unwrap();
    let registry = store.registry();
    let options = kiln_track::RegisterOptions { run_id: Some(ids[4].clone()), ..Default::default() };
    registry.register("digits", &package, options.clone()).unwrap();
    registry.register("digits", &package, options).unwrap();
    registry.set_alias("digits", "production", 2).unwrap();
    registry.set_version_tag("digits", 2, "validated", "yes").unwrap();

    let server = server(&store, None);
    let client = Client::new(&server.url());
    let page = client.runs(&RunQuery { offset: 1, limit: Some(2), ..RunQuery::default() }).unwrap();
    assert_eq!(page.total, 5);
    let got: Vec<&str> = page.runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(got, [ids[3].as_str(), ids[2].as_str()], "newest first, second page of two");
    let even = client.runs(&RunQuery { experiment: Some("even".into()), ..RunQuery::default() }).unwrap();
    assert_eq!(even.total, 3);
    let done = client.runs(&RunQuery { status: Some(RunStatus::Running), ..RunQuery::default() }).unwrap();
    assert_eq!(done.total, 0);

    let models = client.models().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!((models[0].versions, models[0].latest, models[0].aliases["production"]), (2, Some(2), 2));
    let model = client.model("digits").unwrap();
    assert_eq!(model.versions[1].tags["validated"], "yes");
    assert_eq!(model.versions[1].version.lineage.run_id.as_deref(), Some(ids[4].as_str()));
    assert!(model.history.len() >= 4, "registered twice, alias set, tag set: {:?}", model.history);
    match client.model("nope") {
        Err(Error::Http { status: Some(404), .. }) => {}
        other => panic!("expected 404, got {other:?}"),
    }
}

#[test]
fn a_refused_batch_loses_no_metric_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let server = server(&store, None);
    let client = Client::new(&server.url()).with_spool(dir.path().join("spool"));
    let mut run = client.run_builder("exp").capture_environment(false).start().unwrap();
    let id = run.id().to_string();
    // Another writer sets lr on the server first; this client does not know.
    let (status, body) = raw(server.addr(), "POST", &format!("/api/runs/{id}/log"), &[], r#"{"params": {"lr": 1}}"#);
    assert_eq!(status, 200, "{body}");
    run.log_param("lr", 2).unwrap();
    for step in 0..100u64 {
        run.log_metric("loss", step, step as f64).unwrap();
    }
    match run.flush() {
        Err(Error::Http { status: Some(409), code: Some(code), .. }) => assert_eq!(code, "param_conflict"),
        other => panic!("expected the conflict, got {other:?}"),
    }
    assert_eq!(store.metrics(&id).unwrap().len(), 100, "the values were sent without the refused param");
    assert_eq!(store.run(&id).unwrap().params["lr"], serde_json::json!(1));
    assert!(!run.is_spooling());
    run.finish().unwrap();
    assert_eq!(store.run(&id).unwrap().status(), RunStatus::Completed);
}

#[test]
fn a_spooled_run_is_pushed_when_it_ends_if_the_server_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let spool = dir.path().join("spool");
    let url = dead_url();
    let client = Client::new(&url).with_spool(&spool).with_retries(1, Duration::from_millis(10));
    let mut run = client.run_builder("exp").capture_environment(false).start().unwrap();
    assert!(run.is_spooling());
    run.log_param("lr", 0.1).unwrap();
    for step in 0..300u64 {
        run.log_metric("loss", step, 1.0).unwrap();
    }
    let id = run.id().to_string();
    let config = ServerConfig { addr: url.trim_start_matches("http://").into(), ..ServerConfig::default() };
    let server = TrackingServer::start(store.clone(), config).unwrap();
    run.finish().unwrap();
    assert!(spool.join("runs").join(&id).join("pushed.json").exists(), "pushed at the end, and marked");
    let rec = store.run(&id).unwrap();
    assert_eq!((rec.status(), rec.params["lr"].clone()), (RunStatus::Completed, serde_json::json!(0.1)));
    assert_eq!(store.metrics(&id).unwrap().len(), 300);
    assert_eq!(Client::new(&server.url()).with_spool(&spool).sync_spool().unwrap().already_pushed, 1);
}

#[test]
fn large_artifacts_upload_within_the_configured_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let config = ServerConfig { addr: "127.0.0.1:0".into(), max_body_bytes: 8 << 20, ..ServerConfig::default() };
    let server = TrackingServer::start(store.clone(), config).unwrap();
    let client = Client::new(&server.url()).with_spool(dir.path().join("spool"));
    let mut run = client.run_builder("exp").capture_environment(false).start().unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    run.log_artifact_bytes("checkpoint.bin", &big).unwrap();
    let too_big = vec![0u8; 9 << 20];
    match run.log_artifact_bytes("huge.bin", &too_big) {
        Err(Error::Http { status: Some(413), .. }) => {}
        other => panic!("expected 413, got {other:?}"),
    }
    let id = run.id().to_string();
    run.finish().unwrap();
    assert_eq!(client.artifact(&id, "checkpoint.bin").unwrap(), big);
}

#[test]
fn concurrent_batches_for_a_killed_run_resume_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut run = store.run_builder("exp").capture_environment(false).start().unwrap();
    run.log_metric("loss", 0, 1.0).unwrap();
    let id = run.id().to_string();
    run.kill("preempted").unwrap();
    let server = server(&store, None);
    let addr = server.addr();
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=8u64)
            .map(|step| {
                let id = id.clone();
                s.spawn(move || {
                    let body = format!(r#"{{"metrics": [{{"key": "loss", "step": {step}, "value": 0.5}}]}}"#);
                    raw(addr, "POST", &format!("/api/runs/{id}/log"), &[], &body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|(status, _)| *status == 200), "{statuses:?}");
    let rec = store.run(&id).unwrap();
    assert_eq!(rec.state.attempt, 2, "one resume, whatever the number of waiting requests");
    assert_eq!(store.metrics(&id).unwrap().len(), 9);
}
