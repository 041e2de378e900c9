"""The retrieval acceptance of issue 27, with DEFAULT keys: popularity, ``two_tower`` (in-batch softmax, its
default towers) and ``two_tower`` with ``loss: sogram`` on MovieLens-100K prepared leave-last-out, every trainer
and model key at its default (only ``threads: 1`` and no progress bar), exact full-corpus recall@50 on the
test split with seen items masked. Prints each method's recall@10 / @50, best epoch and seconds, and
recall@50 as a multiple of popularity's (the acceptance: >= 1.4x).

    nice -n 10 python benchmarks/retrieval_defaults.py [--methods popularity,inbatch,sogram] [--set KEY=JSON]

``--set model.KEY=JSON`` / ``--set trainer.KEY=JSON`` change one key for every two-tower run (the sweep of
docs/benchmarks.md, "Defaults are the measured recipe"). Shared data: ``../shared/data`` or ``$DYNAREC_DATA``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DYNAREC_DATA", ROOT.parent / "shared" / "data"))
METHODS = {"popularity": ("popularity", {}), "inbatch": ("two_tower", {}), "sogram": ("two_tower", {"loss": "sogram"}),
           "sagram": ("two_tower", {"loss": "sagram"})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="popularity,inbatch,sogram")
    ap.add_argument("--set", action="append", default=[], help="model.KEY=JSON or trainer.KEY=JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="prepared folder cache (default: a temporary folder)")
    a = ap.parse_args(argv)
    raw = SHARED / "movielens" / "ml-100k"
    if not raw.is_dir():
        print(f"{raw}: MovieLens-100K not found (set DYNAREC_DATA)", file=sys.stderr)
        return 2
    import torch

    from dynarec.data.prepare import prepare_input
    from dynarec.retrieval.train import load_retrieval_data, train_retrieval

    torch.set_num_threads(1)
    extra = {"model": {}, "trainer": {}}
    for s in a.set:
        key, _, val = s.partition("=")
        sec, _, k = key.partition(".")
        extra[sec][k] = json.loads(val)
    with tempfile.TemporaryDirectory() as tmp:
        out = (a.work or Path(tmp)) / "ml-100k-llo"
        if not (out / "schema.json").exists():
            prepare_input("movielens", out, raw=str(raw), options={}, split="leave_last_out", seed=0)
        schema, _, data = load_retrieval_data(out)
        pop = None
        for name in a.methods.split(","):
            model, params = METHODS[name]
            if model == "two_tower":
                params = {**params, **extra["model"]}
            trainer = {"threads": 1, "progress": False, **(extra["trainer"] if model == "two_tower" else {})}
            t0 = time.perf_counter()
            res = train_retrieval(model, schema, {}, params=params, trainer=trainer, seed=a.seed, data=data)
            r50 = res.metrics["recall@50"]["all"]
            pop = r50 if name == "popularity" else pop
            print(json.dumps({"method": name, "params": params, "trainer": trainer,
                              "recall@10": round(res.metrics["recall@10"]["all"], 4), "recall@50": round(r50, 4),
                              "x_popularity": None if pop is None else round(r50 / pop, 3),
                              "best_epoch": res.history.best_epoch, "epochs": len(res.history.epochs),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
