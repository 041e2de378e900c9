"""Why STAR with its default partitioned norm loses (issue 29, docs/model_choice.md): are the moving statistics
PN uses at evaluation stale? Trains ``star`` (default keys) on the synthetic control, then scores the test
split twice: with the statistics training left behind, and with per-domain statistics recomputed from one
pass over the training rows through the FINAL model (nothing else changes). A large gap means the eval-time
statistics, not the per-domain scale and shift, cost the accuracy. Since the fix (STAR's epoch-end exact
statistics, model key ``pn_stats_rows``) this script trains with ``pn_stats_rows: 0``, the old moving
average, so it still reproduces the diagnosis (benchmarks/results/star_pn_stats.txt).

    python benchmarks/star_pn_stats.py --rows 100000 --epochs 3 --seeds 0 1
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from study_common import delong_auc_var, load_study_data

from dynarec.metrics import predict_table
from dynarec.nn.star import PartitionedNorm
from dynarec.train.run import train_model


def refresh_stats(model, table, batch_size: int = 65536) -> int:
    """Set every PartitionedNorm's running mean / var to the exact per-domain statistics of its input over
    ``table`` (the model in eval mode) -> how many PN layers were refreshed."""
    pns = [m for m in model.modules() if isinstance(m, PartitionedNorm)]
    acc = {id(p): [] for p in pns}
    hooks = [p.register_forward_pre_hook(lambda mod, args: acc[id(mod)].append((args[0].detach(), args[1])))
             for p in pns]
    predict_table(model, table, batch_size)
    for h in hooks:
        h.remove()
    for p in pns:
        x = torch.cat([a for a, _ in acc[id(p)]])
        d = torch.cat([b for _, b in acc[id(p)]])
        for k in torch.unique(d).tolist():
            xs = x[d == k]
            if len(xs) >= 2:
                p.running_mean[k] = xs.mean(0)
                p.running_var[k] = xs.var(0)
    return len(pns)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--domain", default="d2")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    schema, tables, _ = load_study_data("synthetic", 0, a.rows)
    test = tables["test"]
    mask = (test.domain == list(schema.domain_values).index(a.domain) + 1).numpy()
    y = test.labels["click"].double().numpy()
    for s in a.seeds:
        r = train_model("star", schema, tables, {"pn_stats_rows": 0}, {"epochs": a.epochs, "progress": False}, seed=s)
        before = np.asarray(predict_table(r.model, test)["click"])
        n = refresh_stats(r.model, tables["train"])
        after = np.asarray(predict_table(r.model, test)["click"])
        print(f"seed {s}: {a.domain} AUC with the moving PN statistics {delong_auc_var(y[mask], before[mask])[0]:.4f}"
              f", with recomputed statistics ({n} PN layers) {delong_auc_var(y[mask], after[mask])[0]:.4f}; all "
              f"domains {delong_auc_var(y, before)[0]:.4f} -> {delong_auc_var(y, after)[0]:.4f}", flush=True)


if __name__ == "__main__":
    main()
