//! The `kiln` binary against a real store.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod commands;
mod jobs;
mod train;
mod ui;

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

    let out = kiln(&store_dir, &["store", "compact"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("compacted 1 run(s), 1 metric point(s) into 1 batch(es)"), "{}", stdout(&out));
    assert_eq!(store.table_files("runs").unwrap().len(), 1);
    let out = kiln(&store_dir, &["sql", "SELECT run_id, value FROM latest_metrics WHERE key = 'test_accuracy'"]);
    let text = stdout(&out);
    assert!(text.contains(&id) && text.contains("0.875"), "the same answer from the compacted table: {text}");

    let text = stdout(&kiln(&store_dir, &["registry", "ls"]));
    assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("m ") && l.ends_with("production=v1")), "{text}");
    let text = stdout(&kiln(&store_dir, &["registry", "ls", "m"]));
    let line = text.lines().nth(1).unwrap();
    assert!(line.starts_with("v1 ") && line.contains(&id) && line.contains("production"), "{text}");
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

/// A file of the repository (cargo sets `CARGO_MANIFEST_DIR` when it runs the tests).
fn repo_file(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../..")
    .join(rel)
}

fn kiln_data(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).arg("data").args(args).output().expect("run kiln")
}

#[test]
fn data_validate_reports_failures_by_line_with_exit_3_and_quarantines_them() {
    let schema = repo_file("crates/data/tests/fixtures/penguins.schema.toml");
    let schema = schema.to_str().unwrap();
    let penguins = repo_file("data/penguins.csv");
    let out = kiln_data(&["validate", penguins.to_str().unwrap(), "--schema", schema]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("344 rows, all checks pass"), "{}", stdout(&out));

    // Two bad rows: an unknown species on file line 4, a bill of 999 mm on line 9.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&penguins).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[3] = lines[3].replacen("Adelie", "Dodo", 1);
    let fields: Vec<&str> = lines[8].split(',').collect();
    lines[8] = [&fields[..2], &["999"], &fields[3..]].concat().join(",");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let quarantine = dir.path().join("bad.parquet");
    let out = kiln_data(&[
        "validate",
        bad.to_str().unwrap(),
        "--schema",
        schema,
        "--json",
        "--quarantine",
        quarantine.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["rows"], 344);
    assert_eq!(report["bad_rows"], 2, "{report}");
    assert_eq!(report["by_column"]["species"]["isin"], 1, "{report}");
    assert_eq!(report["by_column"]["bill_length_mm"]["in_range"], 1, "{report}");
    let first = &report["first_failures"];
    let species = first.as_array().unwrap().iter().find(|f| f["column"] == "species").unwrap();
    assert_eq!(
        (species["row"].as_u64(), species["line"].as_u64(), species["found"].as_str()),
        (Some(3), Some(4), Some("\"Dodo\""))
    );
    let bill = first.as_array().unwrap().iter().find(|f| f["column"] == "bill_length_mm").unwrap();
    assert_eq!(bill["line"].as_u64(), Some(9), "{bill}");
    assert!(bill["found"].as_str().unwrap().starts_with("999"), "{bill}");

    // The quarantine is plain Parquet, read back by arrow-rs: the two rows, with the reasons.
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&quarantine).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
    let names: Vec<String> =
        reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
    assert!(names.contains(&"_reasons".to_string()) && names.contains(&"species".to_string()), "{names:?}");

    let out = kiln_data(&["validate", bad.to_str().unwrap(), "--schema", "missing.toml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"), "{out:?}");
}

