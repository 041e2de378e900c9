"""Shared helpers of the evidence studies (issue 29): ``sparse_domains.py`` and ``cold_users.py``.

* DeLong's variance of a ROC AUC, alone and paired (the same test rows scored by two models), by the
  structural components (DeLong, DeLong & Clarke-Pearson 1988) computed with mid-ranks (Sun & Xu 2014).
* ``downsample_domain``: keep a share of ONE domain's training rows, every other row untouched.
* ``user_buckets``: the bucket of each test row's user by that user's training interactions.
* ``load_study_data``: the datasets the studies run on, prepared once with a fixed split.
* ``summarise``: seed-averaged AUC / gain over dnn with an interval (test sampling + seed spread).

Example::

    >>> import numpy as np
    >>> auc, var = delong_auc_var(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    >>> round(auc, 2)
    0.75
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

Z95 = 1.959963984540054
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BUCKETS = ((0, 5), (6, 20), (21, 100), (101, None))  # training interactions per user, bounds inclusive
ALL_MODELS = ("dnn", "shared_bottom", "mmoe", "star", "m2m", "pepnet", "epnet", "apg_dnn", "poso")


# ---------------------------------------------------------------------------------------------- DeLong
def _midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their mean rank."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    end = np.cumsum(counts)  # 1-based rank of the last row of each distinct value
    return ((end - counts + 1 + end) / 2.0)[inv.reshape(-1)]


def _components(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: V10[i] = P(score of positive i > a random negative) (ties 1/2),
    V01[j] = P(a random positive > negative j). AUC = mean(V10) = mean(V01)."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, np.float64)
    pos, neg = p[y], p[~y]
    m, n = len(pos), len(neg)
    tz = _midrank(np.concatenate([pos, neg]))
    v10 = (tz[:m] - _midrank(pos)) / n
    v01 = 1.0 - (tz[m:] - _midrank(neg)) / m
    return v10, v01


def delong_auc_var(y, p) -> tuple[float, float]:
    """(AUC, DeLong variance of it); (nan, nan) without both classes or with a single row of a class."""
    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return float("nan"), float("nan")
    v10, v01 = _components(y, p)
    return float(v10.mean()), float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)


def delong_paired(y, p1, p2) -> tuple[float, float, float]:
    """(AUC of p1, AUC of p2, DeLong variance of AUC(p1) - AUC(p2)) on the same rows."""
    y = np.asarray(y).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return float("nan"), float("nan"), float("nan")
    a10, a01 = _components(y, p1)
    b10, b01 = _components(y, p2)
    d10, d01 = a10 - b10, a01 - b01
    return float(a10.mean()), float(b10.mean()), float(d10.var(ddof=1) / m + d01.var(ddof=1) / n)


def interval(mean: float, var: float) -> tuple[float, float]:
    """The normal 95 % interval mean ± 1.96 sqrt(var)."""
    h = Z95 * math.sqrt(var) if var == var and var >= 0 else float("nan")
    return mean - h, mean + h


# ---------------------------------------------------------------------------------------------- data cuts
def downsample_domain(table, domain_id: int, frac: float, seed: int):
    """``table`` with only ``round(frac * n_d)`` (at least 1) of its rows of domain ``domain_id`` (chosen
    at random by ``seed``); every other row kept, in its order. -> (TensorTable, kept rows of the domain)."""
    import torch

    dom = table.domain.numpy()
    rows = np.flatnonzero(dom == domain_id)
    if not 0 < frac <= 1:
        raise ValueError(f"fraction {frac}: must be in (0, 1]")
    k = len(rows) if frac >= 1 else max(1, int(round(frac * len(rows))))
    keep = np.random.default_rng(seed).choice(rows, size=k, replace=False) if k < len(rows) else rows
    mask = dom != domain_id
    mask[keep] = True
    return table.subset(torch.from_numpy(np.flatnonzero(mask))), k


def cut_split(tables: dict, domain_id: int, frac: float, seed: int) -> tuple[dict, int]:
    """The splits with ``frac`` of domain ``domain_id``'s TRAINING rows kept; valid and test are the very
    same tables. -> (splits, kept training rows of the domain)."""
    train, kept = downsample_domain(tables["train"], domain_id, frac, seed)
    return {**tables, "train": train}, kept


def user_buckets(train_user: np.ndarray, test_user: np.ndarray, buckets=BUCKETS) -> np.ndarray:
    """Bucket index of each test row: the bucket holding its user's number of TRAINING rows."""
    train_user = np.asarray(train_user, np.int64)
    test_user = np.asarray(test_user, np.int64)
    size = int(max(train_user.max(initial=-1), test_user.max(initial=-1))) + 1
    counts = np.bincount(train_user, minlength=size)[test_user]
    out = np.full(len(test_user), -1, np.int64)
    for b, (lo, hi) in enumerate(buckets):
        out[(counts >= lo) & (counts <= (np.inf if hi is None else hi))] = b
    return out


