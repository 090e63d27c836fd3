//! `kiln flow` (local executor) and `kiln slurm` (a real single-node Slurm when one answers;
//! `KILN_REQUIRE_SLURM=1` turns a missing controller into a failure, as in CI).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{kiln, repo_file, stdout};

fn flow(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).current_dir(dir).arg("flow").args(args).output().unwrap()
}

#[test]
fn flow_runs_stale_stages_and_caches_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("penguins.csv");
    std::fs::copy(repo_file("data/penguins.csv"), &data).unwrap();
    let kiln_bin = env!("CARGO_BIN_EXE_kiln");
    std::fs::write(
        dir.path().join("f.toml"),
        format!(
            r#"
name = "demo"

[[stage]]
name = "split"
command = ["{kiln_bin}", "data", "split", "penguins.csv", "--label", "species", "--out", "splits"]
inputs = ["penguins.csv"]
outputs = ["splits"]

[[stage]]
name = "count"
command = "ls splits | wc -l > count.txt"
after = ["split"]
outputs = ["count.txt"]
params = {{ note = "v1" }}
"#
        ),
    )
    .unwrap();
    let out = flow(dir.path(), &["status", "f.toml"]);
    assert_eq!(out.status.code(), Some(4), "never ran: stale {out:?}");
    let out = flow(dir.path(), &["run", "f.toml", "--backend", "local"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.matches(" ran").count(), 2, "{text}");
    assert_eq!(std::fs::read_to_string(dir.path().join("count.txt")).unwrap().trim(), "3");
    assert!(dir.path().join("splits/train.parquet").is_file());

    let out = flow(dir.path(), &["status", "f.toml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stages"][0]["outcome"], "Cached", "{report}");
    let out = flow(dir.path(), &["run", "f.toml", "--backend", "local"]);
    assert_eq!(stdout(&out).matches("cached").count(), 2, "{}", stdout(&out));

    // New data: both stages run again (the second because the first's key changed).
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("Gentoo,Biscoe,50.0,15.0,220,5000,male,2009\n");
    std::fs::write(&data, text).unwrap();
    let out = flow(dir.path(), &["status", "f.toml"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(stdout(&out).contains("stale"), "{}", stdout(&out));
    let out = flow(dir.path(), &["run", "f.toml", "--backend", "local"]);
    assert_eq!(stdout(&out).matches(" ran").count(), 2, "{}", stdout(&out));

    // A failing stage: exit 4, its dependants skipped.
    std::fs::write(
        dir.path().join("bad.toml"),
        "name = \"bad\"\n[[stage]]\nname = \"boom\"\ncommand = \"exit 7\"\n[[stage]]\nname = \"after\"\ncommand = \"true\"\nafter = [\"boom\"]\n",
    )
    .unwrap();
    let out = flow(dir.path(), &["run", "bad.toml", "--backend", "local"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(stdout(&out).contains("FAILED") && stdout(&out).contains("skipped"), "{}", stdout(&out));
    // A stage after one that does not exist is refused before anything runs.
    std::fs::write(
        dir.path().join("typo.toml"),
        "name = \"t\"\n[[stage]]\nname = \"a\"\ncommand = \"true\"\nafter = [\"splt\"]\n",
    )
    .unwrap();
    let out = flow(dir.path(), &["run", "typo.toml", "--backend", "local"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"splt\", which is not a stage"), "{out:?}");
}

#[test]
fn slurm_submit_local_backend_waits_and_reports_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        kiln(dir.path(), &["slurm", "submit", "--backend", "local", "--array", "0-2", "--", "sh", "-c", "exit 0"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).matches("COMPLETED").count(), 3, "{}", stdout(&out));
    let out = kiln(dir.path(), &["slurm", "submit", "--backend", "local", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let out = kiln(dir.path(), &["slurm", "submit", "--backend", "local", "--mem", "lots", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Whether a Slurm controller answers; panics when CI requires one.
fn have_slurm() -> bool {
    let ok = Command::new("scontrol").arg("ping").output().is_ok_and(|o| stdout(&o).contains("UP"));
    if !ok && std::env::var("KILN_REQUIRE_SLURM").as_deref() == Ok("1") {
        panic!("KILN_REQUIRE_SLURM=1 but no Slurm controller answers (run scripts/slurm-local.sh up)");
    }
    if !ok {
        eprintln!("skipping: no Slurm controller answers; run scripts/slurm-local.sh up");
    }
    ok
}

#[test]
fn slurm_submit_status_and_cancel_on_a_real_cluster() {
    if !have_slurm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let log = dir.path().join("job-%j.out");
    let out = kiln(
        &store,
        &[
            "slurm",
            "submit",
            "--name",
            "kiln-cli-ok",
            "--time",
            "5m",
            "--output",
            log.to_str().unwrap(),
            "--wait",
            "--json",
            "--",
            "sh",
            "-c",
            "echo hello from $SLURM_JOB_ID",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = doc["submission"]["parts"][0]["job"].as_u64().unwrap();
    assert_eq!(doc["records"][0]["state"], "COMPLETED", "{doc}");
    let written = std::fs::read_to_string(dir.path().join(format!("job-{job}.out"))).unwrap();
    assert_eq!(written.trim(), format!("hello from {job}"));

    // A long array: recorded, so status and cancel know its tasks.
    let out = kiln(
        &store,
        &["slurm", "submit", "--name", "kiln-cli-long", "--array", "0-1", "--time", "5m", "--", "sleep", "300"],
    );
    assert!(out.status.success(), "{out:?}");
    let line = stdout(&out);
    let job: u64 =
        line.split(['(', '_']).nth(1).and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| panic!("{line}"));
    let status = kiln(&store, &["slurm", "status", &job.to_string(), "--json"]);
    let docs: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {status:?}"));
    assert_eq!(docs[0]["records"].as_array().unwrap().len(), 2, "{docs}");
    let out = kiln(&store, &["slurm", "cancel", &job.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = kiln(&store, &["slurm", "status", &job.to_string(), "--json"]);
        let docs: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let states: Vec<String> =
            docs[0]["records"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap().to_string()).collect();
        if states.iter().all(|s| s.starts_with("CANCELLED")) {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {states:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The recent submissions are listed without ids.
    let text = stdout(&kiln(&store, &["slurm", "status"]));
    assert!(text.contains("kiln-cli-ok") && text.contains("kiln-cli-long"), "{text}");
}
