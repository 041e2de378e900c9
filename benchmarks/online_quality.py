"""Progressive AUC per pass of online training (``dynarec online``) on a drifting stream, for
(a) a static vocabulary fitted on the first pass (``online.table: static``), (b) the hashing trick at the same
memory (``hash``), (c) the dynamic table with each eviction score (``dynamic``, lfu / lru / distance_lfu / ttl /
feature), and (d) the dynamic table with the ``pepnet_online`` optimizers from scratch. Every pass is scored
before the model trains on it. Also reported: the AUC on rows whose user or
item id was not in the first pass (ids a static vocabulary never learns; "known": such ids that also appeared
in an earlier pass, which a dynamic table can have learned), on the domain born mid-stream
(synthetic: d6, declared in the stream's schema so it has its own domain id), and for the synthetic stream the
Bayes-optimal AUC from the true probabilities plus the generator's metadata (``stream.yaml``: the measured share
of the click logit carried by the ids, ``--id-share``, and the expected AUC of the id terms alone and of the
logit without them — the ceiling of a model whose ids all read the unknown row).

"Same memory": the dynamic features of every variant get as many rows as the static vocabulary has on the
first pass (``--memory`` scales it), so only the policy differs.

    nice -n 10 .venv/bin/python benchmarks/online_quality.py --stream synthetic --passes 12 --rows-per-pass 20000 \
        --memory 1 --out benchmarks/results/online_quality_synthetic.json
    nice -n 10 .venv/bin/python benchmarks/online_quality.py --stream movielens --passes 10 \
        --out benchmarks/results/online_quality_movielens.json

    nice -n 10 .venv/bin/python benchmarks/online_quality.py --measure-id-share \
        --out benchmarks/results/movielens_id_share.json      # the anchor of the synthetic id share

MovieLens-100K is found at ``../shared/data/movielens/ml-100k`` from the repository root, or under
``$DYNAREC_DATA/movielens/ml-100k``; it is cut into passes of equal time span (``dynarec.datasets.stream_cut``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("lfu", "lru", "distance_lfu", "ttl", "feature")
TRAIN = ["model.embed_dim=16", "model.tower_hidden=[64,32]", "model.gate_emb_dim=8", "trainer.batch_size=512",
         "trainer.threads=1", "trainer.lr=0.001", "trainer.embedding_lr=0.05"]


def ml100k() -> Path:
    base = Path(os.environ["DYNAREC_DATA"]) if "DYNAREC_DATA" in os.environ else ROOT.parent / "shared" / "data"
    return base / "movielens" / "ml-100k"


def make_stream(kind: str, passes: int, rows: int, seed: int, folder: Path, id_share: float | None = None) -> Path:
    if kind == "synthetic":
        from dynarec.data.stream import ID_SHARE, write_stream

        write_stream(folder, passes, rows, seed, id_share=ID_SHARE if id_share is None else id_share)
    else:
        from dynarec.datasets import load_dataset
        from dynarec.datasets.stream_cut import cut_stream

        table, schema = load_dataset("movielens", str(ml100k()))
        cut_stream(table, schema, passes, folder)
    return folder


def movielens_id_share() -> dict:
    """The anchor for the synthetic stream's ``id_share``: an L2 logistic regression (C = 0.3) on one-hots of every
    sparse feature of MovieLens-100K (+ genres multi-hot), trained on the first 80 % of the rows by time; the
    share of its logit's variance (all rows) that the user / item id weights carry, and the test AUC (last 20 %)
    of the same model on the ids alone and on everything but the ids."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from dynarec.datasets import load_dataset
    from dynarec.metrics import auc

    t, s = load_dataset("movielens", str(ml100k()))
    y = np.asarray(t.column(s.tasks[0].name).to_pylist()).astype(int)
    n = len(y)
    order = np.argsort(np.asarray(t.column(s.timestamp).to_pylist()), kind="stable")
    tr, te = order[: int(0.8 * n)], order[int(0.8 * n):]
    blocks = {}
    for f in s.features:
        vals = t.column(f.name).to_pylist()
        if f.kind == "sparse":
            rows, toks = np.arange(n), [str(v) for v in vals]
        elif f.kind == "sequence":
            toks = [str(v) for v in vals]
            split = [x.split("|") if x else [] for x in toks]
            rows, toks = np.repeat(np.arange(n), [len(x) for x in split]), [g for x in split for g in x]
        else:
            continue
        u, inv = np.unique(np.asarray(toks), return_inverse=True)
        blocks[f.name] = sp.csr_matrix((np.ones(len(inv)), (rows, inv.ravel())), shape=(n, len(u)))
    ids = ["user_id", "item_id"]  # the dynamic features of the MovieLens stream (stream_cut)

    def fit(names):
        x = sp.hstack([blocks[c] for c in names]).tocsr()
        m = LogisticRegression(C=0.3, max_iter=3000).fit(x[tr], y[tr])
        return m, x, round(auc(y[te], m.decision_function(x[te])), 4)
    m, x, a_all = fit(list(blocks))
    w, off, id_part = m.coef_.ravel(), 0, np.zeros(n)
    for c, b in blocks.items():
        if c in ids:
            id_part += b @ w[off:off + b.shape[1]]
        off += b.shape[1]
    logit = x @ w
    return {"ids": ids, "features": list(blocks),
            "id_share_of_fitted_logit": round(float(np.var(id_part) / np.var(logit)), 3), "auc_all": a_all,
            "auc_ids_only": fit(ids)[2], "auc_without_ids": fit([c for c in blocks if c not in ids])[2]}


