"""Shallow position-bias tower: ranking quality of the main tower at a fixed position (issue 6 evidence).

    .venv/bin/python benchmarks/position_debias.py --seeds 0 1 2

Logged data with selection bias: items have a true relevance r and an independent "promotion" score q
that the logging policy used to place them (high q -> position 1). Clicks: σ(r − 1 + β_pos), β = (+1.5, 0,
−1.5) for positions 1..3. A model that cannot see the position learns r + E[β | item], i.e. it ranks by the
promotion score too. The shallow tower explains β, so the main tower should learn r. Evaluation: a fresh
sample where every item is shown at position 2 (AUC against clicks, and Spearman correlation with the true
click probability). Also prints the click rate by position of the real Open Bandit sample.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dynarec.data.synthetic import position_biased

OBD = Path(__file__).resolve().parents[2] / "shared" / "data" / "obd"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args(argv)

    import torch

    from dynarec.data.encode import Encoders
    from dynarec.data.prepare import to_tensor_table
    from dynarec.data.schema import Feature, Schema, Task
    from dynarec.metrics import auc
    from dynarec.train.run import train_model

    torch.set_num_threads(1)
    rows = []
    for seed in a.seeds:
        train_raw, _ = position_biased(a.rows, 10 + seed)
        valid_raw, _ = position_biased(a.rows // 5, 100 + seed)
        test_raw, p_test = position_biased(20000, 1000 + seed, fixed_position=2)
        for name in ("mmoe", "ple"):
            for tower in (False, True):
                feats = [Feature("domain", "sparse", "domain"), Feature("item_id", "sparse", "item")]
                if tower:
                    feats.append(Feature("position", "sparse", "position"))
                s = Schema(features=feats, tasks=[Task("click")], domain="domain")
                enc = Encoders(s).fit(train_raw, "train")
                tabs = {k: to_tensor_table(s, enc.transform(t, k)) for k, t in
                        (("train", train_raw), ("valid", valid_raw), ("test", test_raw))}
                params = {"embed_dim": 8, "hidden": [32], "tower_hidden": [16], "position_tower": tower}
                r = train_model(name, s, tabs, params, {"epochs": a.epochs, "batch_size": 256, "lr": 1e-2,
                                                         "patience": 1, "progress": False}, seed=seed)
                pred = r.model.predict(tabs["test"].full())["click"].numpy()
                y = tabs["test"].labels["click"].numpy()
                rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
                rows.append((name, tower, seed, auc(y, pred), float(np.corrcoef(rank(pred), rank(p_test))[0, 1]),
                             auc(y, p_test)))
                print(rows[-1], flush=True)
    print("\n| model | position tower | AUC at position 2 | Spearman(pred, true p) | Bayes AUC |")
    print("|---|---|---|---|---|")
    for name in ("mmoe", "ple"):
        for tower in (False, True):
            sel = [x for x in rows if x[0] == name and x[1] == tower]
            f = lambda i: f"{np.mean([x[i] for x in sel]):.4f} ± {np.std([x[i] for x in sel]):.4f}"  # noqa: E731
            print(f"| {name} | {'yes' if tower else 'no'} | {f(3)} | {f(4)} | {f(5)} |")

    if OBD.exists():
        import pyarrow.csv as pacsv

        print("\nOpen Bandit sample: clicks / impressions by position")
        for pol in ("random", "bts"):
            t = pacsv.read_csv(OBD / pol / "all" / "all.csv")
            pos = np.asarray(t.column("position"))
            c = np.asarray(t.column("click"))
            cells = []
            for k in (1, 2, 3):
                n, m = int((pos == k).sum()), int(c[pos == k].sum())
                se = np.sqrt(m / n * (1 - m / n) / n)
                cells.append(f"pos {k}: {m}/{n} = {m / n:.4f} ± {1.96 * se:.4f}")
            print(f"- {pol}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
