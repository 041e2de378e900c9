"""Resident memory per rank: a big feature table trained by 2 processes with ``ddp`` (a full replica per
rank) against ``torchrec`` (each rank holds its shards; the model's own fused table released once the
shards hold its rows). dnn on synthetic data whose ``user_id`` table is widened to ``--rows`` rows
(the ids of the data use its first few hundred rows: the memory is the table's, not the data's).

Each rank reports its resident set (``VmRSS`` of ``/proc/self/status``) after the model is built, at the
end of the fit (TorchRec: the tables still sharded) and after :meth:`Trainer.finish` (TorchRec: the
tables assembled on rank 0 only), plus the table bytes TorchRec accounts for (``history.held_bytes``).

    python benchmarks/torchrec_memory.py [--rows 4000000] [--dim 16] [--backends ddp,torchrec]
        [--sharding column_wise] [--json benchmarks/results/torchrec_memory.json]

Needs ``dynarec[torchrec]`` for the torchrec runs (Linux: reads /proc)."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(out: str, rows: int, dim: int, backend: str, sharding: str) -> None:
    """One rank (under torchrun): build, fit 1 epoch, finish; RSS at each point; rank 0 writes ``out``."""
    import torch
    import torch.distributed as dist

    from dynarec.data.prepare import synthetic_tables
    from dynarec.models import build_model
    from dynarec.train.config import TrainerConfig
    from dynarec.train.trainer import Trainer

    torch.set_num_threads(1)
    schema, tables, _ = synthetic_tables(20_000, seed=0)
    schema.features = [replace(f, vocab_size=rows) if f.name == "user_id" else f for f in schema.features]
    base = rss_mb()
    torch.manual_seed(0)
    build = contextlib.nullcontext()
    if backend == "torchrec":  # as dynarec train does: the TorchRec tables built without storage
        from dynarec.tables.torchrec_adapter import sharded_build
        build = sharded_build()
    with build:
        model = build_model("dnn", schema, {"hidden": [64], "embed_dim": dim})
    built = rss_mb()
    cfg = TrainerConfig(epochs=1, batch_size=1024, progress=False, distributed=backend, sharding=sharding,
                        embedding_grad="sparse", embedding_optimizer="adagrad")
    tr = Trainer(model, cfg, seed=0)
    hist = tr.fit(tables["train"], tables["valid"], finish=False)
    fitted = rss_mb()
    tr.finish()
    finished = rss_mb()
    mine = {"before_build_mb": base, "built_mb": built, "fit_end_mb": fitted, "finished_mb": finished,
            "held_bytes": None}
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    if dist.get_rank() == 0:
        held = getattr(hist, "held_bytes", None)
        for r, h in zip(ranks, held or [None] * len(ranks)):
            r["held_bytes"] = h
        Path(out).write_text(json.dumps({"backend": backend, "sharding": sharding if backend == "torchrec" else None,
                                         "valid_auc": hist.epochs[-1].get("valid_auc"), "ranks": ranks}))
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4_000_000, help="rows of the widened user_id table")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--backends", default="ddp,torchrec")
    ap.add_argument("--sharding", default="column_wise")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=4, metavar=("OUT", "ROWS", "DIM", "BACKEND"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        out, rows, dim, backend = a.worker
        worker(out, int(rows), int(dim), backend, a.sharding)
        return 0
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    table_mb = a.rows * a.dim * 4 / MB
    print(f"dnn, user_id table {a.rows:,} x {a.dim} float32 = {table_mb:,.0f} MB (+ as much Adagrad state), "
          f"2 processes (gloo, CPU)")
    results = []
    with tempfile.TemporaryDirectory() as d:
        for backend in a.backends.split(","):
            out = Path(d) / f"{backend}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(Path(__file__).resolve()), "--sharding", a.sharding, "--worker", str(out), str(a.rows),
                   str(a.dim), backend]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            res = json.loads(out.read_text())
            results.append(res)
            label = backend + (f" {a.sharding}" if backend == "torchrec" else "")
            for i, rk in enumerate(res["ranks"]):
                h = rk["held_bytes"]
                held = (f"  shards {h['shards'] / MB:,.0f} MB, fused copy {h['fused'] / MB:,.0f} MB"
                        if h else "")
                print(f"  {label:<22} rank {i}: RSS built {rk['built_mb']:>7,.0f} MB, fit end "
                      f"{rk['fit_end_mb']:>7,.0f} MB, finished {rk['finished_mb']:>7,.0f} MB{held}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": a.rows, "dim": a.dim, "table_mb": table_mb,
                                            "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
