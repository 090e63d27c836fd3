"""The peers' side of the comparison harness: the same work as `examples/compare.rs`, done the
way our users do it today. Each case prints one JSON line: the seconds its work took and what it
did, so harness.py can check both sides did the same work."""

import hashlib
import json
import os
import sys
import time

CHOICES = ["sgd", "adam", "adamw"]


def hash_dir(root):
    """DVC's content hash: MD5 of every file, one after another."""
    start = time.perf_counter()
    files = 0
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            h = hashlib.md5()
            with open(os.path.join(dirpath, name), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    total += len(chunk)
            h.hexdigest()
            files += 1
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "check": {"files": files, "bytes": total}}))


def track(dir_, points, mode):
    """MLflow with a local SQLite store: `log_batch` (1,000 metrics per call, MLflow's limit) or
    one `log_metric` call per value. The store and the run are made before the clock starts, as
    on kiln's side; the points are then counted with SQL, outside MLflow."""
    import sqlite3
    import warnings

    warnings.filterwarnings("ignore")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    os.makedirs(dir_, exist_ok=True)
    db = os.path.join(dir_, "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.create_experiment("compare", artifact_location=os.path.join(dir_, "artifacts"))
    run_id = client.create_run(exp).info.run_id
    keys = [f"k{i}" for i in range(10)]
    steps = points // len(keys)
    start = time.perf_counter()
    ts = int(time.time() * 1000)
    if mode == "batch":
        batch = []
        for step in range(steps):
            for k in keys:
                batch.append(Metric(k, step * 0.5, ts, step))
                if len(batch) == 1000:
                    client.log_batch(run_id, metrics=batch)
                    batch = []
        if batch:
            client.log_batch(run_id, metrics=batch)
    elif mode == "call":
        for step in range(steps):
            for k in keys:
                client.log_metric(run_id, k, step * 0.5, timestamp=ts, step=step)
    else:
        sys.exit(f"mode must be batch or call, not {mode!r}")
    client.set_terminated(run_id)
    seconds = time.perf_counter() - start
    stored = sqlite3.connect(db).execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    print(json.dumps({"seconds": seconds, "check": {"points": stored}}))


def tpe(history, asks):
    """Optuna's TPESampler: `ask()` plus three suggestions on a study holding the history."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {
        "x": FloatDistribution(-5.0, 5.0),
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "opt": CategoricalDistribution(CHOICES),
    }
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    trials = []
    with open(history) as f:
        for line in f:
            t = json.loads(line)
            trials.append(
                optuna.trial.create_trial(
                    params={"x": t["x"], "lr": t["lr"], "opt": t["opt"]}, distributions=dists, value=t["value"]
                )
            )
    study.add_trials(trials)
    per_ask = []
    start = time.perf_counter()
    for _ in range(asks):
        t0 = time.perf_counter()
        trial = study.ask()
        trial.suggest_float("x", -5.0, 5.0)
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_categorical("opt", CHOICES)
        per_ask.append(time.perf_counter() - t0)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    seconds = time.perf_counter() - start
    per_ask.sort()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "median_ask_seconds": per_ask[len(per_ask) // 2],
                "check": {"finished_trials": len(trials), "asks": asks},
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["hash"] and len(sys.argv) == 3:
        hash_dir(sys.argv[2])
    elif sys.argv[1:2] == ["track"] and len(sys.argv) == 5:
        track(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1:2] == ["tpe"] and len(sys.argv) == 4:
        tpe(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: peers.py hash DIR | peers.py tpe HISTORY.jsonl ASKS")
