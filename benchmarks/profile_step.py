"""Where a training step's time goes: ``torch.profiler`` over a few steps of one model at batch 4096,
self CPU time per op and input shape (docs/benchmarks.md, "Batched experts").

    .venv/bin/python benchmarks/profile_step.py --model mmoe --threads 1 [--steps 5] [--rows 60000]
"""
from __future__ import annotations

import argparse
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

warnings.filterwarnings("ignore", message="Sparse invariant checks")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mmoe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()

    from dynarec.config import TrainerConfig
    from dynarec.data.prepare import synthetic_tables
    from dynarec.models import build_model
    from dynarec.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    schema, tables, _ = synthetic_tables(a.rows, seed=0)
    batch = tables["train"].take(torch.arange(a.batch_size))
    torch.manual_seed(0)
    tr = Trainer(build_model(a.model, schema, {}), TrainerConfig(batch_size=a.batch_size, progress=False, device="cpu"))
    for _ in range(3):
        tr._step(batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        for _ in range(a.steps):
            tr._step(batch)
    print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=a.top,
                                                          max_name_column_width=36, max_shapes_column_width=70))


if __name__ == "__main__":
    main()
