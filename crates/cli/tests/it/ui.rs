//! The web UI end to end: `kiln ui` over a generated store, driven by headless Chromium
//! through chromedriver (Debian's `chromium` and `chromium-driver`). Screenshots go to
//! `<target>/tmp/ui-screenshots/`. Skips when Chromium is not installed, unless
//! `KILN_REQUIRE_CHROMIUM=1` (as in CI).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_track::{FeedbackRecord, PredictionRecord, RegisterOptions, Store};
use serde_json::{Value, json};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A minimal W3C WebDriver client.
struct Browser {
    base: String,
    _driver: Killed,
}

impl Browser {
    fn start(profile: &std::path::Path) -> Option<Browser> {
        let have = |p: &str| std::path::Path::new(p).exists();
        if !have("/usr/bin/chromium") || !have("/usr/bin/chromedriver") {
            assert!(
                std::env::var("KILN_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
                "KILN_REQUIRE_CHROMIUM=1 but /usr/bin/chromium or /usr/bin/chromedriver is missing (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "skipping: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Killed(driver);
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{root}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     format!("--user-data-dir={}", profile.display())]}}}});
        let session: Value = ureq::post(&format!("{root}/session"))
            .send_json(&caps)
            .expect("new session")
            .body_mut()
            .read_json()
            .unwrap();
        let id = session["value"]["sessionId"].as_str().expect("a session id").to_string();
        Some(Browser { base: format!("{root}/session/{id}"), _driver: driver })
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let mut r = ureq::post(&format!("{}{path}", self.base))
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&body)
            .unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        assert!(r.status().is_success(), "{path}: {v}");
        v["value"].clone()
    }

    fn get(&self, path: &str) -> Value {
        let v: Value = ureq::get(&format!("{}{path}", self.base)).call().unwrap().body_mut().read_json().unwrap();
        v["value"].clone()
    }

    fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    fn eval(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
    }

    /// Waits until `script` returns something truthy; returns it.
    fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(script);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            let error = self.eval("const e = document.querySelector('.error'); return e ? e.textContent : null");
            assert!(error.is_null(), "{what}: the page shows an error: {error}");
            assert!(Instant::now() < deadline, "{what}: timed out waiting for `{script}`");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element id").to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.post(&format!("/element/{id}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.post(&format!("/element/{id}/value"), json!({ "text": text }));
    }

    fn screenshot(&self, name: &str) {
        let png = decode_base64(self.get("/screenshot").as_str().unwrap());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, c)| n | (u32::from(value(*c)) << (18 - 6 * i)));
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// A sweep of 100 trials under one parent run, 20 baseline runs, a model with two versions,
/// and a prediction log with feedback.
fn generate(store: &Store) -> (String, usize, String) {
    let parent = store.run_builder("sweep").name("lr-sweep").capture_environment(false).start().unwrap();
    let parent_id = parent.id().to_string();
    let mut above = 0;
    let mut best = (f64::MIN, String::new());
    for i in 0..100u32 {
        let mut run = store.run_builder("sweep").parent(&parent_id).capture_environment(false).start().unwrap();
        let lr = 0.001 * f64::from(i + 1);
        let width = [32, 64, 128][i as usize % 3];
        run.log_params(&json!({"lr": lr, "width": width, "optimizer": if i % 2 == 0 { "adam" } else { "sgd" }}))
            .unwrap();
        let acc = 0.5 + 0.45 * (f64::from(i) / 99.0);
        for step in 1..=10u64 {
            run.log_metrics(step, &[("val_loss", 1.0 / step as f64 + lr), ("train_loss", 0.9 / step as f64)]).unwrap();
        }
        run.log_metric("val_accuracy", 10, acc).unwrap();
        if acc > 0.9 {
            above += 1;
        }
        if acc > best.0 {
            best = (acc, run.id().to_string());
        }
        run.finish().unwrap();
    }
    parent.finish().unwrap();
    for _ in 0..20 {
        let mut run = store.run_builder("baseline").capture_environment(false).start().unwrap();
        run.log_param("lr", 0.01).unwrap();
        run.log_metric("val_accuracy", 1, 0.7).unwrap();
        run.finish().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weights"), "w").unwrap();
    // A real reference profile (kiln-data's), of x in [0, 10) and two islands half and half.
    const ISLANDS: [&str; 2] = ["Biscoe", "Dream"];
    let mut csv = String::from("x,island\n");
    for i in 0..200 {
        csv += &format!("{},{}\n", f64::from(i) / 20.0, ISLANDS[i as usize % 2]);
    }
    std::fs::write(dir.path().join("train.csv"), csv).unwrap();
    let train = kiln_data::Dataset::load_csv(dir.path().join("train.csv")).unwrap();
    let profile = kiln_data::DatasetProfile::of(train.frame(), &kiln_data::ProfileOptions::default()).unwrap();
    std::fs::write(dir.path().join("profile.json"), profile.to_json().unwrap()).unwrap();
    std::fs::remove_file(dir.path().join("train.csv")).unwrap();
    let registry = store.registry();
    for acc in [0.9, 0.93] {
        let options = RegisterOptions { metrics: [("val_accuracy".to_string(), acc)].into(), ..Default::default() };
        registry.register("m", dir.path(), options).unwrap();
    }
    registry.set_alias_because("m", "production", 2, "better on validation").unwrap();
    let now = 1_796_000_000_000i64;
    let predictions: Vec<PredictionRecord> = (0..60)
        .map(|i| PredictionRecord {
            time_ms: now + i * 120_000,
            model: "m".into(),
            version: "2".into(),
            role: "primary".into(),
            request_id: format!("r{i}"),
            row: 0,
            // x has moved up (8 to 12.5, half of it past the training range); island has not.
            inputs: json!({"x": 8.0 + (i % 10) as f64 * 0.5, "island": ISLANDS[i as usize % 2]}).to_string(),
            label: if i % 3 == 0 { "cat".into() } else { "dog".into() },
            class: i % 2,
            probabilities: vec![0.4, 0.6],
            latency_us: 300 + i as u64,
        })
        .collect();
    store.append_predictions(&predictions).unwrap();
    let feedback: Vec<FeedbackRecord> = (0..30)
        .map(|i| FeedbackRecord {
            time_ms: now + i * 240_000,
            model: "m".into(),
            request_id: format!("r{i}"),
            row: 0,
            label: "dog".into(),
            version: Some("2".into()),
            predicted: Some("dog".into()),
            correct: Some(i % 5 != 0),
        })
        .collect();
    store.append_feedback(&feedback).unwrap();
    (parent_id, above, best.1)
}

#[test]
fn the_ui_lists_filters_opens_and_compares_runs_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let Some(browser) = Browser::start(&dir.path().join("profile")) else { return };
    let store = Store::open(dir.path().join("store")).unwrap();
    let (parent, above, best) = generate(&store);

    let mut server = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(store.root())
        .args(["ui", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _server = Killed(server);
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("the URL is printed").to_string();

    // The runs table: first page of 50, newest first, 121 runs in all.
    browser.open(&format!("{url}#/runs"));
    browser.wait_for("runs table", "return document.querySelectorAll('#runs-table tr.run-row').length === 50");
    let total = browser.eval("return document.getElementById('total').textContent");
    assert_eq!(total, "1–50 of 121 runs");
    browser.screenshot("runs");
    browser.click("#next");
    browser.wait_for("page 2", "return document.getElementById('total').textContent.startsWith('51–100')");

    // Filter by a metric, typed into the box.
    browser.open(&format!("{url}#/runs"));
    browser.wait_for(
        "page 1",
        "const t = document.getElementById('total'); return t && t.textContent.startsWith('1–50 ')",
    );
    browser.type_into("#filter", "val_accuracy > 0.9\u{E007}");
    let want = format!("1–{above} of {above} runs");
    browser.wait_for("filtered", &format!("return document.getElementById('total').textContent === '{want}'"));
    browser.screenshot("filtered");

    // Sorted by a metric on the server: the best trial first; open it and see its charts.
    browser.open(&format!("{url}#/runs?experiment=sweep&sort=metric:val_accuracy&order=desc"));
    browser
        .wait_for("sorted", "return document.querySelector('th.sorted[data-sort=\"metric:val_accuracy\"]') !== null");
    let first = browser.wait_for(
        "sorted rows",
        "const r = document.querySelector('#runs-table tr.run-row'); return r && r.dataset.run",
    );
    assert_eq!(first, best.as_str());
    browser.click("#runs-table tr.run-row a");
    browser.wait_for("run page", "return document.querySelectorAll('.metric-chart svg path.series').length >= 2");
    let params = browser
        .eval("return document.body.textContent.includes('optimizer') && document.body.textContent.includes('width')");
    assert_eq!(params, true);
    browser.screenshot("run");

    // The sweep's trials compared: overlaid curves and one parallel-coordinates line each.
    browser.open(&format!("{url}#/compare?parent={parent}&metric=val_loss"));
    browser.wait_for(
        "parallel coordinates",
        "return document.querySelectorAll('#parallel svg path.pc-line').length === 100",
    );
    browser.wait_for("curves", "return document.querySelectorAll('#curves svg path.series').length === 40");
    browser.screenshot("compare");

    // Registry and serving monitor.
    browser.open(&format!("{url}#/model/m"));
    browser.wait_for("versions", "return document.querySelectorAll('#versions-table tbody tr').length === 2");
    let history = browser.eval("return document.getElementById('history-table').textContent");
    assert!(history.as_str().unwrap().contains("better on validation"), "{history}");
    browser.screenshot("model");
    browser.open(&format!("{url}#/serving/m"));
    let row =
        browser.wait_for("serving", "const t = document.getElementById('serving-table'); return t && t.textContent");
    assert!(row.as_str().unwrap().contains("60") && row.as_str().unwrap().contains("0.8000"), "{row}");
    // Input drift against the training profile: x flagged and listed first, island not.
    let order = browser.wait_for(
        "drift",
        "const c = [...document.querySelectorAll('#drift .drift-chart')]; \
         return c.length === 2 && c.map((e) => e.dataset.feature + (e.classList.contains('drifted') ? '!' : '')).join(',')",
    );
    assert_eq!(order, "x!,island");
    let bars =
        browser.eval("return document.querySelectorAll('#drift .drift-chart[data-feature=x] rect.drift-bar').length");
    assert_eq!(bars, json!(20), "10 bins, reference and current");
    browser.screenshot("serving");
}
