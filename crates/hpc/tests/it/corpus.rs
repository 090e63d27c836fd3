//! Parsers against real outputs: `tests/corpus/local` (this project's Slurm 22.05 cluster; see
//! its README) and `tests/corpus/public` (copied from other projects' fixtures and issue
//! threads; see its SOURCES.md).

use std::time::Duration;

use kiln_hpc::{
    JobRecord, JobRef, JobState, SlurmId, parse_sacct, parse_sbatch, parse_scontrol_jobs, parse_show_config,
    parse_slurm_json, parse_squeue, squeue_format,
};

fn corpus(path: &str) -> String {
    let p = crate::crate_dir().join("tests/corpus").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn find(records: &[JobRecord], job: u64, task: Option<u32>) -> &JobRecord {
    records
        .iter()
        .find(|r| r.id == JobRef { job, task })
        .unwrap_or_else(|| panic!("no record for {job} {task:?} in {records:#?}"))
}

/// (job, task, state, exit code, signal, reason, restarts)
type Expect = (u64, Option<u32>, JobState, Option<i32>, Option<i32>, Option<&'static str>, u32);

fn check(records: &[JobRecord], expected: &[Expect]) {
    for &(job, task, ref state, exit, signal, reason, restarts) in expected {
        let r = find(records, job, task);
        let got = (&r.state, r.exit_code, r.signal, r.reason.as_deref(), r.restarts);
        assert_eq!(got, (state, exit, signal, reason, restarts), "{job} {task:?}: {r:?}");
    }
}

fn final_states() -> Vec<Expect> {
    use JobState::*;
    vec![
        (12, None, Completed, Some(0), None, None, 0),
        (13, None, Failed, Some(3), None, Some("NonZeroExitCode"), 0),
        (14, Some(1), Completed, Some(0), None, None, 0),
        (14, Some(6), Completed, Some(0), None, None, 0),
        (15, None, Cancelled { by: None }, None, Some(15), None, 0),
        (16, None, Cancelled { by: None }, Some(0), None, Some("JobHeldUser"), 0),
        (17, None, Timeout, None, Some(15), Some("TimeLimit"), 0),
        (20, None, Pending, Some(0), None, Some("DependencyNeverSatisfied"), 0),
        (21, None, Cancelled { by: None }, Some(0), None, Some("DependencyNeverSatisfied"), 0),
        (22, None, Completed, Some(0), None, None, 1),
        (23, None, Failed, None, Some(9), Some("JobLaunchFailure"), 0),
    ]
}

#[test]
fn kiln_squeue_format_matches_the_captured_one() {
    assert_eq!(squeue_format(), corpus("local/format.txt").trim());
}

#[test]
fn squeue_kiln_format_final_states() {
    let records = parse_squeue(&corpus("local/squeue_kiln_final.txt")).unwrap();
    assert_eq!(records.len(), 15);
    // The pending job's exit status is reported as 0 by squeue; only terminal states count.
    check(&records, &final_states());
    let t = find(&records, 14, Some(3));
    assert_eq!(t.stdout.as_deref(), Some(std::path::Path::new("/tmp/corp/arr-14_3.out")), "patterns expanded");
    assert_eq!(t.elapsed, Some(Duration::from_secs(4)));
    assert_eq!(find(&records, 13, None).stdout.as_deref(), Some(std::path::Path::new("/tmp/corp/fail3-13.out")));
    assert_eq!(find(&records, 17, None).elapsed, Some(Duration::from_secs(65)));
}

#[test]
fn squeue_kiln_format_early_states() {
    use JobState::*;
    let records = parse_squeue(&corpus("local/squeue_kiln_early.txt")).unwrap();
    check(
        &records,
        &[
            (14, Some(3), Pending, Some(0), None, Some("JobArrayTaskLimit"), 0),
            (14, Some(1), Running, Some(0), None, None, 0),
            (16, None, Pending, Some(0), None, Some("JobHeldUser"), 0),
            (22, None, Pending, Some(0), None, Some("BeginTime"), 1),
        ],
    );
    assert_eq!(records.iter().filter(|r| r.state == Running).count(), 4);
}

#[test]
fn squeue_json_states() {
    let records = parse_slurm_json(&corpus("local/squeue_final.json")).unwrap();
    check(&records, &final_states());
    let r = find(&records, 13, None);
    assert_eq!(r.elapsed, Some(Duration::from_secs(1)));
    assert_eq!(r.stdout.as_deref(), Some(std::path::Path::new("/tmp/corp/fail3-13.out")));
    assert!(
        parse_slurm_json("{\"jobs\": [{\"job_state\": \"RUNNING\"}]}").unwrap_err().to_string().contains("jobs[0]")
    );
    assert!(parse_slurm_json("not json").is_err());
}

#[test]
fn scontrol_one_line_states() {
    let records = parse_scontrol_jobs(&corpus("local/scontrol_oneline_final.txt")).unwrap();
    // scontrol's ExitCode is CODE:SIGNAL; the pending job's is dropped.
    let mut want = final_states();
    for w in &mut want {
        if w.2 == JobState::Pending {
            w.3 = None;
        }
    }
    check(&records, &want);
    let r = find(&records, 12, None);
    assert_eq!(r.stdout.as_deref(), Some(std::path::Path::new("/tmp/corp/ok-12.out")));
    assert_eq!(r.name, "ok");
    let early = parse_scontrol_jobs(&corpus("local/scontrol_oneline_early.txt")).unwrap();
    // The pending part of the throttled array is one scontrol record, `ArrayTaskId=3-6%2`.
    for t in 3..=6 {
        assert_eq!(find(&early, 14, Some(t)).state, JobState::Pending);
    }
    assert_eq!(find(&early, 22, None).restarts, 1);
}

#[test]
fn scontrol_multi_line() {
    let records = parse_scontrol_jobs(&corpus("local/scontrol_multiline_array_early.txt")).unwrap();
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r.id.job == 14 && r.name == "arr"));
    let public = parse_scontrol_jobs(&corpus("public/scontrol_mavis_cancelled_array_task.txt")).unwrap();
    let r = find(&public, 1_697_503, Some(1));
    assert_eq!((&r.state, r.exit_code, r.signal), (&JobState::Cancelled { by: None }, None, Some(15)));
    assert_eq!(r.elapsed, Some(Duration::from_secs(2)));
    let pending = parse_scontrol_jobs(&corpus("public/scontrol_mavis_pending_dependency_never_satisfied.txt")).unwrap();
    assert_eq!(pending[0].reason.as_deref(), Some("DependencyNeverSatisfied"));
    let timeout = parse_scontrol_jobs(&corpus("public/scontrol_slurmmail_timeout_oneline.txt")).unwrap();
    assert_eq!((&timeout[0].state, timeout[0].reason.as_deref()), (&JobState::Timeout, Some("TimeLimit")));
    assert_eq!(timeout[0].elapsed, Some(Duration::from_secs(72)));
}

