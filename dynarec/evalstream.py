"""Evaluation over splits that may not fit in memory (a streamed :class:`~dynarec.data.loader.StreamTable`, or
any table with ``batches``), within a memory budget.

**Exact** while the split's scores fit the budget (``len(table) * exact_row_bytes(schema) <= budget``): every
row's score, labels, domain and user are kept (about 16 B per task plus 16 B per row, and the sorting in
:func:`dynarec.metrics.compute_metrics`) and the metrics are today's in-memory ones (the same numbers as
:func:`dynarec.metrics.evaluate_model`: AUC, DeLong's se, logloss, gAUC, RMSE, positives, counts).

**Histogram** past it: AUC per binary task x domain from histograms of the model's logits, ``bins`` (default
2^20) equal bins on [-``span``, ``span``] (logits beyond go to the end bins), positives and negatives counted
per bin. Pairs in different bins are ordered exactly; pairs in one bin count 1/2 (as tied scores do), so the
histogram AUC is within ``sum_b pos_b neg_b / (2 P N)`` of the exact AUC (a pair in one bin contributes 0,
1/2 or 1 to the exact count and 1/2 to ours): that bound is computed from the histograms and returned next
to each AUC (``auc_error_bound``; 0 on the exact path). Logloss (from the logits), RMSE, counts and
positives are running sums; gAUC is exact through a spill by user hash (:mod:`dynarec.evalgauc`); DeLong's
se is not given. Memory: the histograms (2 x 8 B x ``bins`` per binary task x domain, 16 MB at 2^20) and one
spill partition, whatever the row count.

Example::

    m = evaluate_stream(model, open_split("prepared/", "test"), batch_size=65536, budget_mb=4096)
    m["auc"]["click"]["all"], m["auc_error_bound"]["click"]["all"], m["method"]
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

BINS = 1 << 20
SPAN = 20.0


def exact_row_bytes(schema) -> int:
    """Bytes per row the exact path holds: per task a float64 score and label, the domain and user (int64),
    and the transient arrays of the AUC / gAUC sorts (~96 B)."""
    return 16 * len(schema.tasks) + 16 + 96


class HistogramAUC:
    """Positive / negative counts per logit bin for each key (domain id; ``-1`` = all rows)."""

    def __init__(self, bins: int = BINS, span: float = SPAN):
        self.bins, self.span = bins, span
        self.hist: dict[int, np.ndarray] = {}  # key -> [2, bins] int64 (negatives, positives)
        self.loss: dict[int, list] = {}  # key -> [sum of log loss, rows, positives]

    def add(self, logits: np.ndarray, y: np.ndarray, domain: np.ndarray) -> None:
        z = np.asarray(logits, np.float64)
        b = np.clip(((z + self.span) * (self.bins / (2 * self.span))).astype(np.int64), 0, self.bins - 1)
        y = np.asarray(y) > 0.5
        ll = np.logaddexp(0.0, z) - np.where(y, z, 0.0)  # -log p(y) from logits, exact and stable
        domain = np.asarray(domain)
        for key in (-1, *np.unique(domain).tolist()):
            m = slice(None) if key == -1 else domain == key
            h = self.hist.setdefault(key, np.zeros((2, self.bins), np.int64))
            yy, bb = y[m], b[m]
            h[0] += np.bincount(bb[~yy], minlength=self.bins)
            h[1] += np.bincount(bb[yy], minlength=self.bins)
            s = self.loss.setdefault(key, [0.0, 0, 0])
            s[0] += float(ll[m].sum())
            s[1] += int(len(bb))
            s[2] += int(yy.sum())

    def auc(self, key: int) -> tuple[float, float]:
        """(histogram AUC, bound on its distance to the exact AUC); NaN when one class is absent."""
        neg, pos = (self.hist[key][i].astype(np.float64) for i in (0, 1))
        P, N = pos.sum(), neg.sum()
        if P == 0 or N == 0:
            return float("nan"), 0.0
        below = np.cumsum(neg) - neg
        ties = float((pos * neg).sum())
        return float(((pos * below).sum() + 0.5 * ties) / (P * N)), ties / (2 * P * N)


def _clean(x: float):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _exact(model, table, batch_size: int) -> dict:
    """Today's in-memory metrics from the kept scores (:func:`dynarec.metrics.evaluate_model`'s numbers)."""
    from dynarec.metrics import compute_metrics

    types = {t.name: t.type for t in model.schema.tasks}
    preds: dict[str, list] = {}
    labels: dict[str, list] = {}
    dom, users = [], []
    for b in table.batches(batch_size):
        for t, v in model(b).items():
            preds.setdefault(t, []).append((torch.sigmoid(v) if types.get(t, "binary") == "binary" else v).cpu())
            labels.setdefault(t, []).append(b.labels[t].cpu())
        dom.append(b.domain.cpu())
        if b.user is not None:
            users.append(b.user.cpu())
    cat = {t: torch.cat(v).double().numpy() for t, v in preds.items()}
    y = {t: torch.cat(v).double().numpy() for t, v in labels.items()}
    m = compute_metrics(y, cat, torch.cat(dom).numpy(), model.schema.domain_values,
                        torch.cat(users).numpy() if users else None, types)
    m["auc_error_bound"] = {t: {k: 0.0 for k in v} for t, v in m.get("auc", {}).items()}
    return m


def _histogram(model, table, batch_size: int, bins: int, budget_bytes: float) -> dict:
    from dynarec.evalgauc import GaucSpill

    types = {t.name: t.type for t in model.schema.tasks}
    binary = [t for t, k in types.items() if k == "binary"]
    acc = {t: HistogramAUC(bins) for t in binary}
    sq: dict[str, dict[int, float]] = {t: {} for t in types if t not in binary}  # regression: squared errors
    counts: dict[int, int] = {}
    spill = None
    try:
        for b in table.batches(batch_size):
            out = model(b)
            d = b.domain.cpu().numpy()
            for k, c in zip(*np.unique(d, return_counts=True)):
                counts[int(k)] = counts.get(int(k), 0) + int(c)
            for t in binary:
                acc[t].add(out[t].double().cpu().numpy(), b.labels[t].cpu().numpy(), d)
            for t in sq:
                e = (out[t].double() - b.labels[t].double()).cpu().numpy() ** 2
                for k in (-1, *np.unique(d).tolist()):
                    sq[t][k] = sq[t].get(k, 0.0) + float(e.sum() if k == -1 else e[d == k].sum())
            if b.user is not None and binary:
                if spill is None:
                    spill = GaucSpill(len(table), binary, budget_bytes)
                spill.add(b.user.cpu().numpy(), d, {t: b.labels[t].cpu().numpy() for t in binary},
                          {t: torch.sigmoid(out[t]).cpu().numpy() for t in binary})
        names = model.schema.domain_values

        def name(k):
            return "all" if k == -1 else f"domain={names[k - 1] if 0 < k <= len(names) else '<unknown>'}"

        keys = [-1] + sorted(counts)
        rows = {-1: sum(counts.values()), **counts}
        res: dict = {"auc": {}, "logloss": {}, "positives": {}, "auc_error_bound": {},
                     "count": {"all": sum(counts.values()), **{name(k): counts[k] for k in sorted(counts)}}}
        for t, h in acc.items():
            aucs = {name(k): h.auc(k) for k in keys}
            res["auc"][t] = {k: _clean(v[0]) for k, v in aucs.items()}
            res["auc_error_bound"][t] = {k: v[1] for k, v in aucs.items()}
            res["logloss"][t] = {name(k): h.loss[k][0] / max(h.loss[k][1], 1) for k in keys}
            res["positives"][t] = {name(k): h.loss[k][2] for k in keys}
        if sq:
            res["rmse"] = {t: {name(k): math.sqrt(v[k] / rows[k]) for k in keys} for t, v in sq.items()}
        if spill is not None:
            res["gauc"] = spill.gauc(name)
            spill = None
        return res
    finally:
        if spill is not None:
            spill.close()


@torch.no_grad()
def evaluate_stream(model, table, batch_size: int = 65536, budget_mb: float = 4096, bins: int = BINS) -> dict:
    """Metrics of ``model`` on ``table`` (see the module docstring), keyed like
    :func:`dynarec.metrics.compute_metrics`, plus ``auc_error_bound`` (task -> slice -> bound) and ``method``
    ("exact" | "histogram")."""
    was = model.training
    model.eval()
    try:
        budget = budget_mb * (1 << 20)
        if len(table) * exact_row_bytes(model.schema) <= budget:
            return {**_exact(model, table, batch_size), "method": "exact"}
        return {**_histogram(model, table, batch_size, bins, budget), "method": "histogram"}
    finally:
        model.train(was)


def evaluate_split(predictor, folder, split: str = "test", budget_mb: float = 4096, mc_dropout: int = 0,
                   batch_size: int = 65536) -> dict:
    """``dynarec evaluate`` on a prepared folder's ``split`` within ``budget_mb``: today's in-memory evaluation
    when the split's tensors and scores fit (``Predictor.evaluate``), else the split streamed row group by row group
    into :func:`evaluate_stream` (exact metrics while the scores fit, else histograms with their bound).

    Example::

        summary = evaluate_split(Predictor.load("runs/dnn"), "prepared/", "test", budget_mb=2048)
        summary["metrics"]["auc"], summary["evaluation"]["method"]
    """
    from pathlib import Path

    from dynarec.data.loader import open_split, table_bytes_per_row
    from dynarec.errors import DataError

    if not budget_mb > 0:
        raise DataError(f"--memory-budget: expected a positive number of MB, got {budget_mb}")
    st = open_split(folder, split)
    if len(st) * (table_bytes_per_row(st.schema) + exact_row_bytes(st.schema)) <= budget_mb * (1 << 20):
        return predictor.evaluate(folder, split, mc_dropout)  # the tensors and their scores fit
    if [f.vocab_size for f in st.schema.fields] != [f.vocab_size for f in predictor.schema.fields]:
        raise DataError(f"{folder}: prepared with other encoders than the checkpoint's (vocab sizes differ); "
                        "pass the raw data file instead")
    if mc_dropout:
        raise DataError(f"--mc-dropout: {Path(folder) / split}.parquet is streamed (its {len(st):,} rows exceed the "
                        f"memory budget of {budget_mb:g} MB); MC-dropout needs the split in memory "
                        "(raise --memory-budget)")
    m = evaluate_stream(predictor.model, st, batch_size, budget_mb)
    return {"model": predictor.name, "data": str(folder), "metrics": m, "checkpoint": predictor.checkpoint,
            "rows": len(st), "unknown": {},
            "evaluation": {"method": f"streamed, {m.pop('method')}", "memory_budget_mb": budget_mb}}


@torch.no_grad()
def predict_to_shards(model, table, out, batch_size: int = 65536, rows_per_file: int = 1 << 20) -> int:
    """Predictions (probabilities of binary tasks, values of regression tasks) of every row of a streamed
    ``table`` written as they come: ``out/part-NNNNN.parquet`` with ``_row`` (the raw row) and one column per
    task, ``rows_per_file`` rows per file. Returns the rows written."""
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    was = model.training
    model.eval()
    types = {t.name: t.type for t in model.schema.tasks}
    writer, in_file, files, total = None, 0, 0, 0
    for b, rows in table.batches_with_rows(batch_size):
        pred = {t: (torch.sigmoid(v) if types.get(t, "binary") == "binary" else v).double().cpu().numpy()
                for t, v in model(b).items()}
        t = pa.table({"_row": rows.numpy(), **pred})
        if writer is None:
            writer = pq.ParquetWriter(out / f"part-{files:05d}.parquet", t.schema)
            files += 1
        writer.write_table(t)
        in_file += t.num_rows
        total += t.num_rows
        if in_file >= rows_per_file:
            writer.close()
            writer, in_file = None, 0
    if writer is not None:
        writer.close()
    model.train(was)
    return total
