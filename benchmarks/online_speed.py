"""Train rows/s with a dynamic (evicting) embedding table vs a static table of the same size, one run.

The model is DNN-like: three id features share one table of ``capacity + 1`` rows x ``dim`` (sparse
gradients, Adagrad lr 0.05 as PEPNet's tables), their embeddings are concatenated into an MLP
[256, 128] -> 1 logit (Adam lr 1e-3), BCE loss. The three variants differ ONLY in how raw ids become rows:

* ``static``  — the hashing trick: ``row = id mod capacity + 1`` into an ``nn.Embedding``;
* ``index``   — ``DynamicIndex.map`` per feature (count, admit, look up; PEPNet caps per feature plus one
  global budget), then the same single gather from a plain parameter; admitted rows are initialised and
  freed rows zeroed with their Adagrad state reset (``reset_slots``), as the online runner does;
* ``table``   — ``DynamicTable.forward`` per feature (three gathers).

Ids (class ``Ids``): per feature, ``--births`` new ids a step and Zipf draws over a live window of
``--window`` ids, larger than the per-feature cap, so at steady state the table is full, every step admits
ids and every pass end evicts. The table is first filled with the live window (untimed, one pass end); the
timed part is ``--passes`` passes of ``--steps`` steps each, pass-end eviction included; the three variants
step in turn (interleaved, the order rotating), so that a noisy neighbour slows them alike. Single thread by
default; both wall-clock and process CPU time are reported. Time under the machine lock:

    flock "${DYNAREC_BENCH_LOCK:-.bench.lock}" .venv/bin/python benchmarks/online_speed.py [--capacity 1000000] [--batch 4096]
        [--steps 40] [--passes 3] [--threads 1] [--json benchmarks/results/online_speed.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dynarec.tables.dynamic import DynamicIndex
from dynarec.tables.dynamic_table import DynamicTable
from dynarec.tables.row_state import reset_slots

F = 3


class Tower(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(F * dim, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, e):  # e [B, F, dim]
        return self.mlp(e.flatten(1)).squeeze(-1)


class Ids:
    """Per feature, a live window of the ``window`` most recent ids: each step ``births`` new ids are born and
    the rest of the batch is drawn from the window, Zipf(0.8)-skewed towards the young (old ids die out)."""

    def __init__(self, a, seed):
        self.a, self.rng, self.born = a, np.random.default_rng(seed), [a.window] * F
        p = 1.0 / np.arange(1, a.window + 1) ** 0.8
        self.cdf = np.cumsum(p / p.sum())

    def fill(self, f):
        """The live window, youngest first, in chunks (to fill the table before timing)."""
        ids = np.arange(self.born[f] - 1, self.born[f] - 1 - self.a.window, -1)
        return [torch.from_numpy(c.copy()) for c in np.array_split(ids, max(1, len(ids) // 65536))]

    def batch(self):
        cols = []
        for f in range(F):
            new = np.arange(self.born[f], self.born[f] + self.a.births)
            self.born[f] += self.a.births
            age = np.searchsorted(self.cdf, self.rng.random(self.a.batch - self.a.births))
            cols.append(self.rng.permutation(np.concatenate([new, self.born[f] - 1 - age])))
        y = (self.rng.random(self.a.batch) < 0.2).astype(np.float32)
        return torch.from_numpy(np.stack(cols, 1)), torch.from_numpy(y)


def run(kind, a):
    torch.manual_seed(0)
    tower = Tower(a.dim)
    caps = [int(a.capacity * 0.4)] * F
    index = table = None
    if kind == "table":
        table = DynamicTable(a.capacity, a.dim, caps=caps, sparse=True)
        weight = table.weight
        index = table.index
    else:
        weight = nn.Parameter(torch.randn(a.capacity + 1, a.dim) * 0.01)
    emb_opt = torch.optim.Adagrad([weight], lr=0.05)
    dense_opt = torch.optim.Adam(tower.parameters(), lr=1e-3)
    if kind == "index":
        index = DynamicIndex(a.capacity, caps=caps)

        @torch.no_grad()
        def init(slots):
            weight[slots] = torch.randn(slots.numel(), a.dim) * 0.01

        @torch.no_grad()
        def free(slots):
            weight[slots] = 0.0
            reset_slots(emb_opt, weight, slots)
        index.subscribe(init, free)
    if table is not None:
        table.attach(emb_opt)

    spent = {"map": 0.0}
    if index is not None:  # CPU time spent in the index's map (both dynamic variants)
        index_map = index.map

        def timed_map(*args, **kw):
            t = time.process_time()
            out = index_map(*args, **kw)
            spent["map"] += time.process_time() - t
            return out
        index.map = timed_map

    def step(ids, y):
        if kind == "table":
            e = torch.stack([table(ids[:, f], f) for f in range(F)], 1)
        else:
            if kind == "static":
                rows = ids % a.capacity + 1
            else:
                rows = torch.stack([index.map(ids[:, f], f) for f in range(F)], 1)
            e = nn.functional.embedding(rows, weight, sparse=True) * (rows > 0).unsqueeze(-1).float()
        loss = nn.functional.binary_cross_entropy_with_logits(tower(e), y)
        emb_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        emb_opt.step()
        dense_opt.step()
        if index is not None:
            index.step()

    return step, index, spent


def run_all(a):
    """Build the three variants, then time their steps interleaved (a different order every step), so that a
    noisy neighbour slows them all alike. -> {variant: results}."""
    ids_ = Ids(a, seed=0)
    fill = [ids_.fill(f) for f in range(F)]
    timed = [ids_.batch() for _ in range(3 + a.passes * a.steps)]
    kinds = ("static", "index", "table")
    built = {k: run(k, a) for k in kinds}
    for k, (step, index, spent) in built.items():
        if index is not None:  # fill the table with the live ids (untimed), then one pass end
            for f in range(F):
                for chunk in fill[f]:
                    index.observe(chunk, f)
            index.end_pass()
        for ids, y in timed[:3]:  # warm-up
            step(ids, y)
        spent.update(map=0.0, end_pass=0.0)
    wall, cpu, stats = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0.0), {k: [] for k in kinds}
    for i, (ids, y) in enumerate(timed[3:]):
        for k in kinds[i % 3:] + kinds[:i % 3]:
            step, index, spent = built[k]
            t, c = time.perf_counter(), time.process_time()
            step(ids, y)
            if (i + 1) % a.steps == 0 and index is not None:
                c1 = time.process_time()
                stats[k].append(index.end_pass())
                spent["end_pass"] += time.process_time() - c1
            wall[k] += time.perf_counter() - t
            cpu[k] += time.process_time() - c
    n = a.passes * a.steps
    res = {}
    for k, (step, index, spent) in built.items():
        r = res[k] = {"rows_per_s": n * a.batch / wall[k], "ms_per_step": 1e3 * wall[k] / n,
                      "rows_per_cpu_s": n * a.batch / cpu[k], "cpu_ms_per_step": 1e3 * cpu[k] / n}
        if index is not None:
            r.update(slots_in_use=index.slots_in_use, passes=stats[k],
                     **{f"cpu_ms_{x}_per_step": 1e3 * v / n for x, v in spent.items()})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--capacity", type=int, default=1_000_000, help="slots (rows) of the table, all variants")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per pass")
    ap.add_argument("--passes", type=int, default=3, help="timed passes")
    ap.add_argument("--window", type=int, default=600_000, help="live ids per feature (cap: 0.4 x capacity)")
    ap.add_argument("--births", type=int, default=200, help="new ids per feature per step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = run_all(a)
    base, cbase = res["static"]["rows_per_s"], res["static"]["rows_per_cpu_s"]
    print(f"capacity {a.capacity}  batch {a.batch} x {F} features  dim {a.dim}  threads {a.threads}")
    print(f"{'variant':8} {'rows/s':>10} {'ms/step':>8} {'x static':>8} {'rows/cpu-s':>10} {'x static':>8}"
          "  slots  admitted/evicted per pass  (CPU ms/step in map, in end_pass)")
    for k, r in res.items():
        r["ratio"], r["cpu_ratio"] = r["rows_per_s"] / base, r["rows_per_cpu_s"] / cbase
        extra = f"  {r['slots_in_use']}  " + " ".join(f"{s['admitted']}/{s['evicted']}" for s in r["passes"]) + \
            f"  ({r['cpu_ms_map_per_step']:.1f}, {r['cpu_ms_end_pass_per_step']:.1f})" if "passes" in r else ""
        print(f"{k:8} {r['rows_per_s']:10.0f} {r['ms_per_step']:8.2f} {r['ratio']:8.2f} "
              f"{r['rows_per_cpu_s']:10.0f} {r['cpu_ratio']:8.2f}{extra}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": res}, indent=1) + "\n")


if __name__ == "__main__":
    main()
