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


NUMERIC = [f"num_{j}" for j in range(16)]
CATEGORICAL = [f"cat_{j}" for j in range(4)]
LEVELS = [f"l{l}" for l in range(6)]


def preprocess(path):
    """pandas + scikit-learn: stratified 70/15/15 split with train_test_split, then a
    ColumnTransformer (mean impute + StandardScaler; most-frequent impute + OneHotEncoder)
    fitted on the training rows, and every row transformed to a dense matrix."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.read_parquet(path)
    start = time.perf_counter()
    idx = np.arange(len(frame))
    y = frame["label"].to_numpy()
    train, rest = train_test_split(idx, test_size=0.3, stratify=y, random_state=42)
    _val, _test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=42)
    transformer = ColumnTransformer(
        [
            ("numbers", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), NUMERIC),
            (
                "labels",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                CATEGORICAL,
            ),
        ]
    )
    features = frame[NUMERIC + CATEGORICAL]
    transformer.fit(features.iloc[train])
    x = transformer.transform(features)
    seconds = time.perf_counter() - start
    check = {
        "rows": int(x.shape[0]),
        "width": int(x.shape[1]),
        "one_hot_sum": int(round(float(x[:, len(NUMERIC) :].sum()))),
        "non_finite": int((~np.isfinite(x)).sum()),
        "train_per_mille": int(round(1000 * len(train) / x.shape[0])),
    }
    print(json.dumps({"seconds": seconds, "check": check}))


def validate(path):
    """Pandera's Polars backend, lazy (every failure collected): range and not-null on the 16
    numeric columns, allowed set and string length on the 4 categorical ones, allowed set on
    the label."""
    import pandera.polars as pa
    import polars as pl

    frame = pl.read_parquet(path)
    columns = {c: pa.Column(pl.Float64, pa.Check.in_range(-50.0, 50.0), nullable=False) for c in NUMERIC}
    columns.update(
        {
            c: pa.Column(pl.Utf8, [pa.Check.isin(LEVELS), pa.Check.str_length(2, 2)], nullable=False)
            for c in CATEGORICAL
        }
    )
    columns["label"] = pa.Column(pl.Utf8, pa.Check.isin([f"c{c}" for c in range(10)]))
    schema = pa.DataFrameSchema(columns)
    start = time.perf_counter()
    try:
        schema.validate(frame, lazy=True)
        cases = None
    except pa.errors.SchemaErrors as e:
        cases = e.failure_cases
    seconds = time.perf_counter() - start
    by_check = {}
    bad_rows = set()
    if cases is not None:
        for row in cases.iter_rows(named=True):
            name = "not_null" if row["check"] == "not_nullable" else row["check"].split("(")[0]
            by_check[name] = by_check.get(name, 0) + 1
            if row["index"] is not None:
                bad_rows.add(row["index"])
    total = sum(by_check.values())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "check": {"rows": frame.height, "failures": total, "bad_rows": len(bad_rows), "by_check": dict(sorted(by_check.items()))},
            }
        )
    )


def make_runs(db, runs):
    """An MLflow SQLite store holding RUNS.jsonl's runs. MLflow makes the schema; the rows are
    written with SQL in one transaction (through MLflow's API this takes minutes, and only the
    query is measured). Then checked through MLflow's own reader."""
    import sqlite3
    import uuid
    import warnings

    warnings.filterwarnings("ignore")
    from mlflow.tracking import MlflowClient

    if os.path.exists(db):
        os.remove(db)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.create_experiment("sweep", artifact_location=os.path.join(os.path.dirname(db), "artifacts"))
    probe = client.create_run(exp)
    client.delete_run(probe.info.run_id)
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    template = dict(zip(cols, con.execute("SELECT * FROM runs WHERE run_uuid = ?", (probe.info.run_id,)).fetchone()))
    con.execute("DELETE FROM runs WHERE run_uuid = ?", (probe.info.run_id,))
    con.execute("DELETE FROM tags WHERE run_uuid = ?", (probe.info.run_id,))
    ts = int(time.time() * 1000)
    run_rows, params, metrics, latest, tags = [], [], [], [], []
    with open(runs) as f:
        for line in f:
            r = json.loads(line)
            rid = uuid.uuid4().hex
            row = dict(template)
            row.update(
                run_uuid=rid,
                name=r["name"],
                status="FINISHED",
                start_time=ts,
                end_time=ts + 1000,
                lifecycle_stage="active",
                deleted_time=None,
                artifact_uri=os.path.join(os.path.dirname(db), "artifacts", rid, "artifacts"),
            )
            run_rows.append(tuple(row[c] for c in cols))
            params += [("model", r["model"], rid), ("lr", repr(r["lr"]), rid), ("batch", str(r["batch"]), rid)]
            for step, v in enumerate(r["val_loss"]):
                metrics.append(("val_loss", v, ts + step, rid, step, False))
            latest.append(("val_loss", r["val_loss"][-1], ts + len(r["val_loss"]) - 1, len(r["val_loss"]) - 1, False, rid))
            tags.append(("mlflow.runName", r["name"], rid))
    con.executemany(f"INSERT INTO runs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", run_rows)
    con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", params)
    con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)", metrics)
    con.executemany(
        "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)", latest
    )
    con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tags)
    con.commit()
    con.close()
    some = client.search_runs([exp], max_results=5)
    assert len(some) == 5 and all(r.info.status == "FINISHED" and "val_loss" in r.data.metrics for r in some), some
    assert all(r.info.run_name and r.data.params["model"] for r in some)


def query(db, models):
    """MLflow's way to the best run of each model: one search_runs per model, filtered on the
    param, ordered by the metric, first result."""
    import warnings

    warnings.filterwarnings("ignore")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("sweep").experiment_id
    start = time.perf_counter()
    best = []
    for model in models.split(","):
        [run] = client.search_runs(
            [exp], filter_string=f"params.model = '{model}'", order_by=["metrics.val_loss ASC"], max_results=1
        )
        best.append([model, run.info.run_name, f"{run.data.metrics['val_loss']:.9f}"])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "check": {"best": best}}))


def wrk(url, bodies, clients, seconds):
    """wrk (an independent C load generator), closed loop with CLIENTS connections for SECONDS,
    posting BODIES' lines in turn (wrk-post.lua); used against both servers."""
    import subprocess

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk-post.lua")
    cmd = ["wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{seconds}s", "--timeout", "10s",
           "-s", script, url, "--", bodies]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    print(
        json.dumps(
            {
                "seconds": r["duration_us"] / 1e6,
                "throughput": r["requests"] / (r["duration_us"] / 1e6),
                "p50_ms": r["p50_us"] / 1e3,
                "p99_ms": r["p99_us"] / 1e3,
                "check": {"errors": r["non2xx"] + r["socket_errors"]},
            }
        )
    )


if __name__ == "__main__":
    cmd, args = sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:]
    commands = {
        "hash": (hash_dir, [str]),
        "track": (track, [str, int, str]),
        "tpe": (tpe, [str, int]),
        "preprocess": (preprocess, [str]),
        "validate": (validate, [str]),
        "make-runs": (make_runs, [str, str]),
        "query": (query, [str, str]),
        "train": (None, [str, str, int]),
        "wrk": (wrk, [str, str, int, int]),
    }
    if cmd not in commands or len(args) != len(commands[cmd][1]):
        sys.exit("usage: peers.py " + " | ".join(f"{c} {' '.join(t.__name__.upper() for t in ts)}" for c, (_, ts) in commands.items()))
    fn, types = commands[cmd]
    if fn is None:
        from peer_train import train as fn
    fn(*(t(a) for t, a in zip(types, args)))
