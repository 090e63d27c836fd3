//! Cached pipelines on the local executor (the Slurm module runs one on the real cluster).

use std::path::Path;
use std::time::Duration;

use kiln_hpc::{Error, JobSpec, LocalExecutor, Pipeline, Stage, StageOutcome};

use crate::TempDir;

/// prep: raw.csv → clean.csv; train (param lr): clean.csv → model.txt; report: model.txt →
/// report.txt. Every run appends the stage's name to `runs`, so reruns are counted from disk.
pub fn three_stages(dir: &Path, lr: &str) -> Pipeline {
    let p = |name: &str| dir.join(name).display().to_string();
    let sh = |name: &str, body: String| {
        JobSpec::builder(name, ["bash", "-c", &format!("set -e; echo {name} >> {}; {body}", p("runs"))])
            .build()
            .unwrap()
    };
    Pipeline::new("demo", dir.join("state"))
        .stage(
            Stage::new(sh("prep", format!("tr a-z A-Z < {} > {}", p("raw.csv"), p("clean.csv"))))
                .input(p("raw.csv"))
                .output(p("clean.csv")),
        )
        .stage(
            Stage::new(sh("train", format!("(cat {}; echo lr=$KILN_PARAM_LR) > {}", p("clean.csv"), p("model.txt"))))
                .input(p("clean.csv"))
                .output(p("model.txt"))
                .param("lr", lr),
        )
        .stage(
            Stage::new(sh("report", format!("wc -l < {} > {}", p("model.txt"), p("report.txt"))))
                .input(p("model.txt"))
                .output(p("report.txt"))
                .code_version("v1"),
        )
}

fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs")).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn second_run_is_fully_cached_and_changes_rerun_what_they_touch() {
    let dir = TempDir::new("pipe-cache");
    let d = dir.path();
    std::fs::write(d.join("raw.csv"), "a,b\n1,2\n").unwrap();
    let exec = LocalExecutor::new(d.join("logs")).unwrap();
    let first = three_stages(d, "0.1").run(&exec).unwrap();
    assert!(first.success(), "{first}");
    assert_eq!(first.count(|o| *o == StageOutcome::Ran), 3, "{first}");
    assert_eq!(std::fs::read_to_string(d.join("model.txt")).unwrap(), "A,B\n1,2\nlr=0.1\n");
    assert_eq!(runs(d), ["prep", "train", "report"]);

    let second = three_stages(d, "0.1").run(&exec).unwrap();
    assert_eq!(second.count(|o| *o == StageOutcome::Cached), 3, "{second}");
    assert_eq!(runs(d).len(), 3, "nothing ran again");
    let status = three_stages(d, "0.1").status().unwrap();
    assert_eq!(status.count(|o| *o == StageOutcome::Cached), 3);

    // A new param reruns train and what depends on it, not prep.
    let status = three_stages(d, "0.2").status().unwrap();
    assert_eq!(status.stage("prep").unwrap().outcome, StageOutcome::Cached);
    assert!(matches!(status.stage("train").unwrap().outcome, StageOutcome::Stale(_)), "{status}");
    let third = three_stages(d, "0.2").run(&exec).unwrap();
    assert_eq!(runs(d)[3..], ["train", "report"], "{third}");

    // Editing an output by hand reruns its stage; editing the raw input reruns everything.
    std::fs::write(d.join("report.txt"), "tampered\n").unwrap();
    three_stages(d, "0.2").run(&exec).unwrap();
    assert_eq!(runs(d)[5..], ["report"]);
    std::fs::write(d.join("raw.csv"), "a,b\n3,4\n").unwrap();
    let r = three_stages(d, "0.2").run(&exec).unwrap();
    assert_eq!(runs(d)[6..], ["prep", "train", "report"], "{r}");
    assert_eq!(std::fs::read_to_string(d.join("report.txt")).unwrap().trim(), "3");
    println!("{r}");
}

#[test]
fn retries_then_failure_skips_downstream() {
    let dir = TempDir::new("pipe-fail");
    let d = dir.path();
    let flaky = d.join("flaky-once");
    let exec = LocalExecutor::new(d.join("logs")).unwrap();
    // Fails on its first attempt only.
    let flaky_stage = Stage::new(
        JobSpec::builder(
            "flaky",
            [
                "bash",
                "-c",
                &format!(
                    "if [ ! -e {f} ]; then touch {f}; exit 4; fi; echo ok > {o}",
                    f = flaky.display(),
                    o = d.join("f.txt").display()
                ),
            ],
        )
        .build()
        .unwrap(),
    )
    .output(d.join("f.txt"))
    .retries(2, Duration::from_millis(50));
    let broken = Stage::new(JobSpec::builder("broken", ["bash", "-c", "echo boom >&2; exit 3"]).build().unwrap())
        .input(d.join("f.txt"))
        .output(d.join("b.txt"))
        .retries(1, Duration::from_millis(50));
    let after = Stage::new(JobSpec::builder("after", ["touch", d.join("c.txt").to_str().unwrap()]).build().unwrap())
        .input(d.join("b.txt"))
        .output(d.join("c.txt"));
    let lazy = Stage::new(JobSpec::builder("lazy", ["true"]).build().unwrap()).output(d.join("never-written"));
    let report = Pipeline::new("p", d.join("state"))
        .stage(flaky_stage)
        .stage(broken)
        .stage(after)
        .stage(lazy)
        .run(&exec)
        .unwrap();
    assert!(!report.success());
    let flaky = report.stage("flaky").unwrap();
    assert_eq!((flaky.outcome.clone(), flaky.attempts), (StageOutcome::Ran, 2), "{report}");
    let broken = report.stage("broken").unwrap();
    assert_eq!(broken.attempts, 2);
    let StageOutcome::Failed(why) = &broken.outcome else { panic!("{report}") };
    assert!(why.contains("FAILED") && why.contains("exit code 3") && why.contains("broken"), "{why}");
    assert!(matches!(report.stage("after").unwrap().outcome, StageOutcome::Skipped(_)), "{report}");
    let StageOutcome::Failed(why) = &report.stage("lazy").unwrap().outcome else { panic!("{report}") };
    assert!(why.contains("did not write its output"), "{why}");
    assert!(!d.join("c.txt").exists());
}

#[test]
fn bad_pipelines_are_refused_with_the_stage_named() {
    let dir = TempDir::new("pipe-bad");
    let d = dir.path();
    let job = |n: &str| JobSpec::builder(n, ["true"]).build().unwrap();
    let cycle = Pipeline::new("c", d)
        .stage(Stage::new(job("a")).input(d.join("y")).output(d.join("x")))
        .stage(Stage::new(job("b")).input(d.join("x")).output(d.join("y")));
    let err = cycle.status().unwrap_err();
    assert!(matches!(&err, Error::Stage { .. }) && err.to_string().contains("cycle"), "{err}");
    let missing = Pipeline::new("m", d).stage(Stage::new(job("a")).input(d.join("absent.csv")));
    let err = missing.status().unwrap_err();
    assert!(err.to_string().contains("absent.csv") && err.to_string().contains("\"a\""), "{err}");
    let twice = Pipeline::new("t", d)
        .stage(Stage::new(job("a")).output(d.join("x")))
        .stage(Stage::new(job("b")).output(d.join("x")));
    assert!(twice.status().unwrap_err().to_string().contains("also written by"));
    let after = Pipeline::new("u", d).stage(Stage::new(job("a")).after("nope"));
    assert!(after.status().unwrap_err().to_string().contains("nope"));
}