#[test]
fn data_profile_hash_and_split() {
    let penguins = repo_file("data/penguins.csv");
    let penguins = penguins.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let profile_path = dir.path().join("profile.json");
    let out = kiln_data(&["profile", penguins, "--out", profile_path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{penguins}: 344 rows, 8 columns")), "{text}");
    assert!(text.contains("Adelie (152)") && text.contains("2 missing"), "{text}");
    let profile = kiln_data::DatasetProfile::from_json(&std::fs::read_to_string(&profile_path).unwrap()).unwrap();
    let bill = profile.column("bill_length_mm").unwrap();
    assert_eq!((bill.count, bill.missing), (342, 2));
    assert!((bill.numeric.as_ref().unwrap().mean - 43.9219).abs() < 1e-3);

    let out = kiln_data(&["hash", penguins, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let hashed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = std::fs::read(penguins).unwrap();
    assert_eq!(hashed["bytes"], bytes.len());
    assert_eq!(hashed["files"], 1);
    assert_eq!(hashed["blake3"].as_str().unwrap().len(), 64);

    let parts = dir.path().join("parts");
    let split = |seed: &str| {
        let out = kiln_data(&[
            "split",
            penguins,
            "--label",
            "species",
            "--seed",
            seed,
            "--out",
            parts.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.status.success(), "{out:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let read = |name: &str| std::fs::read(parts.join(format!("{name}.parquet"))).unwrap();
        (doc, read("train"), read("val"), read("test"))
    };
    let (doc, train, val, test) = split("7");
    let rows = |p: &str| doc["parts"][p]["rows"].as_u64().unwrap();
    assert_eq!(rows("train") + rows("val") + rows("test"), 344);
    assert!((rows("train") as f64 / 344.0 - 0.7).abs() < 0.02, "{doc}");
    use parquet::file::reader::FileReader;
    for (name, bytes) in [("train", &train), ("val", &val), ("test", &test)] {
        assert!(!bytes.is_empty());
        let file = std::fs::File::open(parts.join(format!("{name}.parquet"))).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows() as u64, rows(name), "{name}");
    }
    // The same seed gives the same parts.
    let (_, train_again, _, _) = split("7");
    assert_eq!(train, train_again);

    let out = kiln_data(&[
        "split",
        penguins,
        "--label",
        "species",
        "--fractions",
        "0.5,0.5",
        "--out",
        parts.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("three shares"), "{out:?}");
}

/// Every subcommand's `--help` shows an example, and the completion scripts know them all.
#[test]
fn every_subcommand_has_an_example_and_completions_know_it() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        stdout(&out)
    };
    let top = help(&[]);
    let commands = [
        "data",
        "train",
        "runs",
        "query",
        "registry",
        "slurm",
        "flow",
        "store",
        "load-test",
        "serve",
        "track-server",
        "ui",
        "push",
        "completions",
    ];
    for command in commands {
        assert!(top.contains(&format!("  {command} ")), "`kiln --help` lists {command}:\n{top}");
        let text = help(&[command]);
        let example = text.lines().find(|l| l.starts_with("Example: "));
        assert!(
            example.is_some_and(|l| l.contains(&format!("kiln {command}")) || l.contains("kiln --store")),
            "`kiln {command} --help` has no example:\n{text}"
        );
    }
    let nested: [(&str, &[&str]); 6] = [
        ("data", &["validate", "profile", "hash", "split"]),
        ("runs", &["ls", "show", "compare", "plot"]),
        ("registry", &["ls", "promote", "alias", "rollback", "history"]),
        ("slurm", &["submit", "status", "cancel", "sweep"]),
        ("flow", &["run", "status"]),
        ("store", &["compact", "sync", "gc"]),
    ];
    for (group, subcommands) in nested {
        for command in subcommands {
            let text = help(&[group, command]);
            let example = text.lines().find(|l| l.starts_with("Example: "));
            assert!(
                example.is_some_and(
                    |l| l.contains(&format!("kiln {group} {command}")) || l.contains(&format!("{group} {command}"))
                ),
                "`kiln {group} {command} --help` has no example:\n{text}"
            );
        }
    }
    for (shell, marker) in [("bash", "_kiln()"), ("zsh", "#compdef kiln"), ("fish", "complete -c kiln")] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let script = stdout(&out);
        assert!(script.contains(marker) && script.contains("validate") && script.contains("track-server"), "{shell}");
    }
}

/// A reader that stops early (`kiln data profile ... | head`) ends the command quietly.
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::io::Read;
    let digits = repo_file("data/digits.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["data", "profile", digits.to_str().unwrap(), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then the pipe is closed
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);
}

/// Every `kiln ...` command in the shell blocks of docs/*.md and the README parses (lines
/// continued with `\` joined): the subcommands and flags exist and their values are valid
/// (each runs with `--help` added before any `--`, under `sh` for quoting and environment
/// assignments).
#[test]
fn the_commands_in_the_docs_parse() {
    let bin = env!("CARGO_BIN_EXE_kiln");
    let mut checked = 0;
    let mut docs: Vec<String> = std::fs::read_dir(repo_file("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|name| name.ends_with(".md"))
        .collect();
    docs.sort();
    docs.push("README.md".into());
    for doc in &docs {
        let text = std::fs::read_to_string(repo_file(doc)).unwrap();
        let mut in_sh = false;
        let mut lines: Vec<String> = Vec::new();
        for line in text.lines() {
            match lines.last_mut() {
                Some(last) if last.ends_with('\\') => {
                    last.pop();
                    last.push(' ');
                    last.push_str(line.trim_start());
                }
                _ => lines.push(line.to_string()),
            }
        }
        for line in &lines {
            if line.starts_with("```") {
                in_sh = line.trim() == "```sh";
                continue;
            }
            let code = line.split(" #").next().unwrap().trim();
            let Some(at) = code.find("target/release/kiln ").or_else(|| code.find("kiln ")).filter(|_| in_sh) else {
                continue;
            };
            let (env, rest) = code.split_at(at);
            if !env.split_whitespace().all(|w| w.contains('=')) || rest.starts_with("kiln-") {
                continue;
            }
            let rest = rest.trim_start_matches("target/release/");
            let args = &rest["kiln".len()..];
            let args = match args.find(" -- ") {
                Some(i) => format!("{} --help{}", &args[..i], &args[i..]),
                None => format!("{args} --help"),
            };
            let out = Command::new("sh").arg("-c").arg(format!("{env}'{bin}'{args}")).output().unwrap();
            assert!(out.status.success(), "{doc}: `{code}` does not parse: {}", String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} commands found");
}
