//! Hyperparameter search: TPE against random search, one journal shared by 8 processes, torn
//! and damaged lines, the pruners on hand-made curves, conditional parameters, grids, stale
//! trials of a killed worker, and trials as kiln-track child runs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_track::{RunStatus, Store};
use kiln_train::Error;
use kiln_train::tune::{
    Direction, Distribution, GridConfig, MedianPruner, NewTrial, Outcome, ParamSpec, ParamValue, PrunerConfig,
    SamplerConfig, SearchSpace, Study, StudyConfig, SuccessiveHalving, TpeConfig, Tracking, Trial, TrialState,
};
use serde_json::{Value, json};

fn tpe(seed: u64, n_startup_trials: usize) -> SamplerConfig {
    SamplerConfig::Tpe(TpeConfig { seed, n_startup_trials, ..TpeConfig::default() })
}

fn memory(config: StudyConfig) -> Study {
    Study::in_memory(config).unwrap()
}

/// A trial that draws `x` and ends with `value`.
fn finished(study: &Study, x: f64, outcome: Outcome) -> u64 {
    let params = BTreeMap::from([(
        "x".to_string(),
        ParamValue { distribution: Distribution::float(-10.0, 10.0), value: json!(x) },
    )]);
    study.add_trial(&NewTrial { params, intermediate_values: BTreeMap::new(), outcome }).unwrap()
}

// ---------------------------------------------------------------------------------------------
// TPE

/// Trials until a shifted quadratic on [-5, 5]² falls below `target` (`cap` if never).
fn trials_to_reach(sampler: SamplerConfig, target: f64, cap: usize) -> usize {
    let study = memory(StudyConfig::new("quadratic").sampler(sampler));
    for i in 0..cap {
        let mut t = study.ask().unwrap();
        let x = t.suggest_float("x", -5.0, 5.0).unwrap();
        let y = t.suggest_float("y", -5.0, 5.0).unwrap();
        let v = (x - 1.3).powi(2) + (y + 0.7).powi(2);
        t.complete(v).unwrap();
        if v < target {
            return i + 1;
        }
    }
    cap
}

#[test]
fn tpe_reaches_a_target_in_fewer_trials_than_random_search() {
    // The target disc covers 0.16% of the square: random search needs ~640 trials on average.
    let seeds = 0..12u64;
    let cap = 3000;
    let tpe_trials: Vec<usize> = seeds.clone().map(|s| trials_to_reach(SamplerConfig::tpe(s), 0.05, cap)).collect();
    let random_trials: Vec<usize> = seeds.map(|s| trials_to_reach(SamplerConfig::random(s), 0.05, cap)).collect();
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
    let (t, r) = (mean(&tpe_trials), mean(&random_trials));
    eprintln!("mean trials to f < 0.05: TPE {t:.1} {tpe_trials:?}, random {r:.1} {random_trials:?}");
    assert!(t < r, "TPE {t} vs random {r}");
    assert!(t < r / 3.0, "TPE should need far fewer trials: {t} vs {r}");
}

