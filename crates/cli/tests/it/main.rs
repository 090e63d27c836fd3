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

/// Starts `kiln track-server` on a free port and returns it with its URL (its first line).
fn track_server(store: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(store)
        .args(["track-server", "--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start kiln track-server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("the URL is printed").to_string();
    (child, url)
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

#[test]
fn track_server_serves_remote_runs_and_push_sends_the_spool() {
    use kiln_track::RunStatus;
    use kiln_track::client::Client;

    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let spool = dir.path().join("spool");

    // Logged while no server runs: spooled.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let offline = Client::new(&dead).with_spool(&spool).with_retries(0, std::time::Duration::ZERO);
    let mut run = offline.run_builder("cli").capture_environment(false).start().unwrap();
    run.log_metric("loss", 1, 0.5).unwrap();
    let spooled_id = run.id().to_string();
    run.finish().unwrap();

    let (mut server, url) = track_server(&store_dir, &[]);
    let client = Client::new(&url).with_spool(&spool).with_retries(1, std::time::Duration::from_millis(10));
    let mut live = client.run_builder("cli").capture_environment(false).start().unwrap();
    live.log_metric("loss", 1, 0.25).unwrap();
    live.flush().unwrap();
    let live_id = live.id().to_string();

    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["push", "--url", &url])
        .arg("--spool")
        .arg(&spool)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).starts_with("pushed 1 run(s), 1 metric value(s)"), "{}", stdout(&out));

    // SIGTERM: the server stops cleanly and ends the run still open as killed (resumable).
    assert!(terminate(&mut server).success());
    let store = Store::open(&store_dir).unwrap();
    assert_eq!(store.run(&spooled_id).unwrap().status(), RunStatus::Completed);
    assert_eq!(store.metrics(&spooled_id).unwrap()[0].value, 0.5);
    let killed = store.run(&live_id).unwrap();
    assert_eq!(killed.status(), RunStatus::Killed);
    assert_eq!(store.metrics(&live_id).unwrap()[0].value, 0.25, "flushed before the server stopped");
    drop(live);

    // Beyond loopback without a token: refused with the reason.
    let out = kiln(&store_dir, &["track-server", "--addr", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"), "{out:?}");
}
