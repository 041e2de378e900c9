"""Peak resident memory per rank of a TorchRec run's checkpoint: the one-file ``model.pt``
(``trainer.checkpoint: file``: the table assembled on rank 0, serialised in memory) against the sharded
checkpoint (``trainer.checkpoint: sharded``: each rank writes its shards through torch.distributed.checkpoint),
and the peak of loading each into one process (``load_checkpoint``). dnn on synthetic data whose ``user_id``
table is widened to ``--rows`` rows, 2 gloo processes on CPU, ``trainer.sharding: column_wise``.

Peaks are ``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` (Linux) just before the
phase: "save" is the run's end (:func:`dynarec.train.run._finish`: the test metrics, then consolidate + model.pt
or the sharded write), reported as the peak minus the RSS just before it.

    nice -n 10 python benchmarks/table_memory.py [--rows 2000000] [--dim 32] [--json out.json]

Needs ``dynarec[torchrec]``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def worker(out: str, rows: int, dim: int, checkpoint: str) -> None:
    """One rank (under torchrun): train 1 epoch into ``out/run``, the peak of the run's end recorded."""
    from dataclasses import replace

    import torch
    import torch.distributed as dist

    from dynarec.data.prepare import synthetic_tables
    from dynarec.train import run

    torch.set_num_threads(1)
    schema, tables, _ = synthetic_tables(20_000, seed=0)
    schema.features = [replace(f, vocab_size=rows) if f.name == "user_id" else f for f in schema.features]
    seen = {}
    finish = run._finish

    def measured(*args, **kw):
        seen["before_mb"] = _status("VmRSS")
        reset_peak()
        res = finish(*args, **kw)
        seen["peak_mb"] = _status("VmHWM")
        return res

    run._finish = measured
    run.train_model("dnn", schema, tables, {"hidden": [64], "embed_dim": dim},
                    {"epochs": 1, "batch_size": 1024, "progress": False, "distributed": "torchrec",
                     "sharding": "column_wise", "embedding_grad": "sparse", "embedding_optimizer": "adagrad",
                     "checkpoint": checkpoint}, seed=0, out=Path(out) / "run")
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, seen)
    if dist.get_rank() == 0:
        Path(out, "ranks.json").write_text(json.dumps(ranks))
    dist.destroy_process_group()


def loader(folder: str) -> None:
    """One process: the peak of ``load_checkpoint(folder)`` above the RSS before it."""
    from dynarec.train.checkpoint import load_checkpoint

    before = _status("VmRSS")
    reset_peak()
    load_checkpoint(folder)
    print(json.dumps({"before_mb": before, "peak_mb": _status("VmHWM")}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the widened user_id table")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--load", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), int(a.worker[2]), a.worker[3])
        return 0
    if a.load:
        loader(a.load)
        return 0
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    table_mb = a.rows * a.dim * 4 / MB
    print(f"dnn, user_id table {a.rows:,} x {a.dim} float32 = {table_mb:,.0f} MB, 2 processes (gloo, CPU), "
          "column_wise; peak above the RSS before the phase")
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for checkpoint in ("file", "sharded"):
            out = Path(d) / checkpoint
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(Path(__file__).resolve()), "--worker", str(out), str(a.rows), str(a.dim), checkpoint]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            ranks = json.loads((out / "ranks.json").read_text())
            r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--load", str(out / "run")], env=env,
                               capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            load = json.loads(r.stdout.strip().splitlines()[-1])
            disk = sum(p.stat().st_size for p in (out / "run").rglob("*") if p.is_file()) / MB
            results[checkpoint] = {"save": ranks, "load_one_process": load, "disk_mb": disk}
            for i, rk in enumerate(ranks):
                print(f"  {checkpoint:<8} save  rank {i}: +{rk['peak_mb'] - rk['before_mb']:>7,.0f} MB "
                      f"(RSS before {rk['before_mb']:,.0f} MB)")
            print(f"  {checkpoint:<8} load  1 process: +{load['peak_mb'] - load['before_mb']:>7,.0f} MB "
                  f"(RSS before {load['before_mb']:,.0f} MB); on disk {disk:,.0f} MB")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": a.rows, "dim": a.dim, "table_mb": table_mb, "runs": results},
                                           indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