#[test]
fn the_same_seed_and_history_give_the_same_suggestions() {
    let run = |seed: u64| {
        let study = memory(StudyConfig::new("same").sampler(tpe(seed, 5)));
        let mut seen = Vec::new();
        for _ in 0..30 {
            let mut t = study.ask().unwrap();
            let x = t.suggest_float("x", -5.0, 5.0).unwrap();
            let k = t.suggest_int_step("k", 0, 20, 2).unwrap();
            let c = t.suggest_categorical("c", &["a", "b", "c"]).unwrap();
            let v = x.abs() + (k as f64 - 8.0).abs() + if c == "b" { 0.0 } else { 1.0 };
            seen.push((x, k, c));
            t.complete(v).unwrap();
        }
        seen
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert_ne!(a, run(8));
    assert!(a.iter().all(|(x, k, _)| (-5.0..=5.0).contains(x) && k % 2 == 0 && (0..=20).contains(k)));
}

#[test]
fn tpe_handles_integers_log_integers_steps_and_categories() {
    let study = memory(StudyConfig::new("kinds").sampler(tpe(3, 10)));
    for _ in 0..120 {
        let mut t = study.ask().unwrap();
        let layers = t.suggest_int("layers", 1, 12).unwrap();
        let width = t.suggest_log_int("width", 1, 4096).unwrap();
        let dropout = t.suggest_float_step("dropout", 0.0, 0.5, 0.05).unwrap();
        let act = t.suggest_categorical("act", &["relu", "tanh", "gelu", "silu"]).unwrap();
        assert!((1..=12).contains(&layers) && (1..=4096).contains(&width));
        let k = dropout / 0.05;
        assert!((k - k.round()).abs() < 1e-9 && (0.0..=0.5).contains(&dropout), "{dropout}");
        let v = (layers as f64 - 7.0).abs()
            + ((width as f64).log2() - 6.0).abs()
            + (dropout - 0.2).abs() * 10.0
            + if act == "gelu" { 0.0 } else { 2.0 };
        t.complete(v).unwrap();
    }
    let best = study.best_trial().unwrap().unwrap();
    assert!(best.value.unwrap() < 1.5, "{best:?}");
    assert_eq!(best.params["act"], json!("gelu"));
    // After the random start-up, TPE concentrates on the best category.
    let late = study.trials().unwrap().into_iter().skip(60).filter(|t| t.params["act"] == json!("gelu")).count();
    assert!(late > 30, "gelu in {late} of the last 60 trials");
}

/// Φ by Abramowitz & Stegun 7.1.26 (error below 1.5e-7): independent of kiln's erfc.
fn phi(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

/// Optuna's univariate Parzen estimator, written out plainly: `obs` are (value, weight) in
/// any order; returns the density at `x` on [low, high].
fn naive_parzen(obs: &[(f64, f64)], low: f64, high: f64, x: f64) -> f64 {
    let prior_mu = 0.5 * (low + high);
    let range = high - low;
    let mut with_prior: Vec<(f64, f64, bool)> = obs.iter().map(|&(v, w)| (v, w, false)).collect();
    with_prior.push((prior_mu, 1.0, true));
    with_prior.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let n = obs.len();
    let min_sigma = range / (100f64).min(n as f64 + 2.0);
    let total: f64 = with_prior.iter().map(|k| k.1).sum();
    let mut density = 0.0;
    for (j, &(mu, w, prior)) in with_prior.iter().enumerate() {
        let sigma = if prior {
            range
        } else {
            let prev = if j == 0 { low } else { with_prior[j - 1].0 };
            let next = if j == n { high } else { with_prior[j + 1].0 };
            let s = if j == 0 {
                with_prior[1].0 - mu
            } else if j == n {
                mu - with_prior[n - 1].0
            } else {
                (mu - prev).max(next - mu)
            };
            s.clamp(min_sigma, range)
        };
        let z = phi((high - mu) / sigma) - phi((low - mu) / sigma);
        let pdf = (-0.5 * ((x - mu) / sigma).powi(2)).exp() / (sigma * (2.0 * std::f64::consts::PI).sqrt() * z);
        density += w / total * pdf;
    }
    density
}

fn optuna_weights(m: usize) -> Vec<f64> {
    if m <= 25 {
        return vec![1.0; m];
    }
    let k = m - 25;
    let start = 1.0 / m as f64;
    let mut w: Vec<f64> =
        (0..k).map(|i| if k == 1 { start } else { start + (1.0 - start) * i as f64 / (k - 1) as f64 }).collect();
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

#[test]
fn tpe_densities_match_a_plain_evaluation_of_optunas_estimator_at_5000_trials() {
    // 5,000 complete trials, concentrated around x = 2 as TPE's own histories are, so that the
    // fast Gauss transform carries most of g(x).
    let study = memory(StudyConfig::new("densities").sampler(tpe(0, 10)));
    let mut rng = kiln_data::SplitMix64::new(11);
    let mut xs = Vec::new();
    for i in 0..5000 {
        let x = if i % 3 == 0 {
            -10.0 + 20.0 * rng.next_f64()
        } else {
            (2.0 + 1.5 * (rng.next_f64() - 0.5)).clamp(-10.0, 10.0)
        };
        let value = (x - 2.2).powi(2) + 0.01 * rng.next_f64();
        finished(&study, x, Outcome::Complete(value));
        xs.push((x, value));
    }
    // γ(5000) = 25 good trials; the rest bad, weighted by age (trial number).
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].1.total_cmp(&xs[b].1));
    let below: BTreeSet<usize> = order[..25].iter().copied().collect();
    let good: Vec<(f64, f64)> = below.iter().map(|&i| (xs[i].0, 1.0)).collect();
    let bad_idx: Vec<usize> = (0..xs.len()).filter(|i| !below.contains(i)).collect();
    let weights = optuna_weights(bad_idx.len());
    let bad: Vec<(f64, f64)> = bad_idx.iter().zip(&weights).map(|(&i, &w)| (xs[i].0, w)).collect();

    let points: Vec<f64> = (0..81).map(|i| -10.0 + 0.25 * i as f64).chain([2.2001, 1.99, -9.999, 9.999]).collect();
    let values: Vec<Value> = points.iter().map(|&x| json!(x)).collect();
    let got = study.tpe_log_densities("x", &values).unwrap();
    let mut worst: f64 = 0.0;
    for (i, &x) in points.iter().enumerate() {
        let l = naive_parzen(&good, -10.0, 10.0, x).ln();
        let g = naive_parzen(&bad, -10.0, 10.0, x).ln();
        // The reference's Φ is good to 1.5e-7, hence the tolerance.
        assert!((got.log_l[i] - l).abs() < 1e-5, "log l({x}): {} vs {l}", got.log_l[i]);
        assert!((got.log_g[i] - g).abs() < 1e-5, "log g({x}): {} vs {g}", got.log_g[i]);
        worst = worst.max((got.log_g[i] - g).abs());
    }
    eprintln!("largest |log g − reference| at 5,000 trials: {worst:.1e}");
}

// ---------------------------------------------------------------------------------------------
// One journal, many processes

const WORKERS: usize = 8;
const SHARED_TRIALS: u64 = 96;

fn shared_config() -> StudyConfig {
    StudyConfig::new("shared")
        .sampler(SamplerConfig::Tpe(TpeConfig { seed: 5, constant_liar: true, ..TpeConfig::default() }))
        .pruner(PrunerConfig::successive_halving(1))
}

fn shared_value(x: f64, k: i64, kind: &str) -> f64 {
    x * x + k as f64 + if kind == "b" { 0.5 } else { 0.0 }
}

fn shared_objective(trial: &mut Trial) -> kiln_train::Result<f64> {
    let x = trial.suggest_float("x", -3.0, 3.0)?;
    let k = trial.suggest_int("k", 1, 4)?;
    let kind = trial.suggest_categorical("kind", &["a", "b"])?;
    trial.report(1, x * x)?;
    trial.should_prune()?; // records rung 0 of successive halving from every process
    std::thread::sleep(Duration::from_millis(2));
    Ok(shared_value(x, k, &kind))
}

/// The body of the child processes of the test below: runs trials against the study in
/// `KILN_TUNE_JOURNAL` until the study holds `SHARED_TRIALS`, then prints what it told.
#[test]
#[ignore = "run as a child process by eight_processes_share_one_study_journal"]
fn journal_worker() {
    let Some(path) = std::env::var_os("KILN_TUNE_JOURNAL") else { return };
    let study = Study::open_or_create(&path, shared_config()).unwrap();
    let report = study.optimize_total(shared_objective, SHARED_TRIALS).unwrap();
    let told: Vec<String> = report.trials.iter().map(|t| format!("{}={}", t.number, t.value.unwrap())).collect();
    println!("told {}", told.join(" "));
}

#[test]
fn eight_processes_share_one_study_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("studies/shared.jsonl");
    let children: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "tune::journal_worker", "--ignored", "--nocapture", "--test-threads=1"])
                .env("KILN_TUNE_JOURNAL", &path)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut told: BTreeMap<u64, f64> = BTreeMap::new();
    let mut active_workers = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a worker failed: {out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        // libtest prints the test's name on the same line, before what the test prints.
        let line =
            stdout.lines().find_map(|l| l.split_once("told ").map(|(_, t)| t)).unwrap_or_else(|| panic!("{stdout}"));
        let mut any = false;
        for pair in line.split_whitespace() {
            let (n, v) = pair.split_once('=').unwrap();
            assert!(told.insert(n.parse().unwrap(), v.parse().unwrap()).is_none(), "trial {n} told twice");
            any = true;
        }
        active_workers += usize::from(any);
    }
    assert!(active_workers >= 2, "only {active_workers} worker ran trials");

    // A fresh reader replays every line: numbers 0..N, each trial complete with the value its
    // worker told, computed from the parameters recorded.
    let study = Study::open(&path).unwrap();
    let trials = study.trials().unwrap();
    assert_eq!(trials.iter().map(|t| t.number).collect::<Vec<_>>(), (0..SHARED_TRIALS).collect::<Vec<_>>());
    assert_eq!(told.keys().copied().collect::<Vec<_>>(), (0..SHARED_TRIALS).collect::<Vec<_>>());
    let mut workers = BTreeSet::new();
    for t in &trials {
        assert_eq!(t.state, TrialState::Complete, "{t:?}");
        let (x, k, kind) =
            (t.params["x"].as_f64().unwrap(), t.params["k"].as_i64().unwrap(), t.params["kind"].as_str().unwrap());
        assert_eq!(t.value, Some(shared_value(x, k, kind)));
        assert_eq!(t.value, Some(told[&t.number]));
        assert_eq!(t.intermediate_values, BTreeMap::from([(1, x * x)]));
        workers.insert(t.worker.clone());
    }
    assert_eq!(workers.len(), active_workers);
    let stats = study.journal_stats();
    assert_eq!((stats.torn_tails, stats.ignored_ops), (0, 0));
    // One `trial` line and one rung-0 record per trial, from whichever process ran it.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains(r#""op":"trial""#)).count() as u64, SHARED_TRIALS);
    assert_eq!(text.lines().filter(|l| l.contains(r#""op":"rung""#)).count() as u64, SHARED_TRIALS);
    assert_eq!(stats.lines as usize, text.lines().count());
}

#[test]
fn threads_with_their_own_handles_share_a_journal() {
    // Handles of one process queue on a process-wide lock before `flock`: on NFS, where flock
    // is a POSIX lock owned by the process, they would not exclude each other otherwise.
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Study>();
    send::<Trial>();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("threads.jsonl");
    Study::create(&path, StudyConfig::new("threads").sampler(tpe(1, 5))).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let study = Study::open(&path).unwrap();
                study.optimize_total(quick, 40).unwrap().trials.len()
            })
        })
        .collect();
    let run: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(run, 40);
    let numbers: Vec<u64> = Study::open(&path).unwrap().trials().unwrap().iter().map(|t| t.number).collect();
    assert_eq!(numbers, (0..40).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Torn and damaged lines

fn quick(trial: &mut Trial) -> kiln_train::Result<f64> {
    let x = trial.suggest_float("x", -1.0, 1.0)?;
    Ok(x * x)
}

fn journal_with_trials(dir: &Path, n: usize) -> (std::path::PathBuf, Study) {
    let path = dir.join("study.jsonl");
    let study = Study::create(&path, StudyConfig::new("torn").sampler(SamplerConfig::random(1))).unwrap();
    study.optimize(quick, n).unwrap();
    (path, study)
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

#[test]
fn a_torn_last_line_is_skipped_reported_and_removed_by_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let (path, writer) = journal_with_trials(dir.path(), 3);
    let text = std::fs::read_to_string(&path).unwrap();
    let last = text.lines().last().unwrap();
    let half = &last.as_bytes()[..last.len() / 2];
    append_bytes(&path, half); // a writer killed mid-append

    let reader = Study::open(&path).unwrap();
    assert_eq!(reader.trials().unwrap().len(), 3);
    assert_eq!(reader.journal_stats().torn_tails, 1);
    assert_eq!(reader.trials().unwrap().len(), 3);
    assert_eq!(reader.journal_stats().torn_tails, 1, "reported once");

    // The study keeps working: the next append removes the torn bytes first.
    let report = reader.optimize(quick, 2).unwrap();
    assert_eq!(report.completed(), 2);
    assert_eq!(reader.journal_stats().torn_bytes_removed, half.len() as u64);
    assert!(std::fs::read(&path).unwrap().ends_with(b"\n"));
    let fresh = Study::open(&path).unwrap();
    assert_eq!(fresh.trials().unwrap().len(), 5);
    assert_eq!(fresh.journal_stats().torn_tails, 0);
    // A handle that read up to the torn line goes on from where it was.
    assert_eq!(writer.trials().unwrap().iter().map(|t| t.number).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);

    // A crash can also leave the size extended over zeros, newline or not.
    append_bytes(&path, &[0u8; 40]);
    append_bytes(&path, b"\n");
    let zeros = Study::open(&path).unwrap();
    assert_eq!(zeros.trials().unwrap().len(), 5);
    assert_eq!(zeros.journal_stats().torn_tails, 1);
    zeros.optimize(quick, 1).unwrap();
    assert_eq!(Study::open(&path).unwrap().trials().unwrap().len(), 6);
}

fn checksummed(json: &str) -> String {
    let hash = blake3::hash(json.as_bytes());
    let hex: String = hash.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex} {json}\n")
}

