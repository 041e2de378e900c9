"""Peak resident memory per process of a TorchRec run with one large table, phase by phase: fit and save
(2 gloo processes, ``trainer.checkpoint: sharded``), export from the shards (one process, the table streamed
block by block into a memory-mapped bundle file), serving that bundle (one process, N requests) and predict
from the shards (one process, the table mapped). Beside it, the old path (``trainer.checkpoint: file``: the
table assembled on rank 0 and serialised in memory, then loaded whole) at ``--old-rows``.

dnn on synthetic data whose ``user_id`` table is widened to ``--rows`` rows of ``--dim`` float32,
``trainer.sharding: column_wise``, ``embedding_optimizer: adagrad`` (FBGEMM's exact Adagrad keeps one
accumulator per number: each rank holds half the table AND half its accumulator). Each process reports its
RSS just after its imports (the fixed overhead), then its peak (``VmHWM`` of ``/proc/self/status``, reset
through ``/proc/self/clear_refs`` before a phase); "fit" is the peak from the start to the end of the last
epoch, "save" the run's end (test metrics, then the sharded write or consolidate + model.pt).

    nice -n 10 python benchmarks/table_memory.py --rows 16777216 --dim 32 --old-rows 2000000 --json out.json

Needs ``dynarec[torchrec]`` (and ``dynarec[onnx]`` is not needed: the serving phase runs the torch backend)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
_BASE = {}


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _schema(rows: int):
    from dataclasses import replace

    from dynarec.data.prepare import synthetic_tables

    schema, tables, _ = synthetic_tables(20_000, seed=0)
    schema.features = [replace(f, vocab_size=rows) if f.name == "user_id" else f for f in schema.features]
    return schema, tables


def worker(out: str, rows: int, dim: int, checkpoint: str) -> None:
    """One rank (under torchrun): train 1 epoch into ``out/run``; fit and save peaks recorded."""
    import torch
    import torch.distributed as dist

    from dynarec.train import run

    base = _status("VmRSS")
    torch.set_num_threads(1)
    schema, tables = _schema(rows)
    seen = {"base_mb": base}
    finish = run._finish

    def measured(*args, **kw):
        seen["fit_peak_mb"] = _status("VmHWM")
        seen["before_save_mb"] = _status("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        res = finish(*args, **kw)
        seen["save_peak_mb"], seen["save_s"] = _status("VmHWM"), time.perf_counter() - t0
        return res

    run._finish = measured
    t0 = time.perf_counter()
    run.train_model("dnn", schema, tables, {"hidden": [64], "embed_dim": dim},
                    {"epochs": 1, "batch_size": 1024, "progress": False, "distributed": "torchrec",
                     "sharding": "column_wise", "embedding_grad": "sparse", "embedding_optimizer": "adagrad",
                     "checkpoint": checkpoint}, seed=0, out=Path(out) / "run")
    seen["total_s"] = time.perf_counter() - t0
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, seen)
    if dist.get_rank() == 0:
        Path(out, "ranks.json").write_text(json.dumps(ranks))
    dist.destroy_process_group()


def phase(kind: str, args: list[str]) -> dict:
    """One process: ``load`` (load_checkpoint, the old path), ``export`` (run -> bundle), ``serve`` (bundle, N
    requests through the torch backend) or ``predict`` (a sharded run read with its table mapped)."""
    import torch

    base = _status("VmRSS")
    torch.set_num_threads(1)
    reset_peak()
    t0 = time.perf_counter()
    res = {"base_mb": base}
    if kind == "load":
        from dynarec.train.checkpoint import load_checkpoint

        load_checkpoint(args[0])
    elif kind == "export":
        from dynarec.serve.export import export_bundle

        m = export_bundle(args[0], args[1], "torch")
        res["parity"] = max(m["parity"]["torch"].values())
        res["mapped"] = [t["shape"] for t in m.get("mapped", {}).get("tables", [])]
    elif kind in ("serve", "predict"):
        from dynarec.serve.backends import load_backend
        from dynarec.serve.entry import TensorEntry, batch_inputs, example_batch
        from dynarec.serve.mapped_load import load_mapped_model
        from dynarec.serve.predictor import Predictor
        from dynarec.serve.sources import read_manifest
        from dynarec.train.checkpoint import load_checkpoint

        if kind == "serve":  # what `dynarec serve --backend torch` loads (read_bundle, less the encoders)
            m = read_manifest(args[0])
            model = (load_mapped_model(args[0], m) if m.get("mapped") else load_checkpoint(Path(args[0])))[0]
            run = load_backend(args[0], "torch", model=model)
        else:
            model = Predictor.load(args[0]).model
            entry = TensorEntry(model).eval()
            run = lambda a: entry(*a)  # noqa: E731
        res["loaded_mb"] = _status("VmRSS")
        touched = set()
        col = [f.name for f in model.schema.sparse].index("user_id")
        for i in range(int(args[1])):
            b = example_batch(model.schema, 256, seed=i)
            touched |= set(b.sparse[:, col].tolist())
            with torch.no_grad():
                run(batch_inputs(model.schema, b))
        res["requests"], res["user_rows_touched"] = int(args[1]), len(touched)
        res["after_mb"], res["anon_mb"], res["file_mb"] = _status("VmRSS"), _status("RssAnon"), _status("RssFile")
    res["peak_mb"], res["seconds"] = _status("VmHWM"), time.perf_counter() - t0
    print(json.dumps(res))
    return res


def _run(cmd: list[str], env: dict) -> str:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(1)
    return (r.stdout.strip().splitlines() or [""])[-1]


def measure(d: Path, rows: int, dim: int, checkpoint: str, requests: int, env: dict) -> dict:
    me = str(Path(__file__).resolve())
    out = d / checkpoint
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", me, "--worker",
          str(out), str(rows), str(dim), checkpoint], env)
    res = {"ranks": json.loads((out / "ranks.json").read_text())}
    res["disk_mb"] = sum(p.stat().st_size for p in (out / "run").rglob("*") if p.is_file()) / MB
    one = lambda *a: json.loads(_run([sys.executable, me, "--phase", *a], env))  # noqa: E731
    if checkpoint == "file":
        res["load"] = one("load", str(out / "run"))
        return res
    res["export"] = one("export", str(out / "run"), str(out / "bundle"))
    res["serve"] = one("serve", str(out / "bundle"), str(requests))
    res["predict"] = one("predict", str(out / "run"), str(requests))
    return res


def _phases(res: dict) -> dict:
    """phase name -> peak MB (per rank for the fit and the save)."""
    out = {}
    for i, rk in enumerate(res["ranks"]):
        out[f"fit   rank {i}"], out[f"save  rank {i}"] = rk["fit_peak_mb"], rk["save_peak_mb"]
    out.update({k: res[k]["peak_mb"] for k in ("load", "export", "serve", "predict") if k in res})
    return out


def report(name: str, res: dict, base: dict, table_mb: float) -> dict:
    """Each phase's peak, the fixed overhead (the same phase's peak with a table of ``--base-rows`` rows) and
    the rest as a multiple of the table's bytes."""
    got, fixed, out = _phases(res), _phases(base), {}
    for k, peak in got.items():
        extra = peak - fixed[k]
        out[k] = {"peak_mb": peak, "fixed_mb": fixed[k], "table_x": extra / table_mb}
        print(f"  {name:<8} {k:<13} peak {peak:>7,.0f} MB = fixed {fixed[k]:>5,.0f} + {extra:>7,.0f} MB "
              f"({extra / table_mb:.2f} x table)", flush=True)
    for k in ("serve", "predict"):
        if k in res:
            r = res[k]
            print(f"  {'':<8} {k:<13} RSS loaded {r['loaded_mb']:,.0f} MB, after {r['requests']} requests of 256 rows "
                  f"{r['after_mb']:,.0f} MB (anonymous {r['anon_mb']:,.0f}, file-backed {r['file_mb']:,.0f}; "
                  f"{r['user_rows_touched']:,} user_id rows touched)")
    print(f"  {name:<8} on disk {res['disk_mb']:,.0f} MB", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16_777_216, help="rows of the widened user_id table (new path)")
    ap.add_argument("--old-rows", type=int, default=2_000_000, help="the same for the old path (0: not run)")
    ap.add_argument("--base-rows", type=int, default=1000, help="the same with a tiny table: the fixed overhead")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), int(a.worker[2]), a.worker[3])
        return 0
    if a.phase:
        phase(a.phase[0], a.phase[1:])
        return 0
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    results = {"dim": a.dim}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        for name, rows, ck in (("sharded", a.rows, "sharded"), ("file", a.old_rows, "file")):
            if not rows:
                continue
            table_mb = rows * a.dim * 4 / MB
            print(f"{name}: dnn, user_id table {rows:,} x {a.dim} float32 = {table_mb:,.0f} MB, 2 processes "
                  f"(gloo, CPU), column_wise, adagrad; fixed overhead: the same at {a.base_rows:,} rows", flush=True)
            base = measure(Path(d) / "base", a.base_rows, a.dim, ck, a.requests, env)
            res = measure(Path(d), rows, a.dim, ck, a.requests, env)
            res.update(rows=rows, table_mb=table_mb, base=base)
            res["summary"] = report(name, res, base, table_mb)
            results[name] = res
            if a.json:
                Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