#[test]
fn show_config() {
    let c = parse_show_config(&corpus("local/scontrol_show_config.txt"));
    assert_eq!(c.get("MaxArraySize").map(String::as_str), Some("1001"));
    assert_eq!(c.get("AccountingStorageType").map(String::as_str), Some("accounting_storage/none"));
    assert_eq!(c.get("SLURM_VERSION").map(String::as_str), Some("22.05.8"));
}

#[test]
fn short_and_long_state_codes_and_ids() {
    for file in ["local/squeue_short_codes_early.txt", "local/squeue_short_codes_final.txt"] {
        for line in corpus(file).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let id = SlurmId::parse(f[0]).unwrap_or_else(|| panic!("id {:?}", f[0]));
            assert_eq!(id.to_string(), f[0]);
            let (short, long) = (JobState::parse(f[1]), JobState::parse(f[2]));
            assert_eq!(short, long, "{line}");
            assert!(!matches!(short, JobState::Other(_)), "{line}");
            assert_eq!(long.to_string(), f[2]);
        }
    }
}

#[test]
fn squeue_default_output_ids_and_states() {
    let mut seen = Vec::new();
    for file in [
        "local/squeue_default_early.txt",
        "local/squeue_default_final.txt",
        "public/squeue_jutul_array_throttle_dependency.txt",
        "public/squeue_burrmill_launch_failed_requeued_held.txt",
    ] {
        for line in corpus(file).lines().filter(|l| !l.trim_start().starts_with("JOBID") && !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let id = SlurmId::parse(f[0]).unwrap_or_else(|| panic!("{file}: id in {line:?}"));
            let state = f.iter().map(|c| JobState::parse(c)).find(|s| !matches!(s, JobState::Other(_)));
            assert!(state.is_some(), "{file}: no state in {line:?}");
            seen.push(id);
        }
    }
    assert!(seen.contains(&SlurmId::PendingTasks { job: 12134, tasks: (10..=16).collect(), throttle: Some(4) }));
    assert!(seen.contains(&SlurmId::PendingTasks { job: 12137, tasks: vec![1], throttle: Some(2) }));
    assert!(seen.contains(&SlurmId::Task { job: 80520, task: 36 }));
}

