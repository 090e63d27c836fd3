"""Side-by-side comparison harness: runs kiln and its peer on identical inputs, alternately
(A B A B ...) after a warm-up, checks that both did the same work, and reports the median and
min-max spread of each side and their ratio. Results go to docs/benchmarks.md between the
`compare:begin` and `compare:end` markers. Entry point: benches/compare/run.sh."""

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHOICES = ["sgd", "adam", "adamw"]


def run(cmd):
    """Runs one side; `{fresh}` in the command becomes a new, empty directory, removed after."""
    fresh = None
    if any("{fresh}" in str(c) for c in cmd):
        fresh = tempfile.mkdtemp(prefix="kiln-compare-")
        cmd = [str(c).replace("{fresh}", os.path.join(fresh, "store")) for c in cmd]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    finally:
        if fresh:
            shutil.rmtree(fresh, ignore_errors=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"{' '.join(map(str, cmd))} printed no result:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1])


def make_files(dir_, files, total_bytes, seed=7):
    """`files` files of random bytes (sizes spread from 1/4 to 7/4 of the mean) under 50
    subdirectories; kept between runs."""
    marker = dir_ / f".done-{files}-{total_bytes}"
    if marker.exists():
        return
    rng = random.Random(seed)
    mean = total_bytes // files
    for i in range(files):
        sub = dir_ / f"part{i % 50:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        size = rng.randint(mean // 4, mean * 7 // 4)
        (sub / f"file{i:05d}.bin").write_bytes(rng.randbytes(size))
    marker.touch()


def make_history(path, n, seed=1):
    """TPE-like history: a third spread uniformly, the rest near the optimum."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            conc = rng.randrange(3) != 0

            def near(centre, spread, low, high):
                if conc:
                    return min(max(centre + spread * (rng.random() - 0.5), low), high)
                return low + (high - low) * rng.random()

            x = near(1.3, 1.0, -5.0, 5.0)
            log_lr = near(-3.0, 1.0, -5.0, -1.0)
            opt = 1 if conc else rng.randrange(3)
            value = (x - 1.3) ** 2 + (log_lr + 3.0) ** 2 + (0.0 if opt == 1 else 0.5) + 0.01 * rng.random()
            f.write(json.dumps({"x": x, "lr": 10**log_lr, "opt": CHOICES[opt], "value": value}) + "\n")


def cases(work, kiln, python, scale):
    peers = [python, str(Path(__file__).with_name("peers.py"))]
    data = work / "hash-data"
    files, total = max(int(2500 * scale), 10), int((1 << 30) * scale)
    make_files(data, files, total)
    yield {
        "name": f"hashing: {files} files, {total / 2**20:.0f} MiB",
        "kiln": ([kiln, "hash", str(data)], "seconds", "kiln-data BLAKE3 (parallel)"),
        "peer": (peers + ["hash", str(data)], "seconds", "MD5 per file (DVC's hash)"),
        "unit": "s",
    }
    points = max(int(1_000_000 * scale), 1000)
    yield {
        "name": f"tracking ingest: {points} metric points, batched",
        "kiln": ([kiln, "track", "{fresh}", str(points), "batch"], "seconds", "kiln-track log_metrics, 10 keys a call"),
        "peer": (peers + ["track", "{fresh}", str(points), "batch"], "seconds", "MLflow log_batch to SQLite, 1,000 a call"),
        "unit": "s",
    }
    calls = max(int(10_000 * scale), 100)
    yield {
        "name": f"tracking ingest: {calls} metric points, one call each",
        "kiln": ([kiln, "track", "{fresh}", str(calls), "call"], "seconds", "kiln-track log_metric"),
        "peer": (peers + ["track", "{fresh}", str(calls), "call"], "seconds", "MLflow log_metric to SQLite"),
        "unit": "s",
    }
    for n in (1000, 10000):
        hist = work / f"history-{n}.jsonl"
        make_history(hist, n)
        asks = 50 if n == 1000 else 30
        yield {
            "name": f"HPO: TPE ask + 3 suggestions, {n} finished trials",
            "kiln": ([kiln, "tpe", str(hist), str(asks)], "median_ask_seconds", "kiln-train TPE"),
            "peer": (peers + ["tpe", str(hist), str(asks)], "median_ask_seconds", "Optuna TPESampler"),
            "unit": "ms",
        }


def fmt(v, unit):
    return f"{v * 1000:.3g}" if unit == "ms" else f"{v:.3g}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="data size factor (1.0 = the issue's sizes)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("only", nargs="*", help="substrings of case names to run")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    failed = []
    for case in cases(work, a.kiln, a.python, a.scale):
        if a.only and not any(o.lower() in case["name"].lower() for o in a.only):
            continue
        print(f"== {case['name']}", flush=True)
        sides = {"kiln": [], "peer": []}
        checks = {}
        for side in ("kiln", "peer"):  # warm-up
            checks[side] = run(case[side][0])["check"]
        for _ in range(a.rounds):
            for side in ("kiln", "peer"):
                r = run(case[side][0])
                if r["check"] != checks[side]:
                    raise SystemExit(f"{case['name']}: {side} did different work between rounds: {r['check']}")
                sides[side].append(r[case[side][1]])
        same = checks["kiln"] == checks["peer"]
        if not same:
            failed.append(case["name"])
        k, p = statistics.median(sides["kiln"]), statistics.median(sides["peer"])
        row = {
            "case": case["name"],
            "kiln": f"{fmt(k, case['unit'])} ({fmt(min(sides['kiln']), case['unit'])}–{fmt(max(sides['kiln']), case['unit'])})",
            "peer": f"{fmt(p, case['unit'])} ({fmt(min(sides['peer']), case['unit'])}–{fmt(max(sides['peer']), case['unit'])})",
            "who": f"{case['kiln'][2]} vs {case['peer'][2]}",
            "unit": case["unit"],
            "ratio": p / k if k > 0 else float("inf"),
            "same": "yes" if same else f"NO: kiln {checks['kiln']} vs peer {checks['peer']}",
        }
        rows.append(row)
        print(f"   kiln {row['kiln']} {case['unit']}, peer {row['peer']} {case['unit']}, peer/kiln {row['ratio']:.2f}x, same work: {row['same']}", flush=True)
    versions = subprocess.run(
        [a.python, "-c", "import optuna, numpy, mlflow, sys; print(f'Python {sys.version.split()[0]}, optuna {optuna.__version__}, numpy {numpy.__version__}, mlflow {mlflow.__version__}')"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    table = [
        f"`benches/compare/run.sh` ({datetime.date.today()}, {os.cpu_count()} cores, {platform.machine()}, {versions}; "
        f"{a.rounds} alternating rounds after a warm-up; scale {a.scale}). Median (min–max); ratio = peer / kiln, "
        "above 1 means kiln is faster.",
        "",
        "| case | kiln | peer | unit | peer / kiln | same work |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(f"| {r['case']} ({r['who']}) | {r['kiln']} | {r['peer']} | {r['unit']} | {r['ratio']:.2f} | {r['same']} |")
    text = "\n".join(table)
    print(text)
    if a.write_docs and rows:
        doc = ROOT / "docs/benchmarks.md"
        s = doc.read_text()
        begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
        if begin in s and end in s:
            s = s[: s.index(begin) + len(begin)] + "\n" + text + "\n" + s[s.index(end) :]
        else:
            s += f"\n## Side by side with the peers\n\n{begin}\n{text}\n{end}\n"
        doc.write_text(s)
    if failed:
        raise SystemExit(f"cases where the two sides did different work: {failed}")


if __name__ == "__main__":
    main()
