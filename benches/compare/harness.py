"""Side-by-side comparison harness: runs kiln and its peer on identical inputs, alternately
(A B A B ...) after a warm-up, checks that both did the same work, and reports the median and
min-max spread of each side and their ratio. Results go to docs/benchmarks.md between the
`compare:begin` and `compare:end` markers. Entry point: benches/compare/run.sh."""

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
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
    marker = dir_.parent / f".{dir_.name}-done-{files}-{total_bytes}"
    if marker.exists():
        return
    shutil.rmtree(dir_, ignore_errors=True)
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


def make_runs_spec(path, n, seed=5):
    """A sweep of `n` finished runs over five models: name, params and a 20-step val_loss curve
    whose final value ranks the runs."""
    rng = random.Random(seed)
    models = ["cnn", "gbm", "logistic", "mlp", "resnet"]
    with open(path, "w") as f:
        for i in range(n):
            model = models[i % len(models)]
            final = 0.05 + rng.random()
            curve = [final + (2.0 - final) * (0.8**step) for step in range(19)] + [final]
            f.write(json.dumps({"name": f"trial-{i:05d}", "model": model, "lr": 10 ** rng.uniform(-5, -1),
                                "batch": rng.choice([32, 64, 128, 256]), "val_loss": curve}) + "\n")
    return ",".join(models)


def write_examples(dir_, prefix, x, y):
    import numpy as np

    np.asarray(x, dtype="<f4").tofile(dir_ / f"{prefix}x.f32")
    np.asarray(y, dtype=np.uint8).tofile(dir_ / f"{prefix}y.u8")


def make_train_data(work):
    """Both sides read the same raw files: little-endian f32 features, u8 labels.
    `blobs`: 64-feature Gaussian classes (16,384 training rows, 4,096 test rows).
    `digits`: the shipped 8×8 digits scaled to [0, 1], every fifth row held out."""
    import csv

    import numpy as np

    blobs, digits = work / "train-blobs", work / "train-digits"
    if not (blobs / "test-y.u8").exists():
        blobs.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(3)
        centres = rng.normal(0, 1, (10, 64))
        for prefix, n in (("", 16384), ("test-", 4096)):
            y = rng.integers(0, 10, n)
            write_examples(blobs, prefix, centres[y] + rng.normal(0, 2.5, (n, 64)), y)
    if not (digits / "test-y.u8").exists():
        digits.mkdir(parents=True, exist_ok=True)
        with open(ROOT / "data/digits.csv") as f:
            rows = list(csv.DictReader(f))
        pixels = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
        x = np.array([[float(row[p]) / 16.0 for p in pixels] for row in rows])
        y = np.array([int(row["label"]) for row in rows])
        held = np.arange(len(rows)) % 5 == 0
        write_examples(digits, "", x[~held], y[~held])
        write_examples(digits, "test-", x[held], y[held])
    return blobs, digits


def wait_ready(url, seconds=60):
    import urllib.request

    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"{url} did not become ready in {seconds} s")
        time.sleep(0.1)


