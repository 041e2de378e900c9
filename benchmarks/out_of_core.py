"""Data of any size: peak memory and speed of the out-of-core prepare and of streamed training, per row count.

For each ``--rows`` size a CSV is generated in chunks (a FIXED id space: 200k users, 50k items, 2k
categories, 6 domains, 24 hours, two dense columns, a click from a known logistic model, a timestamp), then
each step runs in its own child process, whose peak RSS (``ru_maxrss`` from ``wait4``) is recorded:

* ``scan``: pyarrow's own CSV scan of the file (``open_csv``, the engine's rate, nothing else done);
* ``prepare``: ``prepare_out_of_core`` (fit pass + encode pass, ``--memory-budget`` MB) into sharded Parquet;
* ``prepare_mem``: the in-memory ``prepare_file`` (only at sizes <= ``--mem-max``);
* ``train_stream`` / ``train_mem``: one epoch of ``dnn`` on the train split (``Trainer.fit``, no validation:
  evaluation is not streamed yet, so ``dynarec train`` would still load valid / test whole), streamed
  (``StreamTable``) or loaded whole (``load_prepared``, only at sizes <= ``--mem-max``), at ``--threads``.

    nice -n 10 .venv/bin/python benchmarks/out_of_core.py --rows 1000000 10000000 [--work /tmp/ooc]
        [--out benchmarks/results/out_of_core]

Writes ``OUT.json`` and ``OUT.png`` (peak RSS against rows); ``--plot-from A.json B.json --out X.png`` only
plots (the doc's figure joins the prepare and the train runs). The generated data and prepared folders live in
``--work`` (deleted per size after its runs unless ``--keep``)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCHEMA = {"features": [{"name": "user_id", "group": "user", "min_count": 2}, {"name": "item_id", "group": "item"},
                       {"name": "category", "group": "item"}, {"name": "hour"},
                       {"name": "price", "kind": "dense", "transform": "log1p"},
                       {"name": "score", "kind": "dense", "buckets": 16}],
          "tasks": [{"name": "click"}], "domain": "domain", "timestamp": "ts"}


def generate(path: Path, rows: int, seed: int = 0, chunk: int = 1_000_000) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    world = np.random.default_rng(1234)  # the fixed world: id effects
    bu, bi, bc = world.normal(0, 0.5, 200_000), world.normal(0, 0.5, 50_000), world.normal(0, 0.3, 2_000)
    rng = np.random.default_rng(seed)
    with pacsv.CSVWriter(path, pa.schema([("domain", pa.string()), ("user_id", pa.int64()), ("item_id", pa.int64()),
                                          ("category", pa.int64()), ("hour", pa.int64()), ("price", pa.float64()),
                                          ("score", pa.float64()), ("ts", pa.int64()), ("click", pa.int64())])) as w:
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            u = np.minimum(rng.zipf(1.3, n), 200_000) - 1
            it = np.minimum(rng.zipf(1.2, n), 50_000) - 1
            cat = it % 2_000
            d = rng.choice(6, n, p=[0.45, 0.25, 0.13, 0.09, 0.065, 0.015])
            h = rng.integers(0, 24, n)
            price = np.round(rng.lognormal(2, 1, n), 2)
            score = rng.normal(0, 1, n)
            logit = -1.5 + bu[u] + bi[it] + bc[cat] + 0.3 * score - 0.2 * np.log1p(price) + 0.1 * (d - 2)
            click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
            w.write_table(pa.table({"domain": np.array(["d0", "d1", "d2", "d3", "d4", "d5"])[d], "user_id": u,
                                    "item_id": it, "category": cat, "hour": h, "price": price, "score": score,
                                    "ts": lo + np.arange(n), "click": click}))


def child(step: str, a: dict) -> dict:
    """One measured step, in this (child) process."""
    import pyarrow.csv as pacsv
    import torch

    t0 = time.perf_counter()
    out: dict = {}
    if step == "scan":
        rows = 0
        from dynarec.data.outofcore import budget_plan

        block = budget_plan(a["budget"], 1)["block_bytes"]  # the prepare's block size
        for b in pacsv.open_csv(a["csv"], read_options=pacsv.ReadOptions(block_size=block)):
            rows += b.num_rows
        out["rows"] = rows
    elif step == "prepare":
        from dynarec.data.outofcore import prepare_out_of_core
        from dynarec.data.schema import Schema

        r = prepare_out_of_core(a["csv"], Schema.from_dict(SCHEMA), a["prep"], "random", memory_mb=a["budget"],
                                progress=False)
        out["rows"] = sum(r["rows"].values())
    elif step == "prepare_mem":
        from dynarec.data.prepare import prepare_file
        from dynarec.data.schema import Schema

        tabs = prepare_file(a["csv"], Schema.from_dict(SCHEMA), a["prep_mem"], "random")
        out["rows"] = sum(len(t) for t in tabs.values())
    else:
        from dynarec.models import build_model
        from dynarec.train.config import TrainerConfig
        from dynarec.train.trainer import Trainer

        if step == "train_stream":
            from dynarec.data.loader import open_split

            train = open_split(a["prep"], "train", threads=a["read_threads"])
            schema = train.schema
        else:
            from dynarec.data.prepare import load_prepared

            schema, tabs = load_prepared(a["prep"], ("train",))
            train = tabs["train"]
        torch.manual_seed(0)
        model = build_model("dnn", schema, {})
        cfg = TrainerConfig(epochs=1, batch_size=4096, progress=False, threads=a["threads"])
        t1 = time.perf_counter()
        hist = Trainer(model, cfg, seed=0).fit(train)
        out.update(rows=len(train), fit_seconds=time.perf_counter() - t1, train_rows_per_s=hist.train_rows_per_s,
                   params=sum(p.numel() for p in model.parameters()))
        if a.get("auc"):  # test AUC: streamed (histogram, with its bound) or in memory (exact)
            from dynarec.evalstream import evaluate_stream

            if step == "train_stream":
                test = open_split(a["prep"], "test")
                test.schema = schema
                m = evaluate_stream(model, test, 65536)
                out["auc_bound"] = m["auc_error_bound"]["click"]["all"]
            else:
                from dynarec.metrics import evaluate_model

                m = evaluate_model(model, load_prepared(a["prep"], ("test",))[1]["test"], 65536)
            out["test_auc"] = m["auc"]["click"]["all"]
    out["seconds"] = time.perf_counter() - t0
    out["rows_per_s"] = out["rows"] / out["seconds"]
    return out


def measure(step: str, a: dict) -> dict:
    """Run ``step`` in a child process; its result plus its peak RSS in MB."""
    p = subprocess.Popen([sys.executable, __file__, "--child", step, json.dumps(a)], stdout=subprocess.PIPE,
                         text=True)
    out_text = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status:
        raise SystemExit(f"{step} failed (status {status})")
    res = json.loads(out_text.strip().splitlines()[-1])
    res["peak_rss_mb"] = usage.ru_maxrss / 1024
    return res


def plot(results: list[dict], path: Path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib missing: no plot"
    fig, ax = plt.subplots(figsize=(6, 4))
    for step in ("prepare", "prepare_mem", "train_stream", "train_mem"):
        pts = [(r["rows"], r[step]["peak_rss_mb"]) for r in results if step in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=step)
    ax.set_xscale("log")
    ax.set_xlabel("raw rows")
    ax.set_ylabel("peak RSS (MB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--work", default="/tmp/dynarec-ooc-bench")
    ap.add_argument("--out", default="benchmarks/results/out_of_core")
    ap.add_argument("--memory-budget", type=float, default=1024)
    ap.add_argument("--mem-max", type=int, default=10_000_000, help="in-memory prepare / train up to this size")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--read-threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--auc", action="store_true", help="train steps: test AUC after the epoch")
    ap.add_argument("--steps", nargs="+", default=["scan", "prepare", "prepare_mem", "train_stream", "train_mem"])
    ap.add_argument("--plot-from", nargs="+", metavar="JSON",
                    help="no runs: plot the steps of these result files (later files win per size and step) to --out")
    a = ap.parse_args(argv)
    if a.plot_from:
        merged: dict[int, dict] = {}
        for f in a.plot_from:
            for r in json.loads(Path(f).read_text())["results"]:
                merged.setdefault(r["rows"], {}).update(r)
        print(plot([merged[k] for k in sorted(merged)], Path(a.out)))
        return
    work = Path(a.work)
    results = []
    for rows in a.rows:
        d = work / str(rows)
        d.mkdir(parents=True, exist_ok=True)
        csv = d / "data.csv"
        t0 = time.perf_counter()
        if not csv.exists():
            generate(csv, rows)
        r = {"rows": rows, "csv_mb": csv.stat().st_size / 2**20, "generate_seconds": time.perf_counter() - t0}
        args = {"csv": str(csv), "prep": str(d / "prep"), "prep_mem": str(d / "prep_mem"), "budget": a.memory_budget,
                "read_threads": a.read_threads, "auc": a.auc}
        steps = ["scan", "prepare"] + (["prepare_mem"] if rows <= a.mem_max else [])
        for step in [s for s in steps if s in a.steps]:
            r[step] = measure(step, {**args, "threads": a.threads[0]})
            print(rows, step, r[step], flush=True)
        for th in a.threads:
            for step in [s for s in ["train_stream"] + (["train_mem"] if rows <= a.mem_max else []) if s in a.steps]:
                key = step if th == a.threads[0] else f"{step}@{th}"
                r[key] = measure(step, {**args, "threads": th})
                print(rows, key, r[key], flush=True)
        results.append(r)
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
        meta = {"cpus": os.cpu_count(), "cpu": cpu, "load_avg_at_end": os.getloadavg(),
                "memory_budget_mb": a.memory_budget}
        Path(f"{out}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(plot(results, Path(f"{out}.png")))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        main()
