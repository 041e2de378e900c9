"""The retrieval side of the ``dynarec`` command: ``retrieve``, ``evaluate`` on a retrieval checkpoint, and the
metrics table printed after ``train`` (the parser lines live in :mod:`dynarec.cli`)."""
from __future__ import annotations

import json
from pathlib import Path

from dynarec.errors import DynarecError
from dynarec.retrieval.lookup import Retriever

__all__ = ["run_retrieve", "evaluate_run", "metrics_table"]


def metrics_table(model: str, metrics: dict, ks=(10, 20, 50)):
    from rich.table import Table

    t = Table(title=f"{model}: exact full-corpus retrieval (seen items masked)")
    t.add_column("slice")
    cols = [f"recall@{k}" for k in ks] + [f"{m}@{ks[0]}" for m in ("ndcg", "mrr", "hitrate")]
    for c in cols:
        t.add_column(c, justify="right")
    for slice_ in metrics.get(cols[0], {}):
        t.add_row(slice_, *[f"{metrics[c][slice_]:.4f}" for c in cols])
    return t


def run_retrieve(a) -> int:
    """``dynarec retrieve``: top-k raw item ids with scores per ``--user``; with an approximate index the
    recall of its top-k against the exact top-k for those users."""
    r = Retriever(a.checkpoint)
    rows = [r.lookup([u], a.k, a.index, a.domain)[0] for u in a.user]
    out = {"checkpoint": str(a.checkpoint), "k": a.k, "index": a.index, "results": rows}
    if a.index == "hnsw":
        import torch

        q = torch.tensor([r.query_row(u, a.domain) for u in a.user])
        out["ann_recall"] = r.ann_recall(a.k, "hnsw", q)
    if a.json:
        print(json.dumps(out))
        return 0
    for row in rows:
        print(f"user {row['user']}: " + ", ".join(f"{i} ({s:.3f})" for i, s in zip(row["items"], row["scores"])))
    if "ann_recall" in out:
        print(f"hnsw recall@{a.k} against exact: {out['ann_recall']:.3f}")
    return 0


def evaluate_run(checkpoint, data, split: str | None = None) -> dict:
    """The summary of ``dynarec evaluate`` on a retrieval checkpoint: exact full-corpus metrics on ``split``
    ("test" by default) of the prepared folder ``data``."""
    from dynarec.retrieval.evaluate import evaluate_retrieval
    from dynarec.retrieval.train import load_retrieval_data
    from dynarec.train.checkpoint import load_checkpoint

    if not Path(data).is_dir():
        raise DynarecError(f"evaluate: a retrieval checkpoint is evaluated on a prepared folder; {data} is a file")
    model, blob = load_checkpoint(checkpoint)
    _, _, rdata = load_retrieval_data(data, getattr(model.config, "task", ""))
    split = split or "test"
    if split not in rdata.evals:
        raise DynarecError(f"evaluate: split '{split}' has no retrieval queries (have: {', '.join(rdata.evals)})")
    return {"model": blob["model"], "data": str(data), "split": split,
            "metrics": evaluate_retrieval(model, rdata, split)}