def tree_cpu_ticks(pid):
    """CPU time (clock ticks) used so far by a process and its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return total


def wait_idle(pid, seconds=120):
    """Waits until a server's process tree stops using CPU (uvicorn's workers each import
    PyTorch, and one answering /ready does not mean the others are done)."""
    deadline = time.time() + seconds
    last = tree_cpu_ticks(pid)
    while time.time() < deadline:
        time.sleep(1.0)
        now = tree_cpu_ticks(pid)
        if now - last <= 2:
            return
        last = now
    raise SystemExit(f"process {pid} still busy after {seconds} s")


def post(url, body):
    import urllib.request

    req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def servers(work, kiln, python):
    """kiln-serve and FastAPI + uvicorn (2 workers, one per core) serving the same package, and
    the request bodies: 256 digits rows as KServe v2 JSON. Checks that both give the same class
    and (to 1e-5) the same probabilities for every body before anything is measured."""
    pkg = work / "serve-package"
    if not (pkg / "weights.safetensors").exists():  # made by kiln before package format 3: redo
        shutil.rmtree(pkg, ignore_errors=True)
        subprocess.run([kiln, "serve-package", str(ROOT / "data/digits.csv"), str(pkg)], check=True)
    bodies = work / "serve-bodies.jsonl"
    import csv

    with open(ROOT / "data/digits.csv") as f:
        rows = list(csv.DictReader(f))[:256]
    pixels = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    lines = [json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP64", "data": [float(r[p]) for p in pixels]}]}) for r in rows]
    bodies.write_text("\n".join(lines) + "\n")
    url_file = work / "serve-url"
    url_file.unlink(missing_ok=True)
    procs = []
    try:
        procs.append(subprocess.Popen([kiln, "serve", str(pkg), str(url_file)], stdin=subprocess.PIPE))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, KILN_COMPARE_PACKAGE=str(pkg))
        procs.append(subprocess.Popen(
            [python, "-m", "uvicorn", "peer_serve:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
             "--log-level", "warning", "--no-access-log"],
            cwd=Path(__file__).parent, env=env, stdin=subprocess.DEVNULL))
        deadline = time.time() + 60
        while not url_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        kiln_url = url_file.read_text().strip()
        peer_url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
        wait_ready(kiln_url.split("/v2/")[0] + "/v2/health/ready")
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        for p in procs:
            wait_idle(p.pid)
        worst = 0.0
        for i, body in enumerate(lines):
            a, b = post(kiln_url, body), post(peer_url, body)
            out = lambda r, n: next(t["data"] for t in r["outputs"] if t["name"] == n)
            if out(a, "class") != out(b, "class"):
                raise SystemExit(f"serving: body {i}: kiln answers class {out(a, 'class')}, the peer {out(b, 'class')}")
            worst = max([worst] + [abs(p - q) for p, q in zip(out(a, "probabilities"), out(b, "probabilities"))])
        if worst > 1e-5:
            raise SystemExit(f"serving: probabilities differ by up to {worst}")
        print(f"   serving: both servers answer the same classes for all {len(lines)} bodies (probabilities within {worst:.1e})", flush=True)
        yield kiln_url, peer_url, bodies
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            else:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def cases(work, kiln, python, scale, wanted):
    peers = [python, str(Path(__file__).with_name("peers.py"))]
    data = work / "hash-data"
    files, total = max(int(2500 * scale), 10), int((1 << 30) * scale)
    make_files(data, files, total)
    yield {
        "name": f"hashing: {files} files, {total / 2**20:.0f} MiB",
        "kiln": ([kiln, "hash", str(data)], "kiln-data BLAKE3 (parallel)"),
        "peer": (peers + ["hash", str(data)], "MD5 per file (DVC's hash)"),
    }
    points = max(int(1_000_000 * scale), 1000)
    yield {
        "name": f"tracking ingest: {points} metric points, batched",
        "kiln": ([kiln, "track", "{fresh}", str(points), "batch"], "kiln-track log_metrics, 10 keys a call"),
        "peer": (peers + ["track", "{fresh}", str(points), "batch"], "MLflow log_batch to SQLite, 1,000 a call"),
        "warmup": {"kiln": [kiln, "track", "{fresh}", "10000", "batch"], "peer": peers + ["track", "{fresh}", "10000", "batch"]},
    }
    calls = max(int(10_000 * scale), 100)
    yield {
        "name": f"tracking ingest: {calls} metric points, one call each",
        "kiln": ([kiln, "track", "{fresh}", str(calls), "call"], "kiln-track log_metric"),
        "peer": (peers + ["track", "{fresh}", str(calls), "call"], "MLflow log_metric to SQLite"),
        "warmup": {"kiln": [kiln, "track", "{fresh}", "1000", "call"], "peer": peers + ["track", "{fresh}", "1000", "call"]},
    }
    n_runs = max(int(10_000 * scale), 100)
    name = f"tracking query: best run of each of 5 models over {n_runs} runs"
    if wanted(name):
        spec = work / f"runs-{n_runs}.jsonl"
        models = make_runs_spec(spec, n_runs)
        kiln_store, mlflow_db = work / f"query-kiln-{n_runs}", work / f"query-mlflow-{n_runs}" / "mlflow.db"
        if not (kiln_store / ".ready").exists():
            shutil.rmtree(kiln_store, ignore_errors=True)
            t = time.perf_counter()
            subprocess.run([kiln, "make-runs", str(kiln_store), str(spec)], check=True)
            (kiln_store / ".ready").touch()
            print(f"   made {n_runs} kiln-track runs (and compacted) in {time.perf_counter() - t:.1f} s", flush=True)
        if not (mlflow_db.parent / ".ready").exists():
            mlflow_db.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            subprocess.run(peers + ["make-runs", str(mlflow_db), str(spec)], check=True)
            (mlflow_db.parent / ".ready").touch()
            print(f"   made {n_runs} MLflow runs in {time.perf_counter() - t:.1f} s", flush=True)
        yield {
            "name": name,
            "kiln": ([kiln, "query", str(kiln_store)], "kiln-track SQL over the compacted store"),
            "peer": (peers + ["query", str(mlflow_db), models], "MLflow search_runs per model, SQLite"),
        }
    rows = max(int(1_000_000 * scale), 1000)
    tab = work / f"tabular-{rows}.parquet"
    if not tab.exists() and (wanted("preprocessing") or wanted("validation")):
        subprocess.run([kiln, "gen-tabular", str(tab), str(rows)], check=True, stdout=subprocess.DEVNULL)
    yield {
        "name": f"preprocessing: split + impute + scale + one-hot, {rows} rows × 20 columns",
        "kiln": ([kiln, "preprocess", str(tab)], "kiln-data Pipeline"),
        "peer": (peers + ["preprocess", str(tab)], "pandas + scikit-learn ColumnTransformer"),
    }
    yield {
        "name": f"validation: {rows} rows × 20 columns, 40 checks, ~20k failures",
        "kiln": ([kiln, "validate", str(tab)], "kiln-data Schema::check"),
        "peer": (peers + ["validate", str(tab)], "Pandera, Polars backend, lazy"),
    }
    for (kind, data, epochs, label) in (("mlp256", "blobs", 4, "MLP 64→256→256→10, batch 64"),
                                         ("mlp512", "blobs", 4, "MLP 64→512→512→10, batch 256"),
                                         ("cnn", "digits", 15, "digits CNN 8×8 16-32 + 64, batch 64")):
        name = f"training: {label}, {epochs} epochs"
        if not wanted(name):
            continue
        blobs, digits = make_train_data(work)
        path = str(blobs if data == "blobs" else digits)
        yield {
            "name": name,
            "kiln": ([kiln, "train", kind, path, str(epochs)], "kiln-train (burn Flex, CPU)"),
            "peer": (peers + ["train", kind, path, str(epochs)], "PyTorch, 2 threads"),
            "metrics": [("samples_per_s", "samples/s", "higher")],
        }
    serving = [(c, gen) for c in (1, 16, 64) for gen in ("kiln", "wrk")]
    names = {(c, gen): f"serving: digits MLP, one row a request, {c} client{'s' if c > 1 else ''}, {gen} load" for c, gen in serving}
    if any(wanted(n) for n in names.values()):
        with servers(work, kiln, python) as (kiln_url, peer_url, bodies):
            for c, gen in serving:
                if not wanted(names[(c, gen)]):
                    continue
                if gen == "kiln":
                    n = str(2000 if c == 1 else 6000)
                    cmd = lambda url: [kiln, "load", url, str(bodies), str(c), n]
                else:
                    cmd = lambda url: peers + ["wrk", url, str(bodies), str(c), "4"]
                yield {
                    "name": names[(c, gen)],
                    "kiln": (cmd(kiln_url), "kiln-serve"),
                    "peer": (cmd(peer_url), "FastAPI + uvicorn (2 workers) + PyTorch"),
                    "metrics": [("throughput", "req/s", "higher"), ("p50_ms", "ms", "lower"), ("p99_ms", "ms", "lower")],
                }
    for n in (1000, 10000):
        hist = work / f"history-{n}.jsonl"
        make_history(hist, n)
        asks = 50 if n == 1000 else 30
        yield {
            "name": f"HPO: TPE ask + 3 suggestions, {n} finished trials",
            "kiln": ([kiln, "tpe", str(hist), str(asks)], "kiln-train TPE"),
            "peer": (peers + ["tpe", str(hist), str(asks)], "Optuna TPESampler"),
            "metrics": [("median_ask_seconds", "ms", "lower", 1000.0)],
        }


def fmt(v):
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


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
    began = time.perf_counter()
    rows = []
    failed = []
    wanted = lambda name: not a.only or any(o.lower() in name.lower() for o in a.only)
    for case in cases(work, a.kiln, a.python, a.scale, wanted):
        if not wanted(case["name"]):
            continue
        print(f"== {case['name']}", flush=True)
        metrics = [m if len(m) == 4 else (*m, 1.0) for m in case.get("metrics", [("seconds", "s", "lower")])]
        sides = {"kiln": [], "peer": []}
        checks, info = {}, {"kiln": [], "peer": []}
        for side in ("kiln", "peer"):  # warm-up
            r = run(case.get("warmup", {}).get(side, case[side][0]))
            if "warmup" not in case:
                checks[side] = r["check"]
        for _ in range(a.rounds):
            for side in ("kiln", "peer"):
                r = run(case[side][0])
                checks.setdefault(side, r["check"])
                if r["check"] != checks[side]:
                    raise SystemExit(f"{case['name']}: {side} did different work between rounds: {r['check']} vs {checks[side]}")
                sides[side].append(r)
                if "info" in r:
                    info[side].append(r["info"])
        same = checks["kiln"] == checks["peer"]
        if not same:
            failed.append(case["name"])
        notes = ""
        if info["kiln"]:
            notes = "; ".join(
                f"{key}: kiln {statistics.median(i[key] for i in info['kiln']):.3g}, peer {statistics.median(i[key] for i in info['peer']):.3g}"
                for key in info["kiln"][0]
            )
        for key, unit, better, factor in metrics:
            k = [r[key] * factor for r in sides["kiln"]]
            p = [r[key] * factor for r in sides["peer"]]
            km, pm = statistics.median(k), statistics.median(p)
            ratio = (pm / km if km > 0 else float("inf")) if better == "lower" else (km / pm if pm > 0 else float("inf"))
            row = {
                "case": case["name"] if len(metrics) == 1 else f"{case['name']}: {key.removesuffix('_ms')}",
                "kiln": f"{fmt(km)} ({fmt(min(k))}–{fmt(max(k))})",
                "peer": f"{fmt(pm)} ({fmt(min(p))}–{fmt(max(p))})",
                "who": f"{case['kiln'][1]} vs {case['peer'][1]}",
                "unit": unit + (" ↑" if better == "higher" else ""),
                "ratio": ratio,
                "same": ("yes" if same else f"NO: kiln {checks['kiln']} vs peer {checks['peer']}") + (f"; {notes}" if notes else ""),
            }
            rows.append(row)
            print(f"   {key}: kiln {row['kiln']} {unit}, peer {row['peer']} {unit}, kiln's advantage {ratio:.2f}x, same work: {row['same']}", flush=True)
    elapsed = time.perf_counter() - began
    versions = subprocess.run(
        [a.python, "-c", "import importlib.metadata as m, sys; print(f'Python {sys.version.split()[0]}, ' + ', '.join("
         "f'{p} {m.version(p)}' for p in ['mlflow', 'optuna', 'torch', 'pandas', 'scikit-learn', 'pandera', 'polars', 'fastapi', 'uvicorn', 'numpy']))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    table = [
        f"`benches/compare/run.sh` ({datetime.date.today()}, {os.cpu_count()} cores, {platform.machine()}, {versions}, "
        f"wrk {(wrk.stdout or wrk.stderr).split()[1].removeprefix('debian/').split('-')[0]}; {a.rounds} alternating rounds after a warm-up; scale {a.scale}; "
        f"{elapsed / 60:.0f} min in all). Median (min–max). ↑ marks a unit where higher is better. "
        "**kiln's advantage** is peer / kiln for times and kiln / peer for rates: above 1, kiln is faster.",
        "",
        "| case | kiln | peer | unit | kiln's advantage | same work |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(f"| {r['case']} ({r['who']}) | {r['kiln']} | {r['peer']} | {r['unit']} | {r['ratio']:.2f} | {r['same']} |")
    text = "\n".join(table)
    print(text)
    print(f"all cases: {elapsed:.0f} s")
    if a.write_docs and rows:
        doc = ROOT / "docs/benchmarks.md"
        s = doc.read_text()
        begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
        if begin in s and end in s and a.only:
            # Some cases only: replace their rows, keep the others and the full run's header,
            # and say under the table which rows are newer.
            old = s[s.index(begin) + len(begin) : s.index(end)].strip("\n").split("\n")
            fresh = {r["case"]: f"| {r['case']} ({r['who']}) | {r['kiln']} | {r['peer']} | {r['unit']} | {r['ratio']:.2f} | {r['same']} |" for r in rows}
            kept, replaced = [], set()
            for line in old:
                if line.startswith("Rows re-measured"):
                    continue
                case = next((c for c in fresh if line.startswith(f"| {c} (")), None)
                kept.append(fresh[case] if case else line)
                if case:
                    replaced.add(case)
            kept += [fresh[c] for c in fresh if c not in replaced]
            while kept and not kept[-1].strip():
                kept.pop()  # the blank line before an earlier note: one is added below
            kept += ["", f"Rows re-measured {datetime.date.today()} with `benches/compare/run.sh {' '.join(a.only)}` ({a.rounds} rounds, {versions}): {', '.join(fresh)}."]
            s = s[: s.index(begin) + len(begin)] + "\n" + "\n".join(kept) + "\n" + s[s.index(end) :]
        elif begin in s and end in s:
            s = s[: s.index(begin) + len(begin)] + "\n" + text + "\n" + s[s.index(end) :]
        else:
            s += f"\n## Side by side with the peers\n\n{begin}\n{text}\n{end}\n"
        doc.write_text(s)
    if failed:
        raise SystemExit(f"cases where the two sides did different work: {failed}")


if __name__ == "__main__":
    main()
