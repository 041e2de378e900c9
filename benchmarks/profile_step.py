"""Where a training step's time goes: ``torch.profiler`` over a few steps of one model, self CPU time per op
and input shape (docs/benchmarks.md, "Batched experts" and "MMoE against torch-rechub").

    .venv/bin/python benchmarks/profile_step.py --model mmoe --threads 1 [--steps 5] [--rows 60000]
    .venv/bin/python benchmarks/profile_step.py --model mmoe --data PREPARED_DIR --batch-size 1024 \
        --params '{"batch_norm": true, "expert_dropout": 0, "dropout": 0}' --grad-clip 10 --steps 40

With ``--data`` the profiled loop is the trainer's own: batches sliced out of the shuffled train split
(``TensorTable.batches``) and stepped, so the data path per step is in the profile; without it one fixed
synthetic batch is stepped ``--steps`` times. ``--by-shape`` groups the table by input shape.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
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
    ap.add_argument("--data", default=None, help="a prepared folder: profile the trainer's batches of its train split")
    ap.add_argument("--params", default="{}", help="model params as JSON")
    ap.add_argument("--grad-clip", type=float, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--by-shape", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()

    from dynarec.train.config import TrainerConfig
    from dynarec.models import build_model
    from dynarec.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    if a.data:
        from dynarec.data.prepare import load_prepared

        schema, tables = load_prepared(a.data)[:2]
    else:
        from dynarec.data.prepare import synthetic_tables

        schema, tables, _ = synthetic_tables(a.rows, seed=0)
    train = tables["train"]
    kw = {k: v for k, v in (("grad_clip", a.grad_clip), ("lr", a.lr)) if v is not None}
    torch.manual_seed(0)
    tr = Trainer(build_model(a.model, schema, json.loads(a.params)),
                 TrainerConfig(batch_size=a.batch_size, progress=False, device="cpu", **kw))
    tr.model.train()
    if a.data:
        gen = torch.Generator().manual_seed(0)
        batches = lambda n: itertools.islice(_forever(train, a.batch_size, gen), n)  # noqa: E731
    else:
        fixed = train.take(torch.arange(a.batch_size))
        batches = lambda n: itertools.repeat(fixed, n)  # noqa: E731
    for b in batches(3):
        tr._step(b)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=a.by_shape) as p:
        for b in batches(a.steps):
            tr._step(b)
    dt = time.perf_counter() - t0
    print(f"{a.steps} steps of {a.batch_size} rows in {dt:.2f} s under the profiler "
          f"({a.steps * a.batch_size / dt:,.0f} rows/s)")
    print(p.key_averages(group_by_input_shape=a.by_shape).table(
        sort_by="self_cpu_time_total", row_limit=a.top, max_name_column_width=40, max_shapes_column_width=60))


def _forever(train, batch_size, gen):
    while True:
        yield from train.batches(batch_size, shuffle=True, generator=gen)


if __name__ == "__main__":
    main()