#[test]
fn ids() {
    let cases: &[(&str, Option<SlurmId>)] = &[
        ("123", Some(SlurmId::Job(123))),
        ("123_4", Some(SlurmId::Task { job: 123, task: 4 })),
        ("123_[1-5%2]", Some(SlurmId::PendingTasks { job: 123, tasks: vec![1, 2, 3, 4, 5], throttle: Some(2) })),
        ("123_[1,3,7-9]", Some(SlurmId::PendingTasks { job: 123, tasks: vec![1, 3, 7, 8, 9], throttle: None })),
        ("123_[0-8:4]", Some(SlurmId::PendingTasks { job: 123, tasks: vec![0, 4, 8], throttle: None })),
        ("123+1", Some(SlurmId::HetComponent { job: 123, offset: 1 })),
        ("123.batch", None),
        ("123_4.0", None),
        ("123_[5-1]", None),
        ("", None),
        ("abc", None),
    ];
    for (s, want) in cases {
        assert_eq!(&SlurmId::parse(s), want, "{s:?}");
    }
}

#[test]
fn every_state_parses() {
    let all = [
        ("PENDING", "PD"),
        ("CONFIGURING", "CF"),
        ("RUNNING", "R"),
        ("COMPLETING", "CG"),
        ("COMPLETED", "CD"),
        ("FAILED", "F"),
        ("TIMEOUT", "TO"),
        ("NODE_FAIL", "NF"),
        ("PREEMPTED", "PR"),
        ("OUT_OF_MEMORY", "OOM"),
        ("BOOT_FAIL", "BF"),
        ("DEADLINE", "DL"),
        ("REQUEUED", "RQ"),
        ("REQUEUE_FED", "RF"),
        ("REQUEUE_HOLD", "RH"),
        ("RESIZING", "RS"),
        ("REVOKED", "RV"),
        ("SIGNALING", "SI"),
        ("SPECIAL_EXIT", "SE"),
        ("STAGE_OUT", "SO"),
        ("STOPPED", "ST"),
        ("SUSPENDED", "S"),
        ("RESV_DEL_HOLD", "RD"),
    ];
    for (long, short) in all {
        let s = JobState::parse(long);
        assert!(!matches!(s, JobState::Other(_)), "{long}");
        assert_eq!(JobState::parse(short), s, "{short}");
        assert_eq!(s.to_string(), long);
    }
    assert_eq!(JobState::parse("CANCELLED by 1000"), JobState::Cancelled { by: Some(1000) });
    assert_eq!(JobState::parse("CANCELLED+"), JobState::Cancelled { by: None });
    assert_eq!(JobState::parse("CA"), JobState::Cancelled { by: None });
    assert_eq!(JobState::parse("RUNING"), JobState::Other("RUNING".into()), "submitit's fixture typo stays unknown");
    assert!(JobState::parse("OUT_OF_MEMORY").is_terminal() && JobState::parse("PREEMPTED").is_terminal());
    assert!(!JobState::parse("REQUEUED").is_terminal() && !JobState::parse("RUNING").is_terminal());
}

