"""Streamed vs in-memory training speed measured side by side in ONE process: the same model takes a few steps
on batches of the streamed reader (``StreamTable``), then a few on the in-memory table's, alternately, until
an epoch of each is done; each side's reader time (``next`` on its batch iterator) and step time are summed.
On a machine shared with other jobs, two separate processes see different loads (the same in-memory run
measured 13k and 27k rows/s minutes apart here), so the ratio of separate runs says little; alternating
within one process puts both sides under the same load.

    nice -n 10 .venv/bin/python benchmarks/stream_interleaved.py PREPARED_FOLDER --threads 2

Prints one JSON line per side and the stream / memory rows/s ratio."""
from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prep", help="a prepared folder (train split)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--read-threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--every", type=int, default=3, help="steps on one side before switching")
    a = ap.parse_args(argv)
    from dynarec.data.loader import open_split
    from dynarec.data.prepare import load_prepared
    from dynarec.models import build_model
    from dynarec.train.config import TrainerConfig
    from dynarec.train.trainer import Trainer

    st = open_split(a.prep, "train", threads=a.read_threads).for_rank(0, 1)
    mem = load_prepared(a.prep, ("train",))[1]["train"]
    torch.manual_seed(0)
    model = build_model("dnn", mem.schema, {})
    tr = Trainer(model, TrainerConfig(epochs=1, batch_size=a.batch_size, progress=False, threads=a.threads), seed=0)
    torch.set_num_threads(a.threads)
    its = {"stream": st.batches(a.batch_size, True, torch.Generator().manual_seed(0)),
           "memory": mem.batches(a.batch_size, True, torch.Generator().manual_seed(0))}
    tot = {k: {"read_s": 0.0, "step_s": 0.0, "rows": 0} for k in its}
    model.train()
    live = set(its)
    while live:
        for k in sorted(live):
            for _ in range(a.every):
                t0 = time.perf_counter()
                b = next(its[k], None)
                t1 = time.perf_counter()
                if b is None:
                    live.discard(k)
                    break
                tr.step(b)
                tot[k]["read_s"] += t1 - t0
                tot[k]["step_s"] += time.perf_counter() - t1
                tot[k]["rows"] += len(b)
    for k, v in tot.items():
        v["rows_per_s"] = v["rows"] / max(v["read_s"] + v["step_s"], 1e-9)
        print(json.dumps({"side": k, "threads": a.threads, **v}))
    ratio = tot["stream"]["rows_per_s"] / tot["memory"]["rows_per_s"]
    print(json.dumps({"stream_over_memory": ratio, "load_avg": __import__("os").getloadavg()}))
    return tot


if __name__ == "__main__":
    main()
