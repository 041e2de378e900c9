"""Per-task, per-domain AUC of the multi-task expert models (issue 6 evidence).

    .venv/bin/python benchmarks/mtl_quality.py --data synthetic --rows 60000 --epochs 2 --seeds 0 1 2 \
        --out benchmarks/results/mtl_quality_synthetic.json
    .venv/bin/python benchmarks/mtl_quality.py --data movielens --epochs 2 --seeds 0 1 2 \
        --out benchmarks/results/mtl_quality_movielens.json

Variants: ``shared_bottom`` (reference), ``mmoe`` (expert dropout 0.1, the default), ``mmoe_nodrop``
(expert dropout 0), ``ple`` (2 CGC levels, 1 specific + 1 shared expert), ``sparse_moe`` (8 experts, top-2,
balance weight 1e-2), ``mmoe_uw`` (mmoe + Kendall uncertainty weighting). One width budget: experts /
bottom [64, 32], towers [32], 16-d embeddings. The data (world + split) is fixed by ``--data-seed``;
``--seeds`` are the model / training seeds. Results are appended to ``--out`` after every run (a rerun skips
finished runs) and a markdown table (mean ± std over seeds) is printed, with the gate usage of the
MMoE variants (mean normalised gate entropy and how many task gates are polarised).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "shared_bottom": ("shared_bottom", {"hidden": [64, 32], "tower_hidden": [32]}, "equal"),
    "mmoe": ("mmoe", {"hidden": [64, 32], "tower_hidden": [32], "expert_dropout": 0.1}, "equal"),
    "mmoe_nodrop": ("mmoe", {"hidden": [64, 32], "tower_hidden": [32], "expert_dropout": 0.0}, "equal"),
    "ple": ("ple", {"hidden": [64, 32], "tower_hidden": [32]}, "equal"),
    "ple_1level": ("ple", {"hidden": [64, 32], "tower_hidden": [32], "levels": 1}, "equal"),
    "sparse_moe": ("sparse_moe", {"hidden": [64, 32], "tower_hidden": [32]}, "equal"),
    "mmoe_uw": ("mmoe", {"hidden": [64, 32], "tower_hidden": [32], "expert_dropout": 0.1}, "uncertainty"),
}
COMMON = {"embed_dim": 16}
ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-100k"


def load(data: str, rows: int, data_seed: int):
    from dynarec.data.prepare import prepare_table, synthetic_tables

    if data == "synthetic":
        schema, tables, _ = synthetic_tables(rows, seed=data_seed)
        return schema, tables
    from dynarec.datasets import load_dataset

    t, schema = load_dataset("movielens", ML100K, tasks="like,love", domain="age")
    return schema, prepare_table(t, schema, split="random", seed=data_seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["synthetic", "movielens"], default="synthetic")
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/mtl_quality_synthetic.json")
    a = ap.parse_args(argv)

    import torch

    from dynarec.train.run import train_model

    torch.set_num_threads(a.threads)
    schema, tables = load(a.data, a.rows, a.data_seed)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(out.read_text()) if out.exists() else {}
    test = tables["test"]
    counts = {f"domain={n}": int((test.domain == d).sum()) for d, n in enumerate(schema.domain_values, start=1)}
    res["_meta"] = {"data": a.data, "rows": len(tables["train"]) + len(tables["valid"]) + len(test),
                    "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "data_seed": a.data_seed,
                    "test_rows": counts,
                    "test_positive_rate": {t: float(test.labels[t].mean()) for t in schema.task_names}}
    trainer = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "patience": 1, "progress": False,
               "monitor": f"auc:{schema.task_names[0]}"}
    for v in a.variants:
        name, params, weighting = VARIANTS[v]
        for s in a.seeds:
            key = f"{v}/seed={s}"
            if key in res:
                continue
            t0 = time.perf_counter()
            r = train_model(name, schema, tables, {**COMMON, **params}, trainer, seed=s, task_weighting=weighting)
            entry = {"auc": r.metrics["auc"], "logloss": r.metrics["logloss"], "seconds": time.perf_counter() - t0,
                     "train_rows_per_s": r.train_rows_per_s}
            if hasattr(r.model, "gate_usage") and name == "mmoe":
                u = r.model.gate_usage(test)
                entry["gate_entropy"] = float(np.mean([x["entropy"] for x in u.values()]))
                entry["gates_polarised"] = int(sum(x["polarised"] for x in u.values()))
                entry["gate_usage"] = u
            res[key] = entry
            out.write_text(json.dumps(res, indent=1))
            print(f"{key}: auc {json.dumps({t: round(x['all'], 4) for t, x in entry['auc'].items()})} "
                  f"({entry['seconds']:.0f}s)", flush=True)
    print(table(res, schema.task_names))


def table(res: dict, tasks: list[str]) -> str:
    meta = res["_meta"]
    cols = ["all"] + list(meta["test_rows"])
    lines = []
    for t in tasks:
        lines.append(f"\n**{t}** AUC (test; mean ± std over seeds)\n")
        lines.append("| variant | " + " | ".join(f"{c} (n={meta['test_rows'].get(c, sum(meta['test_rows'].values()))})"
                                                 for c in cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        variants = sorted({k.split("/")[0] for k in res if not k.startswith("_")}, key=list(VARIANTS).index)
        for v in variants:
            runs = [x for k, x in res.items() if k.split("/")[0] == v]
            cells = []
            for c in cols:
                vals = [x["auc"][t].get(c) for x in runs if x["auc"][t].get(c) is not None]
                cells.append(f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if vals else "–")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines.append("\n| variant | mean gate entropy | polarised task gates (of runs × tasks) | s/run |")
    lines.append("|---|---|---|---|")
    for v in sorted({k.split("/")[0] for k in res if not k.startswith("_")}, key=list(VARIANTS).index):
        runs = [x for k, x in res.items() if k.split("/")[0] == v]
        ent = [x["gate_entropy"] for x in runs if "gate_entropy" in x]
        pol = [x["gates_polarised"] for x in runs if "gates_polarised" in x]
        sec = np.mean([x["seconds"] for x in runs])
        lines.append(f"| {v} | {np.mean(ent):.3f} | {sum(pol)} / {len(pol) * len(tasks)} | {sec:.0f} |" if ent
                     else f"| {v} | – | – | {sec:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
