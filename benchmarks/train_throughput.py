"""Train throughput on 1M synthetic rows at batch 4096, next to the FLOP roofline, for every combination
of ``--precision`` (fp32, bf16) and ``--compile`` (off, on) asked for, in one run.

The roofline is the machine's measured dense matmul rate at the run's precision (GFLOP/s, float32 or
bfloat16 GEMM, same thread count, measured in the same run) divided by the model's training FLOPs per row
(forward + backward, counted with torch's FlopCounterMode). Embedding gathers and element-wise ops are not
counted, so the roofline is an upper bound. bf16 is measured as asked even on a CPU without AMX-BF16 /
AVX512-BF16 (where ``trainer.precision: bf16`` itself would train in fp32): the ``native bf16`` line says
which case the run is. Compile time (first steps) is printed apart and not part of rows/s.

    .venv/bin/python benchmarks/train_throughput.py [--rows 1000000] [--steps 60] [--threads 2] \
        [--models dnn,mmoe,pepnet,star,apg_dnn] [--precision fp32,bf16] [--compile off,on]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Sparse invariant checks")


def matmul_gflops(threads: int, n: int = 1024, seconds: float = 0.5, dtype=torch.float32) -> float:
    """Best of 5 rounds of ``[4096, n] @ [n, n]`` products, each round at least ``seconds`` long."""
    torch.set_num_threads(threads)
    a, b = torch.randn(4096, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = time.perf_counter()
    a @ b
    best = 2 * 4096 * n * n / (time.perf_counter() - t) / 1e9
    if 2 * 4096 * n * n / best / 1e9 > seconds:  # one product already took a round (emulated bf16): that rate
        return best
    for _ in range(5):
        t, reps = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            a @ b
            reps += 1
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


RUNS_DEFAULT = ("fp32:off", "bf16:off", "bf16:on")  # the issue-28 table: fp32 eager, bf16 eager, bf16 compiled


def time_steps(tr, train, batch_size: int, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the ``warmup`` first steps -- compilation included --, median seconds of a timed step)."""
    gen = torch.Generator().manual_seed(0)
    batches = train.batches(batch_size, shuffle=True, generator=gen)

    def nxt():
        nonlocal batches
        b = next(batches, None)
        if b is None or len(b) < batch_size:  # a short last batch would be a new shape to compile
            batches = train.batches(batch_size, shuffle=True, generator=gen)
            b = next(batches)
        return b

    t = time.perf_counter()
    for _ in range(warmup):
        tr._step(nxt())
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()  # batch slicing is part of the step
        tr._step(nxt())
        times.append(time.perf_counter() - t)
    times.sort()
    return first, times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per model (after the warm-up steps)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first steps (compilation happens there)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="dnn,mmoe,pepnet,star,apg_dnn")
    ap.add_argument("--precision", default=None, help="fp32,bf16 (with --compile: every combination)")
    ap.add_argument("--compile", default=None, help="off,on (with --precision: every combination)")
    a = ap.parse_args()
    from dynarec.train.precision import cpu_bf16_flags

    skipped = ""
    if a.precision is None and a.compile is None:
        runs = [r.split(":") for r in RUNS_DEFAULT]
        if not cpu_bf16_flags():  # emulated bf16 GEMMs run at ~1 % of fp32: minutes per step
            runs, skipped = [("fp32", "off")], " (bf16 runs skipped by default; --precision bf16 measures them)"
    else:
        runs = [(p, c) for p in (a.precision or "fp32").split(",") for c in (a.compile or "off").split(",")]
    for p, c in runs:
        if p not in ("fp32", "bf16") or c not in ("off", "on"):
            ap.error(f"--precision: fp32 | bf16, --compile: off | on (got {p}, {c})")

    from dynarec.train.config import TrainerConfig
    from dynarec.data.prepare import synthetic_tables
    from dynarec.models import build_model
    from dynarec.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    schema, tables, _ = synthetic_tables(a.rows, seed=0)
    prep = time.perf_counter() - t0
    train = tables["train"]
    ceiling = {p: matmul_gflops(a.threads, dtype=torch.bfloat16 if p == "bf16" else torch.float32)
               for p in sorted({p for p, _ in runs})}
    flags = cpu_bf16_flags()
    print(f"data: {a.rows:,} rows generated + encoded in {prep:.1f} s; train split {len(train):,} rows")
    print(f"machine: {a.threads} threads, measured matmul " +
          ", ".join(f"{p} {g:.1f} GFLOP/s" for p, g in ceiling.items()) +
          f"; native bf16: {', '.join(flags) if flags else 'no (bf16 runs are emulated, for reference)'}{skipped}")
    print(f"{'model':<10}{'prec':>6}{'compile':>8}{'params':>10}{'MFLOP/row':>11}{'rows/s':>10}{'roofline':>10}"
          f"{'of roofline':>12}{'ms/step':>9}{'warm-up s':>10}{'GFLOP/s':>8}")
    for i, name in enumerate(a.models.split(",")):
        if i and flags:  # a shared machine's rate drifts: measured again next to each model (emulated bf16:
            ceiling = {p: matmul_gflops(a.threads, dtype=torch.bfloat16 if p == "bf16" else torch.float32)
                       for p in ceiling}  # once, it takes a minute)
        elif i and "fp32" in ceiling:
            ceiling["fp32"] = matmul_gflops(a.threads)
        for prec, comp in runs:
            torch.manual_seed(0)
            model = build_model(name, schema, {})
            tr = Trainer(model, TrainerConfig(batch_size=a.batch_size, progress=False, device="cpu",
                                              compile=comp == "on"))
            tr.step.forward.precision = prec  # bf16 autocast as asked, also where the trainer would not use it
            first, med = time_steps(tr, train, a.batch_size, a.warmup, a.steps)
            rps = a.batch_size / med
            fl = train_flops_per_row(model, train.take(torch.arange(a.batch_size)))
            roof = ceiling[prec] * 1e9 / fl
            n_params = sum(p.numel() for p in model.parameters())
            print(f"{name:<10}{prec:>6}{comp:>8}{n_params:>10,}{fl / 1e6:>11.2f}{rps:>10,.0f}{roof:>10,.0f}"
                  f"{rps / roof:>11.1%}{med * 1e3:>9.1f}{first:>10.1f}{ceiling[prec]:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
