"""1 vs 2 data-parallel processes on this machine (gloo on CPU, torch.distributed.run): train rows/s of
``dynarec train`` on synthetic data, from the JSON line (``train_rows_per_s`` counts the rows of all ranks).
On a 2-core machine it will not scale (2 processes share 2 cores and pay an all-reduce per step): it is
for the record, and the same script on a bigger machine shows the scaling.

    python benchmarks/ddp_scaling.py [--rows 200000] [--batch-size 4096] [--model dnn]
        [--backends ddp,torchrec] [--sharding table_wise]   # torchrec: needs dynarec[torchrec], 2+ processes"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--model", default="dnn")
    ap.add_argument("--nproc", default="1,2")
    ap.add_argument("--backends", default="ddp", help="trainer.distributed values to time with 2+ processes")
    ap.add_argument("--sharding", default="table_wise", help="trainer.sharding of the torchrec runs")
    a = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        subprocess.run([sys.executable, "-m", "dynarec", "data", "synthetic", "--rows", str(a.rows), "--out",
                        str(data)], env=env, check=True, capture_output=True)
        print(f"{a.model}, {a.rows:,} synthetic rows (80% train), global batch {a.batch_size}, "
              f"{os.cpu_count()} CPU cores")
        runs = [(n, b) for n in map(int, a.nproc.split(",")) for b in (a.backends.split(",") if n > 1 else ["ddp"])]
        for n, backend in runs:
            cmd = [sys.executable, "-m", "dynarec", "train", "--model", a.model, "--data", str(data), "--epochs",
                   "1", "--batch-size", str(a.batch_size), "--json", "--out", str(Path(d) / f"out{n}{backend}"),
                   "--nproc", str(n), "--set", f"trainer.distributed={backend}", "--set",
                   f"trainer.sharding={a.sharding}"]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-2000:], file=sys.stderr)
                return 1
            j = json.loads(r.stdout.strip().splitlines()[-1])
            label = "" if n == 1 else f", {backend}" + (f" {a.sharding}" if backend == "torchrec" else "")
            print(f"  {n} process(es){label}: {j['train_rows_per_s']:>10,.0f} train rows/s, "
                  f"test AUC {j['metrics']['auc']['click']['all']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