def bucket_name(b: tuple[int, int | None]) -> str:
    return f">{b[0] - 1}" if b[1] is None else f"{b[0]}-{b[1]}"


# ---------------------------------------------------------------------------------------------- datasets
DATASETS = {
    "ml100k": ("movielens", "movielens/ml-100k", {"tasks": "like", "domain": "age"}),
    "douban": ("douban", "douban/diffmsr", {}),
    "douban_gadtcdr": ("douban", "douban/gadtcdr", {"layout": "gadtcdr", "domains": "book,music"}),
}


def load_study_data(name: str, split_seed: int = 0, synthetic_rows: int = 100_000):
    """-> (schema, {split: TensorTable}, truth per split or None). ``synthetic``: the built-in generator
    (a known per-domain truth); the others: real raw files under ``../shared/data`` split at random."""
    from dynarec.data.prepare import prepare_table, synthetic_tables

    if name == "synthetic":
        return synthetic_tables(synthetic_rows, seed=split_seed)
    from dynarec.datasets import load_dataset

    loader, sub, opts = DATASETS[name]
    raw = DATA / sub
    if not raw.exists():
        fail(f"{name}: raw data folder {raw} not found")
    t, schema = load_dataset(loader, raw, **opts)
    return schema, prepare_table(t, schema, split="random", seed=split_seed), None


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"star"`` -> ("star", {}) (the default keys); ``"star+partitioned_norm=false"`` -> a non-default
    variant, for finding out why a model loses (values are JSON, else strings)."""
    import json

    name, *kvs = spec.split("+")
    params = {}
    for kv in kvs:
        k, sep, v = kv.partition("=")
        if not sep:
            fail(f"model variant '{spec}': '{kv}' is not key=value")
        try:
            params[k] = json.loads(v)
        except ValueError:
            params[k] = v
    return name, params


def train_predict(model: str, schema, tables, trainer: dict, seed: int, task: str) -> np.ndarray:
    """Train ``model`` (a name: its DEFAULT keys; or a :func:`parse_variant` spec) with early stopping on
    valid -> test predictions of ``task``."""
    from dynarec.metrics import predict_table
    from dynarec.train.run import train_model

    name, params = parse_variant(model)
    r = train_model(name, schema, tables, params, dict(trainer), seed=seed)
    return np.asarray(predict_table(r.model, tables["test"])[task], np.float64)


def score_slices(y: np.ndarray, preds: dict[str, np.ndarray], slices: dict[str, np.ndarray],
                 ref: str = "dnn") -> dict:
    """Per model and slice (a boolean row mask): AUC, its DeLong variance, rows, positives and the paired
    difference to ``ref`` with its variance."""
    out = {}
    for m, p in preds.items():
        out[m] = {}
        for s, mask in slices.items():
            a, v = delong_auc_var(y[mask], p[mask])
            e = {"auc": a, "var": v, "n": int(mask.sum()), "pos": int(y[mask].sum())}
            if ref in preds and m != ref:
                _, _, dv = delong_paired(y[mask], p[mask], preds[ref][mask])
                e["gain"], e["gain_var"] = a - delong_auc_var(y[mask], preds[ref][mask])[0], dv
            out[m][s] = e
    return out


def summarise(entries: list[dict], key: str = "auc", var_key: str = "var") -> dict:
    """Seed average of ``key`` with a 95 % interval whose variance is the mean DeLong variance (test rows:
    the same for every seed, so it does not shrink with seeds) plus the seed variance of the mean."""
    vals = np.array([e[key] for e in entries if e.get(key) == e.get(key) and key in e], np.float64)
    if not len(vals):
        return {"mean": None, "lo": None, "hi": None, "seeds": 0}
    dv = np.nanmean([e[var_key] for e in entries if key in e])
    sv = vals.var(ddof=1) / len(vals) if len(vals) > 1 else 0.0
    lo, hi = interval(float(vals.mean()), float(dv + sv))
    return {"mean": float(vals.mean()), "lo": lo, "hi": hi, "seed_std": float(vals.std()), "seeds": len(vals)}


def fail(msg: str):
    """Bad input: one stderr line, exit code 2."""
    import sys

    print(msg, file=sys.stderr)
    raise SystemExit(2)


def read_results(stem: str) -> dict:
    """``STEM.json`` of an earlier run (``--report-only``); a missing file is one stderr line and exit 2."""
    import json

    path = Path(stem + ".json")
    if not path.exists():
        fail(f"--report-only: no results file {path} (run the study first)")
    return json.loads(path.read_text())


def fmt(s: dict, points: bool = False) -> str:
    """'0.7712 [0.7610, 0.7814]' (AUC) or '+0.31 [-0.20, +0.82]' (gain in AUC points, x100)."""
    if s["mean"] is None:
        return "–"
    if points:
        return f"{100 * s['mean']:+.2f} [{100 * s['lo']:+.2f}, {100 * s['hi']:+.2f}]"
    return f"{s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]"


def study_parser(doc: str, out: str):
    """The flags both studies take (``--datasets``, ``--models``, ``--seeds``, ``--epochs``, ``--task``,
    ``--data-seed``, ``--synthetic-rows``, ``--threads``, ``--out``, ``--report-only``); a study adds its own."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml100k"], choices=["ml100k", "douban", "douban_gadtcdr",
                                                                           "synthetic"])
    ap.add_argument("--models", nargs="+", default=list(ALL_MODELS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, help="trainer epochs (default: the trainer's default)")
    ap.add_argument("--task", help="the task scored (default: the first)")
    ap.add_argument("--data-seed", type=int, default=0, help="the train / valid / test split (and synthetic world)")
    ap.add_argument("--synthetic-rows", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=out, help="path stem of .json / .md / .png")
    ap.add_argument("--report-only", action="store_true", help="rebuild .md / .png from OUT.json")
    return ap


def run_study(a, run, report, plot) -> None:
    """Run (or with ``--report-only`` re-read) a study, write OUT.md and OUT.png, print the markdown."""
    res = read_results(a.out) if a.report_only else run(a)
    md = report(res)
    Path(a.out + ".md").write_text(md + "\n")
    plot(res, Path(a.out + ".png"))
    print(md)


def start(a):
    """(OUT.json path, the results so far (a run adds to them), models with dnn first, trainer keys) of a
    study's parsed flags ``a``; sets the torch threads."""
    import json

    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.out + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(out.read_text()) if out.exists() else {"runs": {}, "meta": {}}
    models = ["dnn"] + [m for m in a.models if m != "dnn"]
    return out, res, models, {"progress": False} | ({"epochs": a.epochs} if a.epochs else {})
