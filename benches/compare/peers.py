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
    elif sys.argv[1:2] == ["tpe"] and len(sys.argv) == 4:
        tpe(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: peers.py hash DIR | peers.py tpe HISTORY.jsonl ASKS")
