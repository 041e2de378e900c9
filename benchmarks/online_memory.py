"""Resident memory of online training over a dynamic table: many more distinct ids than slots, in passes.

A stream of ``--ids`` distinct ids (``dynarec.data.stream.id_stream``: generated on the fly, never stored; ids
are born in order and die out of a live window) goes through a ``DynamicTable`` of ``--budget`` slots x
``--dim`` (sparse gradients, Adagrad attached so freed rows get their state reset), one training step per
batch (a gather, a squared-norm loss, backward, Adagrad step). The stream is cut into ``--passes`` passes; at
each pass end the table expires / evicts and the changed rows are collected as a delta writer would
(``changed_slots``). After each pass the process's resident set size (``VmRSS`` of ``/proc/self/status``)
and the slots in use are recorded: once the table is full, RSS must stay flat while the ids keep coming.

    .venv/bin/python benchmarks/online_memory.py [--ids 10000000] [--budget 1000000] [--passes 20]
        [--batch 65536] [--threshold 1] [--eviction-interval N] [--out benchmarks/results/online_memory]

Writes ``OUT.json`` (per pass: ids seen, slots in use, admitted / evicted, RSS MB, seconds) and ``OUT.png``
(RSS and slots in use per pass; skipped with a message when matplotlib is missing).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from dynarec.data.stream import id_stream
from dynarec.tables.dynamic_table import DynamicTable
from dynarec.tables.eviction import EvictionConfig


def rss_mb() -> float:
    """Resident set size of this process in MB (``VmRSS``; Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def plot(rows, path: Path, a) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    p = [r["pass"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(p, [r["rss_mb"] for r in rows], "o-", color="tab:red", label="RSS (MB)")
    ax.set_xlabel("pass")
    ax.set_ylabel("resident memory (MB)", color="tab:red")
    ax.set_ylim(0, max(r["rss_mb"] for r in rows) * 1.15)
    ax2 = ax.twinx()
    ax2.plot(p, [r["slots_in_use"] for r in rows], "s--", color="tab:blue", label="slots in use")
    ax2.plot(p, [r["ids_seen"] for r in rows], ":", color="tab:gray", label="distinct ids seen")
    ax2.axhline(a.budget, color="tab:blue", lw=0.8)
    ax2.set_ylabel("ids", color="tab:blue")
    ax.set_title(f"DynamicTable: {a.ids:,} distinct ids, {a.budget:,}-slot budget, dim {a.dim}")
    fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ids", type=int, default=10_000_000, help="distinct ids in the stream")
    ap.add_argument("--budget", type=int, default=1_000_000, help="slots of the table")
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--batch", type=int, default=65_536, help="ids per training step")
    ap.add_argument("--window", type=int, default=2_000_000, help="live ids of the stream")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--threshold", type=int, default=1, help="occurrences before admission")
    ap.add_argument("--eviction-interval", type=int, default=None, help="also evict every N steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/online_memory", help="OUT.json and OUT.png")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    births = a.batch // 4  # id_stream's default: every id born within 4 x ids / batch batches
    per_pass = math.ceil(math.ceil(a.ids / births) / a.passes)
    table = DynamicTable(a.budget, a.dim, eviction=EvictionConfig(threshold=a.threshold, interval=a.eviction_interval),
                         sparse=True)
    opt = torch.optim.Adagrad(table.parameters(), lr=0.05)
    table.attach(opt)
    rows, seen, t0 = [], 0, time.perf_counter()
    stream = id_stream(a.ids, batch=a.batch, window=min(a.window, a.ids), births=births, seed=0)
    print(f"start: RSS {rss_mb():.0f} MB; {a.ids:,} ids, budget {a.budget:,}, {per_pass} batches of {a.batch} a pass")
    for p in range(a.passes):
        n = 0
        for batch in stream:
            ids = torch.from_numpy(batch)
            opt.zero_grad()
            table(ids).pow(2).sum().backward()
            opt.step()
            table.index.step()
            seen = max(seen, int(ids.max()) + 1)  # ids are born in increasing order
            n += 1
            if n == per_pass:
                break
        if n == 0:
            break
        st = table.index.end_pass()
        table.index.changed_slots(clear=True)  # the delta of this pass (a runner writes it out)
        r = {"pass": p, "ids_seen": seen, "slots_in_use": table.index.slots_in_use, **st, "rss_mb": rss_mb(),
             "seconds": time.perf_counter() - t0,
             "static_rows_mb": seen * a.dim * 4 * 2 / 2 ** 20}  # a row + Adagrad state for every id seen
        rows.append(r)
        print(f"pass {p:3d}  ids seen {seen:>10,}  slots {r['slots_in_use']:>9,}  admitted {r['admitted']:>9,}  "
              f"evicted {r['evicted']:>9,}  RSS {r['rss_mb']:7.1f} MB  {r['seconds']:6.1f} s", flush=True)
    full = next((i for i, r in enumerate(rows) if r["slots_in_use"] >= 0.9 * a.budget * 0.999), None)
    after = [r["rss_mb"] for r in rows[full:]] if full is not None else []
    summary = {"first_full_pass": full, "rss_after_full_mb": [min(after), max(after)] if after else None,
               "rss_growth_after_full_mb": after[-1] - after[0] if after else None}
    print(json.dumps(summary))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(a), "passes": rows, "summary": summary}, indent=1) + "\n")
    print(plot(rows, out.with_suffix(".png"), a))


if __name__ == "__main__":
    main()