#[test]
fn a_damaged_line_inside_the_journal_is_an_error_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = journal_with_trials(dir.path(), 3);
    let original = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = original.lines().map(str::to_string).collect();

    // A flipped byte in line 4.
    let damaged = lines[3].replacen("\"ms\":", "\"ms\":9", 1);
    let mut copy = lines.clone();
    copy[3] = damaged;
    std::fs::write(&path, copy.join("\n") + "\n").unwrap();
    let err = Study::open(&path).unwrap_err();
    assert!(matches!(&err, Error::Journal { line: 4, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("line 4") && msg.contains("checksum"), "{msg}");

    // A well-formed line this version does not know, in the middle.
    lines.insert(2, checksummed(r#"{"op":"teleport","trial":0,"ms":0}"#).trim_end().to_string());
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let err = Study::open(&path).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("teleport"), "{err}");

    // A line breaking the journal's rules: a trial number out of order.
    lines.remove(2);
    lines.insert(2, checksummed(r#"{"op":"trial","number":7,"ms":0,"worker":"w"}"#).trim_end().to_string());
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let err = Study::open(&path).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("trial number 7"), "{err}");

    // Not a study journal at all.
    std::fs::write(&path, "").unwrap();
    assert!(matches!(Study::open(&path), Err(Error::Journal { .. })));
    assert!(matches!(Study::open(dir.path().join("missing.jsonl")), Err(Error::Io { .. })));
}

#[test]
fn workers_must_agree_on_the_study() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.jsonl");
    let config = StudyConfig::new("agree").sampler(SamplerConfig::tpe(1));
    Study::open_or_create(&path, config.clone()).unwrap();
    Study::open_or_create(&path, config.clone()).unwrap();
    assert_eq!(Study::open(&path).unwrap().config(), config);
    let err = Study::open_or_create(&path, config.clone().direction(Direction::Maximize)).unwrap_err();
    assert!(matches!(err, Error::StudyMismatch { .. }), "{err}");
    assert!(matches!(Study::create(&path, config), Err(Error::StudyMismatch { .. })));
}

// ---------------------------------------------------------------------------------------------
// Pruners

/// Reports `values` at steps 0, 1, ...; returns the should_prune answer after each step.
fn curve(trial: &mut Trial, values: &[f64]) -> Vec<bool> {
    values
        .iter()
        .enumerate()
        .map(|(step, &v)| {
            trial.report(step as u64, v).unwrap();
            trial.should_prune().unwrap()
        })
        .collect()
}

#[test]
fn the_median_pruner_stops_trials_worse_than_the_median_at_their_step() {
    let pruner = MedianPruner { n_startup_trials: 3, n_warmup_steps: 1, ..MedianPruner::default() };
    let study =
        memory(StudyConfig::new("median").sampler(SamplerConfig::random(0)).pruner(PrunerConfig::Median(pruner)));
    // Three complete trials; the medians at steps 0, 1, 2 are 5, 4, 3. Nothing is pruned
    // before three are complete, however bad.
    for values in [[4.0, 3.0, 2.0], [5.0, 4.0, 3.0], [6.0, 5.0, 4.0]] {
        let mut t = study.ask().unwrap();
        assert_eq!(curve(&mut t, &[100.0, 100.0, 100.0]), [false, false, false]);
        t.prune().unwrap();
        let mut t = study.ask().unwrap();
        assert_eq!(curve(&mut t, &values), [false, false, false]);
        t.complete(values[2]).unwrap();
    }
    let check = |values: &[f64]| {
        let mut t = study.ask().unwrap();
        let answers = curve(&mut t, values);
        t.prune().unwrap();
        answers
    };
    // Step 0 is warm-up; then the best value so far is held against the median.
    assert_eq!(check(&[100.0, 4.5]), [false, true]);
    assert_eq!(check(&[100.0, 3.5, 3.2]), [false, false, true]);
    assert_eq!(check(&[100.0, 4.0, 3.0]), [false, false, false], "equal to the median is kept");
    assert_eq!(check(&[0.0, 4.5, 3.5]), [false, false, false], "its best (0) beats every median");
    assert_eq!(check(&[1.0, f64::NAN]), [false, false]);
    assert_eq!(check(&[f64::NAN, f64::NAN]), [false, true], "nothing but NaN is pruned");
    // Pruned trials never entered the medians: only the three complete ones count.
    assert_eq!(check(&[100.0, 4.01]), [false, true]);

    // Maximising flips the comparison; a percentile of 25 raises the bar.
    let pruner = MedianPruner { n_startup_trials: 1, percentile: 25.0, ..MedianPruner::default() };
    let study = memory(
        StudyConfig::new("max")
            .direction(Direction::Maximize)
            .sampler(SamplerConfig::random(0))
            .pruner(PrunerConfig::Median(pruner)),
    );
    for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
        let mut t = study.ask().unwrap();
        t.report(0, v).unwrap();
        t.complete(v).unwrap();
    }
    // The top-quartile bar when maximising is the 75th percentile of [1..5]: 4.
    for (v, pruned) in [(3.9, true), (4.0, false), (4.5, false)] {
        let mut t = study.ask().unwrap();
        t.report(0, v).unwrap();
        assert_eq!(t.should_prune().unwrap(), pruned, "{v}");
        t.prune().unwrap();
    }
}

#[test]
fn successive_halving_keeps_the_top_fraction_at_each_rung() {
    // Rungs at steps 1, 2, 4, 8 (min_resource 1, η = 2); the study lives in a journal so the
    // rung records are lines other workers would read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("asha.jsonl");
    let sh = SuccessiveHalving { min_resource: 1, reduction_factor: 2, ..SuccessiveHalving::default() };
    let config = StudyConfig::new("asha").sampler(SamplerConfig::random(0)).pruner(PrunerConfig::SuccessiveHalving(sh));
    let study = Study::create(&path, config).unwrap();
    let mut trials: Vec<Trial> = (0..5).map(|_| study.ask().unwrap()).collect();
    let step = |t: &mut Trial, s: u64, v: f64| {
        t.report(s, v).unwrap();
        t.should_prune().unwrap()
    };
    // Step 0 is below the first rung: nothing is recorded or pruned.
    assert!(!step(&mut trials[0], 0, 9.0));
    // Rung 0 (step 1): a trial goes on if it is within the best ⌊n/η⌋ (at least the best one)
    // of the values recorded there so far, itself included.
    assert!(!step(&mut trials[0], 1, 0.5)); // [0.5]: the best
    assert!(step(&mut trials[1], 1, 0.7)); // [0.5, 0.7]: keeps 1
    assert!(!step(&mut trials[2], 1, 0.3)); // [0.3, 0.5, 0.7]: keeps 1
    assert!(!step(&mut trials[3], 1, 0.4)); // [0.3, 0.4, 0.5, 0.7]: keeps 2
    assert!(step(&mut trials[4], 1, 0.6)); // five values: keeps 2
    // Rung 1 (step 2) starts afresh.
    assert!(!step(&mut trials[0], 2, 0.45));
    assert!(step(&mut trials[2], 2, 0.5));
    // A trial reporting step 4 at once passes rungs 0, 1 and 2 in one call.
    let mut late = study.ask().unwrap();
    assert!(!step(&mut late, 4, 0.1));
    // Trial 3 passed rung 0 before; at step 4, rung 1 holds [0.45, 0.5, 0.1, 0.2] and keeps
    // 2 (it passes), rung 2 holds [0.1, 0.2] and keeps 1: pruned.
    assert!(step(&mut trials[3], 4, 0.2));
    let text = std::fs::read_to_string(&path).unwrap();
    let rung_lines = |rung: u32| {
        text.lines().filter(|l| l.contains(r#""op":"rung""#) && l.contains(&format!(r#""rung":{rung},"#))).count()
    };
    assert_eq!([rung_lines(0), rung_lines(1), rung_lines(2), rung_lines(3)], [6, 4, 2, 0]);
    for t in trials {
        t.prune().unwrap();
    }
    late.complete(0.1).unwrap();
    let states: Vec<TrialState> = study.trials().unwrap().iter().map(|t| t.state).collect();
    assert_eq!(states.iter().filter(|s| **s == TrialState::Pruned).count(), 5);
}

#[test]
fn optimize_records_pruned_failed_and_complete_trials() {
    let study = memory(
        StudyConfig::new("outcomes")
            .sampler(SamplerConfig::random(4))
            .pruner(PrunerConfig::Median(MedianPruner { n_startup_trials: 1, ..MedianPruner::default() })),
    );
    let mut calls = 0;
    let report = study
        .optimize(
            |t: &mut Trial| -> kiln_train::Result<f64> {
                calls += 1;
                let x = t.suggest_float("x", 0.0, 1.0)?;
                match calls {
                    1 => {
                        t.report(0, 1.0)?;
                        Ok(1.0)
                    }
                    2 => {
                        t.report(0, 5.0)?;
                        if t.should_prune()? {
                            return Err(t.pruned());
                        }
                        Ok(5.0)
                    }
                    3 => Err(Error::Config("out of memory".into())),
                    4 => Ok(f64::NAN),
                    _ => Ok(x),
                }
            },
            6,
        )
        .unwrap();
    let states: Vec<TrialState> = report.trials.iter().map(|t| t.state).collect();
    use TrialState::{Complete, Failed, Pruned};
    assert_eq!(states, [Complete, Pruned, Failed, Failed, Complete, Complete]);
    assert_eq!((report.completed(), report.pruned(), report.failed()), (3, 1, 2));
    assert_eq!(report.trials[1].value, Some(5.0), "a pruned trial keeps its last intermediate value");
    assert!(report.trials[2].reason.as_deref().unwrap().contains("out of memory"));
    assert!(report.trials[3].reason.as_deref().unwrap().contains("NaN"));
    assert_eq!(
        study.best_trial().unwrap().unwrap().value,
        report.trials[4..].iter().filter_map(|t| t.value).reduce(f64::min).map(|m| m.min(1.0))
    );

    // A trial dropped without an end (the objective panicked) is recorded as failed.
    let t = study.ask().unwrap();
    let n = t.number();
    drop(t);
    let dropped = study.trial(n).unwrap().unwrap();
    assert_eq!(dropped.state, Failed);
    assert!(dropped.reason.unwrap().contains("dropped"));
}

// ---------------------------------------------------------------------------------------------
// Spaces, distributions, grids

fn optimizer_space() -> SearchSpace {
    SearchSpace::new()
        .param(ParamSpec::new("optimizer", Distribution::categorical(["sgd", "adam"])))
        .param(ParamSpec::new("lr", Distribution::log_float(1e-5, 1e-1)))
        .param(ParamSpec::new("momentum", Distribution::float(0.0, 0.99)).when("optimizer", "sgd"))
        .param(ParamSpec::new("nesterov", Distribution::categorical([true, false])).when("optimizer", "sgd"))
        .param(ParamSpec::new("beta2", Distribution::float(0.9, 0.9999)).when("optimizer", "adam"))
}

#[test]
fn conditional_parameters_exist_only_when_their_parent_has_the_value() {
    // The space as a user writes it in a config file.
    let text = r#"{"params": [
        {"name": "optimizer", "distribution": {"type": "categorical", "choices": ["sgd", "adam"]}},
        {"name": "lr", "distribution": {"type": "float", "low": 1e-5, "high": 0.1, "log": true}},
        {"name": "momentum", "distribution": {"type": "float", "low": 0.0, "high": 0.99},
         "when": {"param": "optimizer", "in": ["sgd"]}},
        {"name": "nesterov", "distribution": {"type": "categorical", "choices": [true, false]},
         "when": {"param": "optimizer", "in": ["sgd"]}},
        {"name": "beta2", "distribution": {"type": "float", "low": 0.9, "high": 0.9999},
         "when": {"param": "optimizer", "in": ["adam"]}}
    ]}"#;
    let space: SearchSpace = serde_json::from_str(text).unwrap();
    assert_eq!(space, optimizer_space());

    let study = memory(StudyConfig::new("conditional").sampler(tpe(2, 5)));
    let report = study
        .optimize(
            |t: &mut Trial| -> kiln_train::Result<f64> {
                let p = t.suggest_space(&space)?;
                let lr = p["lr"].as_f64().unwrap();
                Ok(match p["optimizer"].as_str().unwrap() {
                    "sgd" => (lr.log10() + 2.0).abs() + (p["momentum"].as_f64().unwrap() - 0.9).abs(),
                    _ => 0.5 + (lr.log10() + 3.0).abs(),
                })
            },
            40,
        )
        .unwrap();
    assert_eq!(report.completed(), 40);
    let mut branches = BTreeSet::new();
    for t in &report.trials {
        let keys: Vec<&str> = t.params.keys().map(String::as_str).collect();
        match t.params["optimizer"].as_str().unwrap() {
            "sgd" => assert_eq!(keys, ["lr", "momentum", "nesterov", "optimizer"]),
            _ => assert_eq!(keys, ["beta2", "lr", "optimizer"]),
        }
        branches.insert(t.params["optimizer"].to_string());
    }
    assert_eq!(branches.len(), 2);

    // Define-by-run: the same, with an `if`.
    let study = memory(StudyConfig::new("by-run").sampler(tpe(2, 5)));
    study
        .optimize(
            |t: &mut Trial| -> kiln_train::Result<f64> {
                let opt = t.suggest_categorical("optimizer", &["sgd", "adam"])?;
                let m = if opt == "sgd" { t.suggest_float("momentum", 0.0, 0.99)? } else { 0.5 };
                assert_eq!(t.params().contains_key("momentum"), opt == "sgd");
                Ok((m - 0.9).abs())
            },
            30,
        )
        .unwrap();

    // Spaces that cannot work are refused with the parameter named.
    let bad = [
        (
            SearchSpace::new().param(ParamSpec::new("m", Distribution::float(0.0, 1.0)).when("opt", "sgd")),
            "not declared before",
        ),
        (
            SearchSpace::new()
                .param(ParamSpec::new("opt", Distribution::float(0.0, 1.0)))
                .param(ParamSpec::new("m", Distribution::float(0.0, 1.0)).when("opt", "sgd")),
            "not categorical",
        ),
        (
            SearchSpace::new()
                .param(ParamSpec::new("opt", Distribution::categorical(["sgd"])))
                .param(ParamSpec::new("m", Distribution::float(0.0, 1.0)).when("opt", "adam")),
            "not one of its choices",
        ),
        (SearchSpace::new().param(ParamSpec::new("lr", Distribution::log_float(0.0, 1.0))), "log scale needs low > 0"),
        (SearchSpace::new().param(ParamSpec::new("k", Distribution::int_step(0, 10, 3))), "not a multiple"),
    ];
    for (space, expected) in bad {
        let err = space.validate().unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn a_parameter_asked_with_another_distribution_is_an_error_naming_both() {
    let study = memory(StudyConfig::new("mismatch").sampler(SamplerConfig::random(0)));
    let mut t = study.ask().unwrap();
    let lr = t.suggest_float("lr", 0.0, 1.0).unwrap();
    assert_eq!(t.suggest_float("lr", 0.0, 1.0).unwrap(), lr, "the same value again");
    let err = t.suggest_float("lr", 0.0, 2.0).unwrap_err();
    assert!(matches!(err, Error::DistributionMismatch { .. }), "{err}");
    t.complete(lr).unwrap();

    let mut t = study.ask().unwrap();
    let err = t.suggest_log_float("lr", 1e-5, 1.0).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("`lr`") && msg.contains("float [0, 1]") && msg.contains("float [0.00001, 1] log"), "{msg}");
    let err = t.suggest_int("lr", 0, 1).unwrap_err().to_string();
    assert!(err.contains("int [0, 1]") && err.contains("float [0, 1]"), "{err}");
    t.fail("mismatch").unwrap();

    // Across processes: a second handle on the same journal sees the first one's parameter.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let a = Study::create(&path, StudyConfig::new("m").sampler(SamplerConfig::random(0))).unwrap();
    let b = Study::open(&path).unwrap();
    let mut tb = b.ask().unwrap();
    let mut ta = a.ask().unwrap();
    ta.suggest_categorical("act", &["relu", "gelu"]).unwrap();
    let err = tb.suggest_categorical("act", &["relu", "tanh"]).unwrap_err().to_string();
    assert!(
        err.contains(r#"categorical ["relu", "gelu"]"#) && err.contains(r#"categorical ["relu", "tanh"]"#),
        "{err}"
    );
}

#[test]
fn a_grid_gives_each_point_to_one_trial_and_reports_exhaustion() {
    let grid = BTreeMap::from([
        ("lr".to_string(), vec![json!(0.1), json!(0.01)]),
        ("layers".to_string(), vec![json!(1), json!(2), json!(3)]),
    ]);
    for seed in [None, Some(9)] {
        let sampler = SamplerConfig::Grid(GridConfig { grid: grid.clone(), seed });
        let study = memory(StudyConfig::new("grid").sampler(sampler));
        let report = study
            .optimize(
                |t: &mut Trial| -> kiln_train::Result<f64> {
                    let lr = t.suggest_log_float("lr", 1e-4, 1.0)?;
                    let layers = t.suggest_int("layers", 1, 8)?;
                    Ok(lr * layers as f64)
                },
                10,
            )
            .unwrap();
        assert!(report.grid_exhausted);
        assert_eq!(report.completed(), 6);
        let points: BTreeSet<(String, i64)> =
            report.trials.iter().map(|t| (t.params["lr"].to_string(), t.params["layers"].as_i64().unwrap())).collect();
        assert_eq!(points.len(), 6);
        let err = study.ask().unwrap_err();
        assert!(matches!(err, Error::GridExhausted { points: 6, .. }), "{err}");
        assert!(err.to_string().contains("exhausted"));
    }
    let study = memory(StudyConfig::new("grid").sampler(SamplerConfig::grid(grid)));
    let mut t = study.ask().unwrap();
    let err = t.suggest_float("dropout", 0.0, 0.5).unwrap_err().to_string();
    assert!(err.contains("`dropout` is not in the grid"), "{err}");
    let err = t.suggest_float("lr", 0.5, 1.0).unwrap_err().to_string();
    assert!(err.contains("not in float [0.5, 1]"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Dead workers

/// The body of the child process below: starts a trial with 50 ms heartbeats, reports once,
/// and hangs until it is killed.
#[test]
#[ignore = "run as a child process by a_killed_workers_trial_is_failed_as_stale"]
fn hanging_worker() {
    let Some(path) = std::env::var_os("KILN_TUNE_HANG") else { return };
    let study = Study::open(&path).unwrap();
    study.set_heartbeat(Some(Duration::from_millis(50)));
    let mut t = study.ask().unwrap();
    t.suggest_float("x", 0.0, 1.0).unwrap();
    t.report(0, 1.0).unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_killed_workers_trial_is_failed_as_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.jsonl");
    let study = Study::create(&path, StudyConfig::new("stale").sampler(SamplerConfig::random(0))).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "tune::hanging_worker", "--ignored", "--nocapture", "--test-threads=1"])
        .env("KILN_TUNE_HANG", &path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while study.trial(0).unwrap().is_none_or(|t| t.intermediate_values.is_empty()) {
        assert!(Instant::now() < deadline, "the worker never reported");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Alive: its heartbeats keep coming, so the next ask leaves it alone.
    std::thread::sleep(Duration::from_millis(300));
    let beats_before = study.trial(0).unwrap().unwrap().last_seen_ms;
    let t = study.ask().unwrap();
    assert_eq!(study.trial(0).unwrap().unwrap().state, TrialState::Running);
    assert!(beats_before > study.trial(0).unwrap().unwrap().started_ms);
    t.complete(0.5).unwrap();

    child.kill().unwrap(); // SIGKILL: no chance to record anything
    child.wait().unwrap();
    assert!(study.fail_stale(Duration::from_secs(3600)).unwrap().is_empty(), "not silent for an hour");
    std::thread::sleep(Duration::from_millis(200)); // more than two promised heartbeats
    let t = study.ask().unwrap();
    let dead = study.trial(0).unwrap().unwrap();
    assert_eq!(dead.state, TrialState::Failed);
    assert!(dead.reason.as_deref().unwrap().contains("stale"), "{dead:?}");
    assert_eq!(t.number(), 2);

    // Without heartbeats, fail_stale decides; a slow worker finds out at its next write.
    let other = Study::open(&path).unwrap();
    assert_eq!(other.fail_stale(Duration::ZERO).unwrap(), vec![2]);
    assert!(study.fail_stale(Duration::ZERO).unwrap().is_empty(), "a trial running here is never stale here");
    let err = t.complete(1.0).unwrap_err();
    assert!(matches!(err, Error::TrialNotRunning { trial: 2, .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// kiln-track

#[test]
fn trials_become_child_runs_of_the_study_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let parent = store.run_builder("sweep").name("study").capture_environment(false).start().unwrap();
    let study = memory(StudyConfig::new("tracked").sampler(SamplerConfig::random(3)));
    study.set_tracking(Some(Tracking::new(&store, "sweep").parent(parent.id()).capture_environment(false)));

    let mut t = study.ask().unwrap();
    let lr0 = t.suggest_log_float("lr", 1e-4, 1e-1).unwrap();
    t.suggest_categorical("opt", &["sgd", "adam"]).unwrap();
    t.report(0, 2.0).unwrap();
    t.report(1, 1.5).unwrap();
    t.complete(1.25).unwrap();
    let mut t = study.ask().unwrap();
    t.suggest_log_float("lr", 1e-4, 1e-1).unwrap();
    t.fail("diverged").unwrap();
    let mut t = study.ask().unwrap();
    t.suggest_log_float("lr", 1e-4, 1e-1).unwrap();
    t.report(0, 9.0).unwrap();
    t.prune().unwrap();
    let parent_id = parent.id().to_string();
    parent.finish().unwrap();

    let runs = store.runs(Some("sweep")).unwrap();
    let mut children: Vec<_> = runs.iter().filter(|r| r.meta.parent_run_id.as_deref() == Some(&parent_id)).collect();
    children.sort_by_key(|r| r.tags["kiln.tune.trial"].parse::<u64>().unwrap());
    assert_eq!(children.len(), 3);
    let names: Vec<&str> = children.iter().map(|r| r.meta.name.as_str()).collect();
    assert_eq!(names, ["tracked/trial-0", "tracked/trial-1", "tracked/trial-2"]);
    assert_eq!(
        children.iter().map(|r| r.status()).collect::<Vec<_>>(),
        [RunStatus::Completed, RunStatus::Failed, RunStatus::Killed]
    );
    let first = children[0];
    assert_eq!(first.params["lr"], json!(lr0));
    assert!(first.params.contains_key("opt"));
    assert_eq!(first.final_metrics["value"], 1.25);
    assert_eq!(first.tags["kiln.tune.state"], "complete");
    let points = store.metrics(&first.meta.run_id).unwrap();
    let curve: Vec<(u64, f64)> =
        points.iter().filter(|p| p.key == "intermediate_value").map(|p| (p.step, p.value)).collect();
    assert_eq!(curve, [(0, 2.0), (1, 1.5)]);
    assert_eq!(children[1].state.error.as_deref(), Some("diverged"));
    assert!(children[2].state.error.as_deref().unwrap().contains("pruned at step 0"));
}

#[test]
fn a_value_no_reader_could_parse_is_refused_and_the_journal_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (path, study) = journal_with_trials(dir.path(), 2);
    let mut trial = study.ask().unwrap();
    let mut deep = serde_json::json!(1);
    for _ in 0..200 {
        deep = serde_json::json!([deep]);
    }
    let err = trial.set_user_attr("deep", deep).unwrap_err();
    assert!(err.to_string().contains("no reader could read"), "{err}");
    trial.complete(0.5).unwrap();
    let reopened = Study::open(&path).unwrap();
    assert_eq!(reopened.trials().unwrap().len(), 3);
}

#[test]
fn appends_of_several_operations_are_one_line_and_a_symlink_shares_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (path, study) = journal_with_trials(dir.path(), 2);
    // Two silent running trials failed as stale: one append, one line.
    let other = Study::open(&path).unwrap();
    let _hanging = (other.ask().unwrap(), other.ask().unwrap());
    let lines_before = std::fs::read_to_string(&path).unwrap().lines().count();
    std::thread::sleep(Duration::from_millis(20));
    let stale = study.fail_stale(Duration::from_millis(1)).unwrap();
    assert_eq!(stale, vec![2, 3]);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), lines_before + 1);
    // A huge duration never fails anyone (no wrap-around to a negative limit).
    let _live = Study::open(&path).unwrap().ask().unwrap();
    assert!(study.fail_stale(Duration::MAX).unwrap().is_empty());

    let link = dir.path().join("latest.jsonl");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let via_link = Study::open(&link).unwrap();
    let t = via_link.ask().unwrap();
    let direct = study.ask().unwrap();
    assert_ne!(t.number(), direct.number());
    assert_eq!(Study::open(&path).unwrap().trials().unwrap().len(), 7);
}

#[test]
fn a_float_range_wider_than_f64_is_refused() {
    let study = memory(StudyConfig::new("wide"));
    let mut trial = study.ask().unwrap();
    let err = trial.suggest_float("x", -1e308, 1e308).unwrap_err();
    assert!(err.to_string().contains("width"), "{err}");
}
