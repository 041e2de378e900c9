"""A/B of the expert layers in one process: today's batched form (one addmm / baddbmm per layer) against
the per-layer einsum it replaced, alternating on the same batch, CPU time per training step (less
sensitive than wall time to other processes on a shared machine). docs/benchmarks.md, "Batched experts".

    .venv/bin/python benchmarks/batched_experts.py --model mmoe --threads 1 [--reps 6]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

warnings.filterwarnings("ignore", message="Sparse invariant checks")


def einsum_forward(self, x):
    """The einsum form before issue 28 (no batch norm / dropout: the models' defaults)."""
    h = x
    for w, b in zip(self.weights, self.biases):
        h = self.act(torch.einsum("bi,nio->bno" if h.dim() == 2 else "bni,nio->bno", h, w) + b)
    return h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mmoe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=6)
    a = ap.parse_args()

    from dynarec.config import TrainerConfig
    from dynarec.data.prepare import synthetic_tables
    from dynarec.models import build_model
    from dynarec.nn import moe
    from dynarec.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    schema, tables, _ = synthetic_tables(60_000, seed=0)
    batch = tables["train"].take(torch.arange(4096))
    torch.manual_seed(0)
    tr = Trainer(build_model(a.model, schema, {}), TrainerConfig(batch_size=4096, progress=False, device="cpu"))
    batched, res = moe.Experts.forward, {"einsum": [], "batched": []}
    try:
        for _ in range(a.reps):
            for k, f in (("einsum", einsum_forward), ("batched", batched)):
                moe.Experts.forward = f
                tr._step(batch)
                t = time.process_time()
                tr._step(batch)
                tr._step(batch)
                res[k].append((time.process_time() - t) / 2)
    finally:
        moe.Experts.forward = batched
    for k, v in res.items():
        v.sort()
        print(f"{a.model} {k:<8} median CPU ms/step {v[len(v) // 2] * 1e3:.1f}  (all: {[round(x * 1e3) for x in v]})")


if __name__ == "__main__":
    main()
