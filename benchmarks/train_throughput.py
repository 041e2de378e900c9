"""Train throughput of `dnn` and `mmoe` on 1M synthetic rows at batch 4096, next to the FLOP roofline.

The roofline is the machine's measured dense matmul rate (GFLOP/s, float32, same thread count) divided by
the model's training FLOPs per row (forward + backward, counted with torch's FlopCounterMode).
Embedding gathers and element-wise ops are not counted, so the roofline is an upper bound.

    .venv/bin/python benchmarks/train_throughput.py [--rows 1000000] [--steps 60] [--threads 2]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Sparse invariant checks")


def matmul_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(4096, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * 4096 * n * n * reps / (time.perf_counter() - t) / 1e9)
    return best


def train_flops_per_row(model: nn.Module, batch) -> float:
    """Forward + backward FLOPs of one training step per row, counted by torch's FlopCounterMode
    (matmuls / bmm / einsum; embedding gathers and element-wise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from dynarec.losses import task_losses

    types = model.schema.task_types
    with FlopCounterMode(display=False) as fc:
        out = model(batch)
        sum(task_losses(out, batch.labels, types).values()).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops() / len(batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per model (after 5 warm-up steps)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="dnn,mmoe")
    a = ap.parse_args()

    from dynarec.train.config import TrainerConfig
    from dynarec.data.prepare import synthetic_tables
    from dynarec.models import build_model
    from dynarec.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    schema, tables, _ = synthetic_tables(a.rows, seed=0)
    prep = time.perf_counter() - t0
    train = tables["train"]
    gf = matmul_gflops(a.threads)
    print(f"data: {a.rows:,} rows generated + encoded in {prep:.1f} s; train split {len(train):,} rows")
    print(f"machine: {a.threads} threads, measured float32 matmul {gf:.1f} GFLOP/s")
    print(f"{'model':<14}{'params':>10}{'MFLOP/row':>11}{'rows/s':>11}{'roofline':>12}{'of roofline':>13}{'ms/step':>9}")
    for name in a.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, schema, {})
        tr = Trainer(model, TrainerConfig(batch_size=a.batch_size, progress=False))
        gen = torch.Generator().manual_seed(0)
        batches = train.batches(a.batch_size, shuffle=True, generator=gen)
        for _ in range(5):
            tr._step(next(batches))
        times = []
        for _ in range(a.steps):
            t = time.perf_counter()  # batch slicing is part of the step
            try:
                b = next(batches)
            except StopIteration:
                batches = train.batches(a.batch_size, shuffle=True, generator=gen)
                b = next(batches)
            tr._step(b)
            times.append(time.perf_counter() - t)
        times.sort()
        med = times[len(times) // 2]
        rps = a.batch_size / med
        fl = train_flops_per_row(model, train.take(torch.arange(a.batch_size)))
        roof = gf * 1e9 / fl
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name:<14}{n_params:>10,}{fl / 1e6:>11.2f}{rps:>11,.0f}{roof:>12,.0f}{rps / roof:>12.1%}{med * 1e3:>9.1f}")


if __name__ == "__main__":
    main()
