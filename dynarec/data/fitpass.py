"""The fit pass of the out-of-core prepare (``outofcore.py``): the encoders of the train rows, fitted chunk by
chunk from mergeable statistics (``sketch.py``), plus the whole-file checks of the in-memory prepare
(label rules, NaN under ``nan_policy: error``). With exact statistics the encoders equal
``Encoders.fit`` on the same rows: the same vocabularies (counts are exact), the same bucket and PLE edges
(exact quantiles, ``np.quantile``'s method); means and standard deviations agree to float64 summation
rounding (a pairwise-merged sum instead of numpy's).

Example::

    fit = FitPass(schema, cap=1 << 20)
    for start, chunk in chunks:
        fit.add(chunk, split_code_of(chunk), where="data.csv")
    enc = fit.encoders()
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from dynarec.data.encode import CategoricalEncoder, Encoders, dense_column
from dynarec.data.fingerprint import MAX_KEPT, TrainRowsBuilder
from dynarec.data.labels import label_column
from dynarec.data.numeric import NumericEncoder
from dynarec.data.read import values_seen
from dynarec.data.schema import PLE_BINS, Schema
from dynarec.data.sketch import Moments, QuantileSketch, ValueCounts
from dynarec.errors import DataError


def vocabulary(values: np.ndarray, counts: np.ndarray, min_count: int) -> list[str]:
    """``CategoricalEncoder.fit``'s rule on exact counts: values seen at least ``min_count`` times, frequent
    first, ties by value."""
    v = values.astype(str)
    keep = (counts >= min_count) & (v != "")
    v, c = v[keep], counts[keep]
    order = np.lexsort((v, -c))
    return [str(x) for x in v[order]]


class FitPass:
    """Statistics of one scan (see the module docstring); ``add`` each chunk with its rows' split codes
    (0 = train), then :meth:`encoders`."""

    def __init__(self, schema: Schema, cap: int = 1 << 20, log: bool = False):
        self.schema, self.cap = schema, cap
        self.probe = Encoders(schema)  # only for its column readers
        self.train_rows = TrainRowsBuilder(schema.columns())  # the training rows' fingerprint (evaluate's warning)
        self.cat_fields = [f for f in schema.fields if not f.bucketised]
        self.counts: dict[str, ValueCounts] = {f.table: ValueCounts() for f in self.cat_fields}
        dense = [f for f in schema.features if f.kind == "dense"]
        self.moments = {f.name: Moments(log) for f in dense}  # log: per-chunk, for merge()
        self.sketches = {f.name: QuantileSketch(cap) for f in dense
                         if (f.bucketised and f.boundaries is None) or f.numeric_embedding == "ple"}
        self.nan = {f.name: 0 for f in dense + [f for f in schema.sparse if f.bucketised]}
        self.pos = {t.name: 0 for t in schema.tasks}
        self.rows = np.zeros(3, np.int64)
        self.label_values: dict[str, list] = {t.name: [] for t in schema.tasks}

    def add(self, chunk: pa.Table, code: np.ndarray, where: str) -> None:
        self.rows += np.bincount(code, minlength=3)[:3]
        for task in self.schema.tasks:
            y = label_column(chunk, task, where)  # checks missing / non-0/1 labels in every row
            self.pos[task.name] += int((y == 1).sum())
            if not self.label_values[task.name]:
                self.label_values[task.name].append(values_seen(chunk.column(task.source)))
        for name in self.nan:
            f = self.schema.feature(name)
            self.nan[name] += int(np.isnan(dense_column(chunk, f, where)).sum())
        train = chunk.filter(pa.array(code == 0)) if (code != 0).any() else chunk
        if not train.num_rows:
            return
        self.train_rows.add(train)
        for f in self.cat_fields:
            self.counts[f.table].add(self.probe._categorical(train, f, where)[0])
        for name, m in self.moments.items():
            f = self.schema.feature(name)
            x = NumericEncoder()._pre(dense_column(train, f, "train"), f, "train")
            m.add(x)
            if name in self.sketches:
                self.sketches[name].add(x)

    def merge(self, other: "FitPass") -> None:
        """Add the statistics of a later part of the rows (another file's fit pass, built with ``log=True``).
        Merging the parts in row order gives the fit of all rows in one pass: counts are exact, moments are
        replayed chunk by chunk (the same float operations), exact quantile sketches add their counts, the
        training-row fingerprint keeps the hashes a one-pass fit keeps."""
        self.rows += other.rows
        for d, o in ((self.pos, other.pos), (self.nan, other.nan)):
            for k in d:
                d[k] += o[k]
        for k, v in other.label_values.items():
            if not self.label_values[k]:
                self.label_values[k] = list(v)
        for t, vc in other.counts.items():
            self.counts[t].merge(vc)
        for n, m in other.moments.items():
            self.moments[n].replay(m)
        for n, sk in other.sketches.items():
            self.sketches[n].merge(sk)
        a, b = self.train_rows, other.train_rows
        a.columns = [c for c in a.columns if c in b.columns]
        a.modulus = max(a.modulus, b.modulus)
        kept = np.unique(np.concatenate([a.kept, b.kept]))
        a.kept = kept[kept % np.uint64(a.modulus) == 0]
        while len(a.kept) > MAX_KEPT:  # TrainRowsBuilder.add's rule
            a.modulus *= 2
            a.kept = a.kept[a.kept % np.uint64(a.modulus) == 0]

    def check(self, where: str, total: int) -> None:
        """The in-memory prepare's whole-file checks (``check_label_rules``, ``nan_policy: error``)."""
        for f in (self.schema.feature(n) for n in self.nan):
            if self.nan[f.name] and f.nan_policy == "error":
                raise DataError(f"{where}: dense column '{f.name}' has {self.nan[f.name]} NaN value(s) and its "
                                f"nan_policy is 'error' (use nan_policy: fill, with a fill_value in raw units)")
        for task in self.schema.tasks:
            if task.type != "binary" or (task.positive is None and task.threshold is None):
                continue
            p, seen = self.pos[task.name], self.label_values[task.name][0] if self.label_values[task.name] else ""
            if task.positive is not None and p == 0:
                raise DataError(f"{where}: task '{task.name}': no value of column '{task.source}' is in positive "
                                f"{task.positive} (values seen: {seen})")
            if task.positive is not None and p == total:
                raise DataError(f"{where}: task '{task.name}': every value of column '{task.source}' is in positive "
                                f"{task.positive}, so there is no negative row (values seen: {seen})")
            if task.threshold is not None and p in (0, total):
                raise DataError(f"{where}: task '{task.name}': threshold {task.threshold:g} puts every row of column "
                                f"'{task.source}' on one side")

    @property
    def exact(self) -> bool:
        return all(s.settle() or s.exact for s in self.sketches.values())

    def quantile_error(self) -> dict[str, float]:
        """Per sketched column: the bound on the rank error of its quantiles, as a fraction of its rows."""
        return {n: s.settle() or s.rank_error / max(s.total, 1.0) for n, s in self.sketches.items()}

    def encoders(self) -> Encoders:
        """The fitted encoders (and the schema's vocab sizes, domain names and PLE edges, as ``Encoders.fit``)."""
        schema = self.schema
        enc = Encoders(schema)
        enc.train_rows = self.train_rows.result()
        min_count: dict[str, int] = {}
        for f in self.cat_fields:
            min_count[f.table] = max(min_count.get(f.table, 1), f.min_count)
        for t, vc in self.counts.items():
            enc.cat[t] = CategoricalEncoder(vocabulary(*vc.result(), min_count[t]))
        for f in self.cat_fields:
            f.vocab_size = enc.cat[f.table].size
        schema.domain_values = list(enc.cat[schema.feature(schema.domain).table].vocab)
        for name, m in self.moments.items():
            f = schema.feature(name)
            e = NumericEncoder()
            sk = self.sketches.get(name)
            if f.bucketised:
                if f.boundaries is not None:
                    e.edges = [float(b) for b in f.boundaries]
                else:
                    qs = sk.quantile(np.linspace(0, 1, f.buckets + 1)[1:-1]) if m.n else np.zeros(0)
                    e.edges = [float(b) for b in np.unique(qs)]
            elif f.scaling == "standard" and m.n:
                e.mean, e.std = float(m.mean), float(m.std or 1.0)
            elif f.scaling == "minmax" and m.n:
                e.min, e.max = float(m.min), float(m.max)
            if f.numeric_embedding == "ple":
                scaled = QuantileSketch(self.cap)
                v, w = sk.summary()
                scaled.add(e._scale(v, f), w)  # a monotone map of the exact values
                qs = scaled.quantile(np.linspace(0, 1, (f.bins or PLE_BINS) + 1)) if m.n else np.zeros(0)
                edges = np.unique(qs)
                if edges.size < 2:
                    c = float(edges[0]) if edges.size else 0.0
                    edges = np.array([c - 1.0, c + 1.0])
                e.ple_edges = [float(b) for b in edges]
                f.ple_edges = e.ple_edges
            enc.dense[name] = e
        for f in schema.fields:
            if f.bucketised:
                f.vocab_size = enc.dense[f.name].num_buckets + 1
        return enc
