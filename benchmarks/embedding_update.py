"""Embedding-table update: sparse vs dense gradients for row-wise Adagrad (the same update, see
``dynarec/train/optim.py``), across table sizes. Sets ``DENSE_TABLE_FLOATS`` (``trainer.embedding_grad: auto``).

One step = gather ``batch × lookups`` rows, backward of their sum, optimizer step. The optimizers come from
dynarec's own ``build_optimizers`` with ``embedding_grad`` forced to each form. Median of ``--reps`` steps;
prints ms per step and the sparse ÷ dense ratio (> 1: dense is faster) in one run.

    .venv/bin/python benchmarks/embedding_update.py [--threads 1] [--batch 1024] [--lookups 13] [--dim 16]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dynarec.train.config import TrainerConfig
from dynarec.tables import TableCollection, TableSpec
from dynarec.train.optim import DENSE_TABLE_FLOATS, build_optimizers


class Table(nn.Module):
    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.tables = TableCollection()  # build_optimizers asks model.tables which parameters are tables
        self.tables.add(TableSpec("emb", rows, dim, None, "embedding"))

    def forward(self, ids):
        return self.tables["emb"](ids)


def step_ms(rows: int, dim: int, batch: int, lookups: int, grad: str, reps: int) -> float:
    torch.manual_seed(0)
    t = Table(rows, dim)
    opts, _ = build_optimizers(t, TrainerConfig(embedding_grad=grad))
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, rows, (batch, lookups), generator=g) for _ in range(reps + 3)]
    times = []
    for i, x in enumerate(ids):
        s = time.perf_counter()
        for o in opts:
            o.zero_grad()
        t(x).sum().backward()
        for o in opts:
            o.step()
        if i >= 3:
            times.append(time.perf_counter() - s)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lookups", type=int, default=13, help="ids per row (fields + sequence items)")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--rows", default="3000,10000,100000,250000,1000000,4000000")
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"Adagrad table update, batch {a.batch} × {a.lookups} lookups, dim {a.dim}, {a.threads} thread(s); "
          f"auto switches to sparse above {DENSE_TABLE_FLOATS:,} numbers ({DENSE_TABLE_FLOATS // a.dim:,} rows)")
    print(f"{'rows':>10} {'sparse ms':>10} {'dense ms':>10} {'sparse/dense':>13}  auto picks")
    for rows in [int(r) for r in a.rows.split(",")]:
        sp = step_ms(rows, a.dim, a.batch, a.lookups, "sparse", a.reps)
        de = step_ms(rows, a.dim, a.batch, a.lookups, "dense", a.reps)
        pick = "dense" if rows * a.dim <= DENSE_TABLE_FLOATS else "sparse"
        print(f"{rows:>10,} {sp:>10.2f} {de:>10.2f} {sp / de:>12.2f}×  {pick}", flush=True)


if __name__ == "__main__":
    main()
