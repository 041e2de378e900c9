"""Evaluation and prediction over splits that do not fit in memory (a streamed
:class:`~dynarec.data.loader.StreamTable`, or any table with ``batches``).

AUC per binary task x domain from histograms of the model's logits: ``bins`` (default 2^20) equal bins on
[-``span``, ``span``] (logits beyond go to the end bins), positives and negatives counted per bin. Pairs in
different bins are ordered exactly; pairs in one bin count 1/2 (as tied scores do), so the histogram AUC is
within ``sum_b pos_b neg_b / (2 P N)`` of the exact AUC: that bound is computed from the histograms and
returned next to each AUC (``auc_error_bound``). Logloss and counts are exact (running sums). Where the split
has at most ``exact_rows`` rows the exact in-memory metrics are computed instead.

Example::

    m = evaluate_stream(model, open_split("prepared/", "test"), batch_size=65536)
    m["auc"]["click"]["all"], m["auc_error_bound"]["click"]["all"]
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

BINS = 1 << 20
SPAN = 20.0


class HistogramAUC:
    """Positive / negative counts per logit bin for each key (domain id; ``-1`` = all rows)."""

    def __init__(self, bins: int = BINS, span: float = SPAN):
        self.bins, self.span = bins, span
        self.hist: dict[int, np.ndarray] = {}  # key -> [2, bins] uint32 (negatives, positives)
        self.loss: dict[int, list] = {}  # key -> [sum of log loss, rows]

    def add(self, logits: np.ndarray, y: np.ndarray, domain: np.ndarray) -> None:
        z = np.asarray(logits, np.float64)
        b = np.clip(((z + self.span) * (self.bins / (2 * self.span))).astype(np.int64), 0, self.bins - 1)
        y = np.asarray(y) > 0.5
        ll = np.logaddexp(0.0, z) - np.where(y, z, 0.0)  # -log p(y) from logits, exact and stable
        for key in (-1, *np.unique(domain).tolist()):
            m = slice(None) if key == -1 else domain == key
            h = self.hist.setdefault(key, np.zeros((2, self.bins), np.uint32))
            yy, bb = y[m], b[m]
            h[0] += np.bincount(bb[~yy], minlength=self.bins).astype(np.uint32)
            h[1] += np.bincount(bb[yy], minlength=self.bins).astype(np.uint32)
            s = self.loss.setdefault(key, [0.0, 0])
            s[0] += float(ll[m].sum())
            s[1] += int(len(bb))

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


@torch.no_grad()
def evaluate_stream(model, table, batch_size: int = 65536, bins: int = BINS, exact_rows: int = 0) -> dict:
    """Metrics of ``model`` on ``table`` (see the module docstring): ``{"auc", "logloss", "count",
    "auc_error_bound"}`` keyed like :func:`dynarec.metrics.compute_metrics` (binary tasks)."""
    if len(table) <= exact_rows and hasattr(table, "full"):
        from dynarec.metrics import evaluate_model

        return {**evaluate_model(model, table, batch_size), "auc_error_bound": {}}
    was = model.training
    model.eval()
    binary = [t.name for t in model.schema.tasks if t.type == "binary"]
    acc = {t: HistogramAUC(bins) for t in binary}
    counts: dict[int, int] = {}
    for b in table.batches(batch_size):
        out = model(b)
        dom = b.domain.cpu().numpy()
        for d, c in zip(*np.unique(dom, return_counts=True)):
            counts[int(d)] = counts.get(int(d), 0) + int(c)
        for t in binary:
            acc[t].add(out[t].double().cpu().numpy(), b.labels[t].cpu().numpy(), dom)
    model.train(was)
    names = model.schema.domain_values

    def name(k):
        return "all" if k == -1 else f"domain={names[k - 1] if 0 < k <= len(names) else '<unknown>'}"

    res: dict = {"auc": {}, "logloss": {}, "auc_error_bound": {},
                 "count": {"all": sum(counts.values()), **{name(k): v for k, v in sorted(counts.items())}}}
    for t, h in acc.items():
        keys = [-1] + sorted(k for k in h.hist if k != -1)
        aucs = {name(k): h.auc(k) for k in keys}
        res["auc"][t] = {k: _clean(v[0]) for k, v in aucs.items()}
        res["auc_error_bound"][t] = {k: v[1] for k, v in aucs.items()}
        res["logloss"][t] = {name(k): h.loss[k][0] / max(h.loss[k][1], 1) for k in keys}
    return res


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
