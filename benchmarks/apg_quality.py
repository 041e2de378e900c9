"""APG quality evidence: backbone vs apg_<backbone> per domain, the v1..v5 ablation, the condition designs.

Each run appends one JSON line to ``--out``; ``--report`` turns the file into markdown tables
(mean ± std over seeds of test AUC overall and per domain, first task).

  .venv/bin/python benchmarks/apg_quality.py --part backbones --data synthetic --rows 60000 --seeds 0 1 2
  .venv/bin/python benchmarks/apg_quality.py --part ablation --data synthetic --rows 60000 --seeds 0 1 2
  .venv/bin/python benchmarks/apg_quality.py --part conditions --data synthetic --rows 60000 --seeds 0 1
  .venv/bin/python benchmarks/apg_quality.py --part backbones --data movielens --seeds 0 1 2
  .venv/bin/python benchmarks/apg_quality.py --report runs/apg_quality.jsonl
"""
from __future__ import annotations

import argparse
import os
import json
import statistics
import time
from pathlib import Path

import torch

BASE = {"hidden": [128, 64]}
APG = {"rank_k": 32, "overparam_p": 128, "hypernet_hidden": [64]}
CONDITIONS = {
    "group-wise(domain)": {},
    "group-wise(user)": {"condition_groups": ["user"]},
    "mix-wise input concat(domain,user,item)": {"condition_mode": "mix-wise", "condition_groups": ["domain", "user", "item"]},
    "mix-wise input attention(domain,user,item)": {"condition_mode": "mix-wise", "condition_groups": ["domain", "user", "item"],
                                                   "aggregation": "attention"},
    "mix-wise output mean(domain,user,item)": {"condition_mode": "mix-wise", "condition_groups": ["domain", "user", "item"],
                                               "aggregation": "mean", "aggregate_at": "output"},
    "self-wise": {"condition_mode": "self-wise"},
}
SHARED = Path(os.environ.get("DYNAREC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load(data: str, rows: int, seed: int):
    if data == "synthetic":
        from dynarec.data.prepare import synthetic_tables

        schema, tables, _ = synthetic_tables(rows, seed=0, split_seed=0)
        return schema, tables
    from dynarec.data.prepare import prepare_table
    from dynarec.datasets import load_dataset

    if data == "movielens":
        t, schema = load_dataset("movielens", SHARED / "movielens/ml-100k")
    elif data == "douban":
        t, schema = load_dataset("douban", SHARED / "douban/diffmsr")
    else:
        raise SystemExit(f"unknown data {data}")
    return schema, prepare_table(t, schema, None, "random", seed=0)


def runs(part: str):
    if part == "backbones":
        for bb in ("dnn", "deepfm", "dcn"):
            yield bb, bb, dict(BASE)
            yield f"apg_{bb}", f"apg_{bb}", {**BASE, **APG}
    elif part == "ablation":
        yield "dnn", "dnn", dict(BASE)
        for v in ("v1", "v2", "v3", "v4", "v5"):
            yield f"apg_dnn {v}", "apg_dnn", {**BASE, **APG, "version": v}
    elif part == "conditions":
        yield "dnn", "dnn", dict(BASE)
        for label, p in CONDITIONS.items():
            yield f"apg_dnn {label}", "apg_dnn", {**BASE, **APG, **p}
    else:
        raise SystemExit(f"unknown part {part}")


def main_run(a):
    from dynarec.train.run import train_model

    torch.set_num_threads(a.threads)
    schema, tables = load(a.data, a.rows, 0)
    trainer = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "patience": 1, "progress": False}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        for label, name, params in runs(a.part):
            if a.only and label not in a.only:
                continue
            t0 = time.perf_counter()
            res = train_model(name, schema, tables, params, trainer, seed=seed)
            rec = {"part": a.part, "data": a.data, "rows": len(tables["train"]), "label": label, "model": name,
                   "params": params, "seed": seed, "auc": res.metrics["auc"], "logloss": res.metrics.get("logloss"),
                   "seconds": round(time.perf_counter() - t0, 1), "epochs": len(res.history.epochs)}
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            task = next(iter(rec["auc"]))
            print(f"{a.data} {label} seed={seed} auc[{task}]={rec['auc'][task]['all']:.4f} ({rec['seconds']}s)", flush=True)


def oracle(rows: int) -> dict:
    """AUC of the true click probability on the synthetic test split (the Bayes-optimal ranking)."""
    from dynarec.data.prepare import synthetic_tables
    from dynarec.metrics import auc

    schema, tables, truth = synthetic_tables(rows, seed=0, split_seed=0)
    t = tables["test"]
    y, p, d = t.labels["click"].numpy(), truth["test"]["p_click"], t.domain.numpy()
    names = ["unknown"] + list(schema.domain_values)
    out = {"all": auc(y, p)}
    for k in sorted(set(d.tolist())):
        out[f"domain={names[k]}"] = auc(y[d == k], p[d == k])
    return out


def report(path: str):
    recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    last = {(r["data"], r["rows"], r["part"], r["label"], r["seed"]): r for r in recs}  # a rerun replaces a run
    recs = list(last.values())
    # the backbones part's dnn / apg_dnn runs (same data, params and seeds) are the ablation's dnn and v5 rows
    # and the conditions' dnn and group-wise(domain) rows (APG's defaults are v5, group-wise on the domain)
    alias = {"ablation": {"dnn": "dnn", "apg_dnn": "apg_dnn v5"},
             "conditions": {"dnn": "dnn", "apg_dnn": "apg_dnn group-wise(domain)"}}
    for part, names in alias.items():
        have = {(r["data"], r["rows"], r["label"], r["seed"]) for r in recs if r["part"] == part}
        seeds = {(r["data"], r["rows"], r["seed"]) for r in recs if r["part"] == part}
        for r in [r for r in recs if r["part"] == "backbones" and r["label"] in names]:
            key = (r["data"], r["rows"], names[r["label"]], r["seed"])
            if (r["data"], r["rows"], r["seed"]) in seeds and key not in have:
                recs.append({**r, "part": part, "label": names[r["label"]]})
    order = {"backbones": 0, "ablation": 1, "conditions": 2}
    recs.sort(key=lambda r: (r["data"], order.get(r["part"], 9)))
    for rows in sorted({r["rows"] for r in recs if r["data"] == "synthetic"}):
        try:
            o = oracle(round(rows / 0.8))
        except Exception:  # noqa: BLE001 - the oracle row is optional
            continue
        for part in sorted({r["part"] for r in recs if r["data"] == "synthetic" and r["rows"] == rows}):
            recs.append({"part": part, "data": "synthetic", "rows": rows, "label": "oracle (true p_click)",
                         "seed": 0, "auc": {"click": o}, "seconds": 0})
    groups: dict[tuple, list] = {}
    for r in recs:
        groups.setdefault((r["data"], r["part"]), []).append(r)
    for (data, part), rs in groups.items():
        task = next(iter(rs[0]["auc"]))
        cols = list(rs[0]["auc"][task])
        print(f"\n### {data} — {part} (test AUC ×100 of `{task}`, mean ± std over seeds; train rows {rs[0]['rows']})\n")
        print("| model | seeds | " + " | ".join(cols) + " | s/run |")
        print("|---|---|" + "---|" * len(cols) + "---|")
        labels = list(dict.fromkeys(r["label"] for r in rs))
        rank = lambda lab: 2 if lab.startswith("oracle") else (1 if lab.startswith("apg") else 0)  # noqa: E731
        labels.sort(key=lambda lab: (rank(lab), lab if part != "backbones" else ""))
        base_label = next((lab for lab in labels if not lab.startswith("apg")), None)
        for lab in labels:
            sel = [r for r in rs if r["label"] == lab]
            cells = []
            for c in cols:
                v = [100 * r["auc"][task][c] for r in sel if c in r["auc"][task]]
                m = statistics.mean(v)
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{m:.2f} ± {sd:.2f}")
            secs = statistics.mean(r["seconds"] for r in sel)
            print(f"| {lab} | {len(sel)} | " + " | ".join(cells) + f" | {secs:.0f} |")
        if part == "backbones":
            print("\nΔ (apg − backbone), mean over the seeds both have, AUC points:\n")
            print("| backbone | " + " | ".join(cols) + " |")
            print("|---|" + "---|" * len(cols))
            for lab in labels:
                if lab.startswith("apg"):
                    continue
                common = ({r["seed"] for r in rs if r["label"] == lab}
                          & {r["seed"] for r in rs if r["label"] == f"apg_{lab}"})
                b = [r for r in rs if r["label"] == lab and r["seed"] in common]
                x = [r for r in rs if r["label"] == f"apg_{lab}" and r["seed"] in common]
                if not x:
                    continue
                cells = []
                for c in cols:
                    mb = statistics.mean(100 * r["auc"][task][c] for r in b if c in r["auc"][task])
                    mx = statistics.mean(100 * r["auc"][task][c] for r in x if c in r["auc"][task])
                    cells.append(f"{mx - mb:+.2f}")
                print(f"| {lab} | " + " | ".join(cells) + " |")
        del base_label


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="backbones", choices=["backbones", "ablation", "conditions"])
    ap.add_argument("--data", default="synthetic", choices=["synthetic", "movielens", "douban"])
    ap.add_argument("--rows", type=int, default=60000, help="synthetic rows (before the 80/10/10 split)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=[], help="run only these labels")
    ap.add_argument("--out", default="runs/apg_quality.jsonl")
    ap.add_argument("--report", default=None, help="print markdown tables from a results file and exit")
    a = ap.parse_args()
    if a.report:
        report(a.report)
    else:
        main_run(a)


if __name__ == "__main__":
    main()
