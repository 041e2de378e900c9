"""Checks on why dynarec with torch-rechub's recipe scores above torch-rechub (docs/benchmarks.md, "Side by
side"): dynarec's shared bottom with BatchNorm, dense Adam on the tables and N(0, 1e-4) init, then without
gradient clipping (torch-rechub has none), over seeds; prints test AUC and the best epoch of each run (best =
last rules out "torch-rechub keeps the last epoch, dynarec reloads the best"). dynarec only, its own venv:

    .venv/bin/python benchmarks/anchors/rechub_gap.py --data /tmp/anchors_douban [--seeds 0,1,2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HParams  # noqa: E402
from run import dynarec_params  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a dynarec prepared folder")
    ap.add_argument("--model", default="shared_bottom")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from dynarec.data.prepare import load_prepared
    from dynarec.train.run import train_model

    torch.set_num_threads(a.threads)
    schema, tables = load_prepared(a.data)
    hp = HParams()
    task = schema.task_names[0]
    for label, over in (("torch-rechub's recipe (dense_init+bn)", {}), ("  ... without gradient clipping", {"grad_clip": 0.0})):
        aucs, bests = [], []
        for seed in [int(x) for x in a.seeds.split(",")]:
            params = {**dynarec_params(a.model, hp, schema, True), "embedding_init_std": 1e-4}
            trainer = {"epochs": hp.epochs, "batch_size": hp.batch_size, "lr": hp.lr, "patience": hp.patience,
                       "progress": False, "grad_clip": 10.0, "embedding_optimizer": "adam", "embedding_lr": hp.lr,
                       **over}
            r = train_model(a.model, schema, tables, params, trainer, seed=seed)
            aucs.append(r.metrics["auc"][task]["all"])
            bests.append(r.history.best_epoch)
        print(f"{label:<40} AUC {statistics.mean(aucs):.4f} (seeds: {', '.join(f'{x:.4f}' for x in aucs)})  "
              f"best epoch {bests} of {hp.epochs}", flush=True)


if __name__ == "__main__":
    main()
