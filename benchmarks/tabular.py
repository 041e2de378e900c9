"""dynarec on a public tabular dataset (UCI Adult census income, issue 13) next to scikit-learn baselines.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/tabular.py --treatments plr --out benchmarks/results/tabular_adult_plr.json

Data: ``benchmarks/data_adult.py`` (48,842 rows, cached). Generic path: a schema with label rules (main task
``income``: ``>50K`` / ``>50K.``; second task ``married`` from marital-status), null token ``?``, domain
``race`` (5 domains, 406 .. 41,762 rows), split ``stratified:income`` 80/10/10 with a fixed split seed.
Numeric columns (age, fnlwgt, education-num, capital-gain, capital-loss, hours-per-week) as ``std``
(z-score), ``log_std`` (log1p on the capital columns, then z-score), ``buckets`` (train quantiles, an
embedded field each), and ``embedded`` (two rows: ``ple``, ``embedding: ple`` with ``--bins`` train-quantile
bins, and ``plr``, ``embedding: plr`` with ``--sigma``, every numeric column z-scored then embedded as a field
of the models' shared embedding path; ``ple`` / ``plr`` also alone).
``plain``: the numeric columns as bare ``kind: dense`` (whatever the schema defaults give: PLR σ = 10 since
issue 27). Recipe (the defaults, docs/benchmarks.md): batch 512, up to 15 epochs, patience 3, PLR σ = 10 (the schema's
default 1.0 underfits these z-scored columns); ``--dropout``, ``--weight-decay``, ``--embedding-optimizer``,
``--embedding-lr``, ``--set KEY=JSON`` (model keys, applied where a model uses them) and ``--log-heavy``
(log1p on the capital columns in any treatment) are the levers measured there.
Models dnn / mmoe / pepnet, model seeds ``--seeds``. Baselines on the same train / test raw rows (``_row``):
HistGradientBoosting (categoricals as categorical features) and LogisticRegression (one-hot + z-scored
numerics), both on the same input columns as the models (marital-status is the second task's label, so
no model sees it; ``hgb_all_columns`` adds it back, for reference). Prints test AUC of ``income`` (mean ±
std over seeds) and train seconds; writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_adult import adult_csv  # noqa: E402

NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
CATEGORICAL = ["workclass", "education", "occupation", "relationship", "sex", "native-country"]
GROUPS = {"age": "user", "sex": "user", "education": "user", "education-num": "user", "relationship": "user",
          "native-country": "user", "occupation": "item", "workclass": "item"}  # the rest: context
HEAVY = ("capital-gain", "capital-loss")
TREATMENTS = ["std", "log_std", "buckets", "embedded"]
MODELS = ["dnn", "mmoe", "pepnet"]


def schema_dict(treatment: str, buckets: int = 20, bins: int | None = None, sigma: float | None = None,
                log_heavy: bool = False) -> dict:
    feats = [{"name": c, "group": GROUPS.get(c, "context")} for c in CATEGORICAL]
    for c in NUMERIC:
        f = {"name": c, "kind": "dense", "group": GROUPS.get(c, "context")}
        if (treatment == "log_std" or log_heavy) and c in HEAVY:
            f["transform"] = "log1p"
        if treatment == "buckets":
            f["buckets"] = buckets
        if treatment not in ("buckets", "plain"):  # explicit: without the key a dense column gets the default
            f["embedding"] = treatment if treatment in ("ple", "plr") else None
        if treatment in ("ple", "plr"):
            opt = {"bins": bins} if treatment == "ple" else {"sigma": sigma}
            f.update({k: v for k, v in opt.items() if v is not None})  # unset: the schema defaults
        feats.append(f)
    return {"read": {"null_values": ["?"]}, "domain": "race", "features": feats,
            "tasks": [{"name": "income", "positive": [">50K", ">50K."]},
                      {"name": "married", "column": "marital-status",
                       "positive": ["Married-civ-spouse", "Married-AF-spouse"]}]}


def prepare(csv: Path, treatment: str, buckets: int, split_seed: int, bins=None, sigma=None, log_heavy=False):
    from dynarec.data.prepare import prepare_file
    from dynarec.data.schema import Schema

    schema = Schema.from_dict(schema_dict(treatment, buckets, bins, sigma, log_heavy), f"adult schema ({treatment})")
    return schema, prepare_file(csv, schema, split="stratified:income", seed=split_seed)


def run_model(name, schema, tables, seed, a) -> dict:
    from dynarec.models.registry import active_params
    from dynarec.models.registry import get_model_info
    from dynarec.train.run import train_model

    keys = {f.name for f in dataclasses.fields(get_model_info(name).config_cls)}
    extra = {k: v for k, v in (a.model_set or []) if k in keys}  # --set keys of other models are skipped
    params = active_params(name, {"embed_dim": a.embed_dim, "hidden": a.hidden, "dropout": a.dropout,
                                  **extra})  # pepnet has no shared MLP
    trainer = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "patience": a.patience,
               "threads": a.threads, "progress": False, "weight_decay": a.weight_decay,
               "embedding_optimizer": a.embedding_optimizer, "embedding_lr": a.embedding_lr}
    t0 = time.perf_counter()
    r = train_model(name, schema, tables, params=params, trainer=trainer, seed=seed)
    return {"auc": r.metrics["auc"]["income"]["all"], "auc_married": r.metrics["auc"]["married"]["all"],
            "auc_by_race": {k: v for k, v in r.metrics["auc"]["income"].items() if k != "all"},
            "train_s": time.perf_counter() - t0, "epochs": len(r.history.epochs),
            "best_epoch": r.history.best_epoch}


def probe(schema, tables, kind: str, seed: int, a) -> dict:
    """Not a dynarec model: a plain MLP on the prepared tables (field embeddings of the sparse columns ⊕
    the numeric columns fed raw (``kind='raw'``), or through ``dynarec.nn.numeric`` PLE-Q / PLR), trained on
    ``income`` only: measures what the numeric embeddings buy before they are wired into the models."""
    import torch
    from torch import nn

    from dynarec.metrics import auc
    from dynarec.nn.numeric import PeriodicEmbedding, PiecewiseLinearEmbedding

    torch.manual_seed(seed)
    tr, d = tables["train"], a.embed_dim
    nf = tr.dense.shape[1]
    if kind == "ple":
        q = torch.quantile(tr.dense, torch.linspace(0, 1, a.buckets + 1), dim=0).T  # [F, buckets + 1]
        num = PiecewiseLinearEmbedding([torch.unique(e) for e in q], d, activation=True)
    elif kind == "plr":
        num = PeriodicEmbedding(nf, d, n_frequencies=16, sigma=a.sigma or 1.0)
    else:
        num = None
    vocab = [f.vocab_size for f in schema.sparse]
    emb = nn.ModuleList([nn.Embedding(v, d) for v in vocab])
    width = len(vocab) * d + (nf * d if num is not None else nf)
    mlp = nn.Sequential(nn.Linear(width, a.hidden[0]), nn.ReLU(), nn.Linear(a.hidden[0], a.hidden[-1]), nn.ReLU(),
                        nn.Linear(a.hidden[-1], 1))
    mods = nn.ModuleList([emb, mlp] + ([num] if num is not None else []))
    opt = torch.optim.Adam(mods.parameters(), lr=a.lr)

    def logit(b):
        x = [e(b.sparse[:, i]) for i, e in enumerate(emb)]
        x.append(num(b.dense).flatten(1) if num is not None else b.dense)
        return mlp(torch.cat(x, 1)).squeeze(1)

    def score(t):
        with torch.no_grad():
            return auc(t.labels["income"].numpy(), torch.cat([logit(b) for b in t.batches(65536)]).numpy())

    t0, best, gen = time.perf_counter(), (-1.0, 0.0), torch.Generator().manual_seed(seed)
    for _ in range(a.epochs):
        mods.train()
        for b in tr.batches(a.batch_size, shuffle=True, generator=gen):
            loss = nn.functional.binary_cross_entropy_with_logits(logit(b), b.labels["income"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        mods.eval()
        v = score(tables["valid"])
        if v > best[0]:
            best = (v, score(tables["test"]))
    return {"auc": float(best[1]), "train_s": time.perf_counter() - t0}


def raw_columns(csv: Path) -> dict[str, np.ndarray]:
    import pyarrow.csv as pc

    t = pc.read_csv(csv, convert_options=pc.ConvertOptions(null_values=["?"], strings_can_be_null=True))
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def baseline_matrices(raw, rows: dict, cats: list[str]):
    """(X_cat ordinal codes fitted on train (-1 -> missing), X_num raw) for train / test rows."""
    out = {}
    codes = {}
    for c in cats:
        vals = raw[c][rows["train"]]
        codes[c] = {v: i for i, v in enumerate(sorted({v for v in vals if v is not None}))}
    for s, idx in rows.items():
        xc = np.array([[codes[c].get(v, -1) if v is not None else -1 for v in raw[c][idx]] for c in cats],
                      dtype=float).T
        xn = np.stack([raw[c][idx].astype(float) for c in NUMERIC], 1)
        out[s] = (xc, xn)
    return out, [len(codes[c]) for c in cats]


def run_baselines(raw, rows, seeds, threads) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from threadpoolctl import threadpool_limits

    y = {s: np.array([v.startswith(">50K") for v in raw["income"][idx]], dtype=int) for s, idx in rows.items()}
    res = {}
    for name, cats in (("hgb", CATEGORICAL), ("hgb_all_columns", CATEGORICAL + ["marital-status"]),
                       ("logreg", CATEGORICAL)):
        m, _ = baseline_matrices(raw, rows, cats)
        runs = []
        for seed in seeds:
            t0 = time.perf_counter()
            with threadpool_limits(threads):
                if name.startswith("hgb"):
                    x = {s: np.concatenate([xc, xn], 1) for s, (xc, xn) in m.items()}
                    for s in x:  # unseen / missing categories -> NaN (HGB's missing bin)
                        x[s][:, :len(cats)][x[s][:, :len(cats)] < 0] = np.nan
                    clf = HistGradientBoostingClassifier(
                        categorical_features=list(range(len(cats))), random_state=seed).fit(x["train"], y["train"])
                else:
                    oh = OneHotEncoder(handle_unknown="ignore").fit(m["train"][0])
                    sc = StandardScaler().fit(m["train"][1])
                    x = {s: np.concatenate([oh.transform(xc).toarray(), sc.transform(xn)], 1)
                         for s, (xc, xn) in m.items()}
                    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(x["train"], y["train"])
            train_s = time.perf_counter() - t0
            runs.append({"auc": float(roc_auc_score(y["test"], clf.predict_proba(x["test"])[:, 1])),
                         "train_s": train_s})
        res[name] = runs
    return res


def _key_value(text: str) -> tuple[str, object]:
    k, sep, v = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=JSON, got {text!r}")
    return k, json.loads(v)


def summary(runs: list[dict]) -> dict:
    a = np.array([r["auc"] for r in runs])
    return {"auc_mean": float(a.mean()), "auc_std": float(a.std()),
            "train_s_mean": float(np.mean([r["train_s"] for r in runs])), "n": len(runs)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--treatments", nargs="+", default=TREATMENTS, choices=TREATMENTS + ["ple", "plr", "plain"],
                    help="embedded = ple and plr")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--buckets", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--embedding-optimizer", default="adagrad", help="trainer.embedding_optimizer (id tables)")
    ap.add_argument("--embedding-lr", type=float, default=0.2)
    ap.add_argument("--set", dest="model_set", type=_key_value, nargs="*", metavar="KEY=JSON",
                    help="extra model keys (applied where the model uses them), e.g. cross_layers=3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--probe", nargs="*", default=[], choices=["raw", "ple", "plr"],
                    help="plain-MLP probes of the numeric embeddings (std-prepared tables, task income)")
    ap.add_argument("--sigma", type=float, default=10.0,
                    help="PLR frequency init std of the plr treatment and probe (the schema's default is 1.0, "
                         "too low for these z-scored columns: docs/benchmarks.md)")
    ap.add_argument("--bins", type=int, default=None, help="PLE bins of the embedded treatment (schema default 16)")
    ap.add_argument("--log-heavy", action="store_true", help="log1p on capital-gain / -loss in every treatment")
    ap.add_argument("--quick", action="store_true", help="one seed, dnn only, std + buckets, 3 epochs")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.models, a.treatments, a.epochs = a.seeds[:1], ["dnn"], ["std", "buckets"], 3
    import torch

    torch.set_num_threads(a.threads)
    csv = adult_csv()
    rows, results = None, {}
    expanded = [t for tr in a.treatments for t in (("ple", "plr") if tr == "embedded" else (tr,))]
    for tr in expanded:
        schema, tables = prepare(csv, tr, a.buckets, a.split_seed, a.bins, a.sigma, a.log_heavy)
        rows = rows or {s: tables[s].row.numpy() for s in ("train", "test")}
        assert all(np.array_equal(rows[s], tables[s].row.numpy()) for s in rows), "split differs by treatment"
        for name in a.models:
            runs = [run_model(name, schema, tables, seed, a) for seed in a.seeds]
            results[f"{name}/{tr}"] = {"runs": runs, **summary(runs)}
            print(f"{name:8s} {tr:9s} auc {results[f'{name}/{tr}']['auc_mean']:.4f} "
                  f"± {results[f'{name}/{tr}']['auc_std']:.4f}", flush=True)
    if a.probe:
        schema, tables = prepare(csv, "std", a.buckets, a.split_seed)
        for kind in a.probe:
            runs = [probe(schema, tables, kind, seed, a) for seed in a.seeds]
            results[f"probe_mlp/{kind}"] = {"runs": runs, **summary(runs)}
            print(f"probe    {kind:9s} auc {results[f'probe_mlp/{kind}']['auc_mean']:.4f}", flush=True)
    if not a.no_baselines:
        if rows is None:
            _, tables = prepare(csv, "std", a.buckets, a.split_seed)
            rows = {s: tables[s].row.numpy() for s in ("train", "test")}
        for name, runs in run_baselines(raw_columns(csv), rows, a.seeds, a.threads).items():
            results[name] = {"runs": runs, **summary(runs)}
    print_table(results)
    if a.out:
        cfg = {k: v for k, v in vars(a).items() if k != "out"}
        Path(a.out).write_text(json.dumps({"data": "uci-adult (48,842 rows)", "split": "stratified:income 0.8/0.1/0.1",
                                           "config": cfg, "results": results}, indent=2))


def print_table(results: dict) -> None:
    print("\n| model | numeric | test AUC income (mean ± std) | train s |\n|---|---|---|---|")
    for k, r in results.items():
        model, _, tr = k.partition("/")
        print(f"| {model} | {tr or '–'} | {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['train_s_mean']:.1f} |")


if __name__ == "__main__":
    main()