def variants(memory: int, expiry: int) -> dict[str, list[str]]:
    v = {"static": ["online.table=static"], "hash": ["online.table=hash", f"online.max_rows={memory}"]}
    for s in SCORES:
        v[f"dynamic_{s}"] = ["online.table=dynamic", f"online.max_rows={memory}", f"online.score={s}",
                             f"online.expiry_passes={expiry}"] + (["online.ttl_steps=200"] if s == "ttl" else [])
    # PEPNet's deployment optimizers (Adagrad 0.05 / Adam 5e-6) from scratch: the warm-streaming recipe, cold
    v["dynamic_feature_pepnet_online"] = v["dynamic_feature"] + ["online.preset=pepnet_online"]
    return v


def _auc(y, p):
    from dynarec.metrics import auc

    return None if len(y) == 0 or y.min() == y.max() else round(auc(y, p), 4)


def run_variant(schema, stream: Path, sets: list[str], model: str, task: str, seen0: dict, new_domain: str | None,
                seed: int) -> dict:
    from dynarec.online.config import load_online_config
    from dynarec.online.runner import run_online

    base = [t for t in TRAIN if not t.startswith(("trainer.lr=", "trainer.embedding_lr="))] \
        if any(x.startswith("online.preset=") for x in sets) else TRAIN  # the preset's learning rates apply
    cfg = load_online_config(None, base + sets + [f"seed={seed}"], model)
    per = {"auc": [], "new_id_auc": [], "known_new_id_auc": [], "new_domain_auc": [], "new_id_share": []}
    pooled = {"new": ([], []), "known": ([], []), "dom": ([], []), "all": ([], [])}
    seen = {c: set(v.tolist()) for c, v in seen0.items()}  # ids seen in the passes before this one

    def hook(k, preds, table, raw):
        y, p = table.labels[task].numpy(), preds[task]
        new, known = np.zeros(raw.num_rows, bool), np.zeros(raw.num_rows, bool)
        for c, ids in seen0.items():
            col = raw.column(c).to_numpy(zero_copy_only=False)
            fresh = ~np.isin(col, ids)
            new |= fresh
            known |= fresh & np.isin(col, np.array(sorted(seen[c]), dtype=col.dtype))  # born later, seen before
            seen[c] |= set(col.tolist())
        dom = np.asarray(raw.column(schema.domain).to_pylist()) == new_domain if new_domain else np.zeros(len(y), bool)
        per["new_id_auc"].append(_auc(y[new], p[new]))
        per["known_new_id_auc"].append(_auc(y[known], p[known]))
        per["new_domain_auc"].append(_auc(y[dom], p[dom]))
        per["new_id_share"].append(round(float(new.mean()), 3))
        if k >= 1:  # pass 0 is scored untrained: left out of the pooled numbers
            for key, m in (("new", new), ("known", known), ("dom", dom), ("all", np.ones(len(y), bool))):
                pooled[key][0].append(y[m])
                pooled[key][1].append(p[m])
    out = Path(tempfile.mkdtemp(prefix="online-q-"))
    t0 = time.time()
    try:
        rows = list(run_online(schema, stream, out / "run", cfg, on_eval=hook))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    per["auc"] = [r["auc"][task]["all"] for r in rows]
    res = {"sets": sets, **per, "slots": [r["table_rows"] for r in rows], "evicted": [r["evicted"] for r in rows],
           "expired": [r["expired"] for r in rows], "delta_rows": [r["delta_rows"] for r in rows],
           "train_rows_per_s": round(float(np.mean([r["train_rows_per_s"] for r in rows])), 0),
           "seconds": round(time.time() - t0, 1)}
    for key, name in (("all", "pooled_auc"), ("new", "pooled_new_id_auc"), ("known", "pooled_known_new_id_auc"),
                      ("dom", "pooled_new_domain_auc")):
        ys, ps = pooled[key]
        res[name] = _auc(np.concatenate(ys), np.concatenate(ps)) if ys else None
    return res


