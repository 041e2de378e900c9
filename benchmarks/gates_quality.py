"""Per-domain click AUC of static vs gated models on the built-in synthetic data (issue 3 evidence).

    .venv/bin/python benchmarks/gates_quality.py --rows 120000 --epochs 3 --seeds 0 1 2 \
        --out benchmarks/results/gates_quality.json

The synthetic data's domains have different true weights (smaller domains depart further from the shared
ones, see dynarec/data/synthetic.py), so a static model that learns mostly from the big domains should
underfit the small ones. The data (world + split) is fixed by ``--data-seed``; ``--seeds`` are the model /
training seeds. Results are appended to ``--out`` after every run (a rerun skips finished runs) and a
markdown table (mean ± std over seeds, plus the Bayes AUC of the true p_click) is printed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

MODELS = ["dnn", "shared_bottom", "mmoe", "ppnet", "epnet", "pepnet", "poso"]
# one width budget for all: a [128, 64] MLP (bottom / experts / towers of PEPNet), 16-d embeddings
COMMON = {"embed_dim": 16}
PARAMS = {
    "dnn": {"hidden": [128, 64]},
    "shared_bottom": {"hidden": [128, 64], "tower_hidden": [32]},
    "mmoe": {"hidden": [128, 64], "tower_hidden": [32]},
    "ppnet": {"hidden": [128, 64]},
    "epnet": {"hidden": [128, 64]},
    "pepnet": {"tower_hidden": [128, 64]},
    "poso": {"hidden": [128, 64]},
    "lhuc": {"hidden": [128, 64]},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=120_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/gates_quality.json")
    ap.add_argument("--extra-params", default="{}", help="JSON merged into every model's params (a variant)")
    ap.add_argument("--tag", default="", help="variant tag: results are stored as NAME[TAG]/seed=S")
    a = ap.parse_args(argv)

    import torch

    from dynarec.data.prepare import synthetic_tables
    from dynarec.metrics import auc
    from dynarec.train.run import train_model

    torch.set_num_threads(a.threads)
    schema, tables, truth = synthetic_tables(a.rows, seed=a.data_seed)
    test = tables["test"]
    dom = test.domain.numpy()
    y = test.labels["click"].numpy()
    p = truth["test"]["p_click"]
    bayes = {"all": auc(y, p)}
    for d, name in enumerate(schema.domain_values, start=1):
        m = dom == d
        bayes[f"domain={name}"] = auc(y[m], p[m])
    counts = {f"domain={n}": int((dom == d).sum()) for d, n in enumerate(schema.domain_values, start=1)}

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(out.read_text()) if out.exists() else {}
    res["_meta"] = {"rows": a.rows, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
                    "data_seed": a.data_seed, "bayes_auc_click": bayes, "test_rows": counts}
    trainer = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "patience": 1, "progress": False,
               "monitor": "auc:click"}
    extra = json.loads(a.extra_params)
    for name in a.models:
        label = f"{name}[{a.tag}]" if a.tag else name
        for s in a.seeds:
            key = f"{label}/seed={s}"
            if key in res:
                continue
            t0 = time.perf_counter()
            r = train_model(name, schema, tables, {**COMMON, **PARAMS.get(name, {}), **extra}, trainer, seed=s)
            res[key] = {"auc_click": r.metrics["auc"]["click"], "auc_conversion": r.metrics["auc"]["conversion"],
                        "seconds": time.perf_counter() - t0, "best_epoch": r.history.best_epoch}
            out.write_text(json.dumps(res, indent=1))
            print(f"{key}: click AUC {r.metrics['auc']['click']['all']:.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    print(table(res, sorted({k.split("/seed=")[0] for k in res if "/seed=" in k},
                            key=lambda r: (MODELS.index(r.split("[")[0]) if r.split("[")[0] in MODELS else 99, r))))


def table(res: dict, models: list[str]) -> str:
    meta = res["_meta"]
    cols = ["all"] + list(meta["test_rows"])
    head = "| model | " + " | ".join(c.replace("domain=", "") for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name in models:
        runs = [v for k, v in res.items() if k.startswith(name + "/seed=")]
        if not runs:
            continue
        cells = []
        for c in cols:
            v = np.array([r["auc_click"][c] for r in runs], dtype=float)
            cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}")
        lines.append(f"| {name} (n={len(runs)}) | " + " | ".join(cells) + " |")
    lines.append("| Bayes (true p_click) | " + " | ".join(f"{meta['bayes_auc_click'][c]:.4f}" for c in cols) + " |")
    lines.append("| test rows | " + " | ".join(str(meta["test_rows"].get(c, sum(meta["test_rows"].values())))
                                              for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