#[test]
fn sacct_outputs() {
    use JobState::*;
    // gc3pie used `--parsable --format jobid,exitcode,state,ncpus,elapsed,...`: the header is
    // the one its command would print.
    let header = "JobID|ExitCode|State|NCPUS|Elapsed|TotalCPU|Submit|Start|End|MaxRSS|MaxVMSize|\n";
    let gc3 = |f: &str| parse_sacct(&format!("{header}{}", corpus(f))).unwrap();
    check(
        &gc3("public/sacct_gc3pie_cancelled_by_uid.txt"),
        &[(123, None, Cancelled { by: Some(1000) }, Some(0), None, None, 0)],
    );
    check(&gc3("public/sacct_gc3pie_timeout.txt"), &[(123, None, Timeout, None, Some(1), None, 0)]);
    check(&gc3("public/sacct_gc3pie_node_fail.txt"), &[(123, None, NodeFail, Some(1), None, None, 0)]);
    check(&gc3("public/sacct_gc3pie_failed.txt"), &[(123, None, Failed, Some(1), None, None, 0)]);
    assert_eq!(gc3("public/sacct_gc3pie_node_fail.txt").len(), 1, "steps are not jobs");
    assert_eq!(gc3("public/sacct_gc3pie_node_fail.txt")[0].elapsed, Some(Duration::from_secs(3600 + 21 * 60 + 47)));

    let mavis = parse_sacct(&corpus("public/sacct_mavis_array_cancelled_by.txt")).unwrap();
    assert_eq!(find(&mavis, 1_697_503, Some(1)).state, Cancelled { by: Some(1365) });
    assert_eq!(find(&mavis, 1_697_503, Some(3)).state, Completed);
    let pending = parse_sacct(&corpus("public/sacct_mavis_array_pending_range.txt")).unwrap();
    assert_eq!(pending.len(), 1 + 164);
    assert_eq!(find(&pending, 1_701_003, Some(200)).state, Pending);
    let wide = parse_sacct(&corpus("public/sacct_mavis_array_timeout.txt")).unwrap();
    assert!(wide.iter().any(|r| r.state == Timeout), "{wide:?}");
    assert!(wide.iter().all(|r| r.id.job == 1_873_472 && r.id.task.is_some()));

    let submitit = parse_sacct(&corpus("public/sacct_submitit_array_pending.txt")).unwrap();
    assert_eq!(find(&submitit, 5_610_980, None).state, Running);
    assert_eq!(find(&submitit, 20_956_421, Some(3)).state, Pending);
    assert_eq!(submitit.len(), 1 + 1 + 3);

    let snakemake =
        parse_sacct(&format!("JobIdRaw|State\n{}", corpus("public/sacct_snakemake_x_parsable2_failed.txt")));
    assert!(snakemake.is_err(), "a header must name JobID");
    let snakemake =
        parse_sacct(&format!("JobID|State\n{}", corpus("public/sacct_snakemake_x_parsable2_failed.txt"))).unwrap();
    assert_eq!(snakemake.iter().filter(|r| r.state == Failed).count(), 2);

    // kiln's own field order, no header.
    let own = parse_sacct("77_3|train|OUT_OF_MEMORY|0:125|3601\n78|x|PREEMPTED|0:15|10\n").unwrap();
    check(
        &own,
        &[(77, Some(3), OutOfMemory, None, Some(125), None, 0), (78, None, Preempted, None, Some(15), None, 0)],
    );
    assert_eq!(own[0].elapsed, Some(Duration::from_secs(3601)));
    let err = parse_sacct("77|x\n").unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("expected 5 fields"), "{err}");
}

#[test]
fn sbatch_outputs() {
    let cases: &[(&str, (u64, Option<&str>))] = &[
        ("public/sbatch_clusterfutures_parsable_cluster.txt", (75_168_975, Some("clustername"))),
        ("public/sbatch_parsl_on_cluster.txt", (60_060_368, Some("slaking"))),
        ("public/sbatch_sdsc_socket_timeout_interleaved.txt", (3_310_347, None)),
    ];
    for (file, (id, cluster)) in cases {
        let got = parse_sbatch(&corpus(file)).unwrap();
        assert_eq!((got.0, got.1.as_deref()), (*id, *cluster), "{file}");
    }
    let err = parse_sbatch(&corpus("public/sbatch_gc3pie_invalid_account.txt")).unwrap_err();
    assert!(err.to_string().contains("Invalid account"), "{err}");
    assert_eq!(parse_sbatch("site banner: welcome\n4242\n").unwrap(), (4242, None));
}

#[test]
fn malformed_squeue_lines_are_errors_with_line_numbers() {
    let err = parse_squeue("1|#|1|#|1|#|N/A|#|RUNNING|#|\n").unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("expected 12 fields"), "{err}");
    let good = corpus("local/squeue_kiln_final.txt");
    let bad = good.replacen("|#|768|#|", "|#|x|#|", 1);
    let err = parse_squeue(&bad).unwrap_err().to_string();
    assert!(err.contains("exit_code") && err.contains("\"x\""), "{err}");
}