def bayes(stream: Path, passes: int) -> list[float]:
    from dynarec.metrics import auc

    out = []
    for k in range(passes):
        t = pq.read_table(stream / f"pass-{k:04d}.parquet", columns=["click"]).column("click").to_numpy()
        out.append(round(auc(t, np.load(stream / f"truth-{k:04d}.npz")["p_click"]), 4))
    return out


def oracles(stream: Path, passes: int) -> dict:
    """Synthetic: the expected AUC (from the true probabilities, no sampling noise) of scoring each pass by the
    logit without the id terms plus the id terms of only some ids: none (``no_ids``), the ids of pass 0
    (``first_pass_ids``: the ceiling of a static vocabulary that learnt those ids exactly), every id met in an
    earlier pass (``seen_ids``: the ceiling of a table that never forgets, scoring before training on the pass),
    all (``bayes``). Per pass and pooled over passes 1+ (as the variants' pooled AUC)."""
    from dynarec.data.stream import expected_auc

    known: dict[str, set] = {c: set() for c in ("user_id", "item_id", "author_id")}
    first: dict[str, np.ndarray] = {}
    keys = ("no_ids", "first_pass_ids", "seen_ids", "bayes")
    per, pool = {k: [] for k in keys}, {k: ([], []) for k in keys}
    for k in range(passes):
        t = pq.read_table(stream / f"pass-{k:04d}.parquet", columns=list(known))
        tr = np.load(stream / f"truth-{k:04d}.npz")
        cols = {c: t.column(c).to_numpy() for c in known}
        if k == 0:
            first = {c: np.unique(v) for c, v in cols.items()}
        part = {"user_id": tr["user_logit"], "item_id": tr["item_logit"], "author_id": tr["author_logit"]}
        in_first = sum(part[c] * np.isin(cols[c], first[c]) for c in known)
        in_seen = sum(part[c] * np.isin(cols[c], np.fromiter(known[c], np.int64, len(known[c]))) for c in known)
        scores = {"no_ids": tr["rest_logit"], "first_pass_ids": tr["rest_logit"] + in_first,
                  "seen_ids": tr["rest_logit"] + in_seen, "bayes": tr["p_click"]}
        for name, sc in scores.items():
            per[name].append(round(expected_auc(sc, tr["p_click"]), 4))
            if k >= 1:
                pool[name][0].append(sc if name != "bayes" else np.log(sc) - np.log1p(-sc))
                pool[name][1].append(tr["p_click"])
        for c in known:
            known[c] |= set(cols[c].tolist())
    pooled = {n: round(expected_auc(np.concatenate(a), np.concatenate(b)), 4) if a else None
              for n, (a, b) in pool.items()}
    return {"per_pass": per, "pooled": pooled}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, title in ((axes[0], "auc", "progressive AUC (all rows)"),
                           (axes[1], "new_id_auc", "progressive AUC, rows with ids unseen in pass 0")):
        for name, v in res["variants"].items():
            ys = [np.nan if x is None else x for x in v[key]]
            ax.plot(range(len(ys)), ys, marker="o", ms=3, label=name,
                    lw=2 if name in ("static", "hash", "dynamic_feature") else 1)
        if key == "auc" and res.get("bayes_auc"):
            ax.plot(range(len(res["bayes_auc"])), res["bayes_auc"], "k--", lw=1, label="Bayes-optimal")
        ax.set_xlabel("pass")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{res['stream']}: {res['model']}, {res['memory_rows']} rows for the dynamic ids")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stream", choices=["synthetic", "movielens"], default="synthetic")
    ap.add_argument("--passes", type=int, default=12)
    ap.add_argument("--rows-per-pass", type=int, default=20000)
    ap.add_argument("--model", default="pepnet")
    ap.add_argument("--memory", type=float, default=1.0, help="rows for the dynamic ids / first-pass vocabulary")
    ap.add_argument("--expiry", type=int, default=2, help="online.expiry_passes of the dynamic variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="run these variants only")
    ap.add_argument("--id-share", type=float, help="synthetic: share of the click logit's variance carried by the "
                    "ids, in [0, 1) (default: dynarec.data.stream.ID_SHARE)")
    ap.add_argument("--drop", nargs="*", help="features left out of the stream's schema (an ablation)")
    ap.add_argument("--batch", default="512", help="trainer.batch_size of every variant, or 'auto': none set, so "
                    "online picks one per pass (online.auto_batch, the default of `dynarec online`)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--measure-id-share", action="store_true",
                    help="only measure the ids' share of a logistic regression's logit on MovieLens-100K (the anchor "
                         "of the synthetic --id-share default) and write it to --out")
    a = ap.parse_args()
    if a.measure_id_share:
        r = movielens_id_share()
        print(json.dumps(r))
        Path(a.out).write_text(json.dumps(r, indent=1))
        return
    torch.set_num_threads(1)
    from dynarec.data.schema import Schema

    tmp = Path(tempfile.mkdtemp(prefix="online-stream-"))
    if a.id_share is not None and not (a.stream == "synthetic" and 0 <= a.id_share < 1):
        ap.error(f"--id-share: need --stream synthetic and a number in [0, 1), got {a.id_share}")
    stream = make_stream(a.stream, a.passes, a.rows_per_pass, a.seed, tmp / "stream", a.id_share)
    schema = Schema.load(stream / "schema.yaml")
    if a.drop:  # an ablation: the model does not see these columns (e.g. per-id attributes that stand in for ids)
        import yaml

        d = yaml.safe_load((stream / "schema.yaml").read_text())
        missing = sorted(set(a.drop) - {f["name"] for f in d["features"]})
        if missing:
            ap.error(f"--drop: no feature {missing[0]!r} in the stream's schema")
        d["features"] = [f for f in d["features"] if f["name"] not in a.drop]
        schema = Schema.from_dict(d, "schema.yaml")
    global TRAIN
    TRAIN = [t for t in TRAIN if not t.startswith("trainer.batch_size=")] + \
        ([] if a.batch == "auto" else [f"trainer.batch_size={int(a.batch)}"])
    task = schema.tasks[0].name
    first = pq.read_table(stream / "pass-0000.parquet")
    dyn = [f.name for f in schema.features if f.dynamic]
    seen0 = {c: np.unique(first.column(c).to_numpy(zero_copy_only=False)) for c in ("user_id", "item_id")}
    memory = max(1, int(round(a.memory * sum(len(np.unique(first.column(c).to_numpy(zero_copy_only=False)))
                                             for c in dyn))))
    res = {"stream": a.stream, "passes": a.passes, "rows_per_pass": a.rows_per_pass, "model": a.model, "task": task,
           "dynamic_features": dyn, "dropped": a.drop or [], "memory_rows": memory, "train": TRAIN, "seed": a.seed,
           "bayes_auc": bayes(stream, a.passes) if a.stream == "synthetic" else None, "variants": {}}
    if a.stream == "synthetic":  # the generator's parameters, measured id share and oracle AUCs per pass
        import yaml

        res["stream_meta"] = yaml.safe_load((stream / "stream.yaml").read_text())
        res["oracle_auc"] = oracles(stream, a.passes)
        print("oracles (expected AUC, pooled passes 1+):", res["oracle_auc"]["pooled"], flush=True)
    out = Path(a.out)
    for name, sets in variants(memory, a.expiry).items():
        if a.only and name not in a.only:
            continue
        r = run_variant(schema, stream, sets, a.model, task, seen0, "d6" if a.stream == "synthetic" else None, a.seed)
        res["variants"][name] = r
        print(f"{name:22s} pooled AUC {r['pooled_auc']}  new ids {r['pooled_new_id_auc']} (seen before: "
              f"{r['pooled_known_new_id_auc']})  new domain "
              f"{r['pooled_new_domain_auc']}  slots {r['slots'][-1]}  {r['train_rows_per_s']:.0f} rows/s  "
              f"{r['seconds']} s", flush=True)
        out.write_text(json.dumps(res, indent=1))
    plot(res, out.with_suffix(".png"))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
