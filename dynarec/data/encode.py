"""Encoders fitted on the TRAIN split only, vectorised with pyarrow.compute.

categorical -> int ids, 0 reserved for unknown / rare (< min_count) / padding; unknown values at
inference map to 0 and are counted. dense -> float32 (``numeric.py``: fill in raw units, clip, log1p,
scaling) or bucket ids; NaN policy fill (+ optional missing indicator) or error. sequences -> padded ids
[N, max_len]. Labels come from ``labels.py``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.labels import label_column
from dynarec.data.numeric import NumericEncoder
from dynarec.data.read import as_text as _as_str
from dynarec.data.read import null_tokens, values_seen
from dynarec.data.schema import Feature, Schema
from dynarec.data.text import tokenize
from dynarec.errors import DataError


def _seq_values(col, sep: str, where: str = "data", name: str = "?") -> tuple[pa.Array, np.ndarray]:
    """Sequence column (list or 'a|b|c' strings; an integer column holds one id per row) -> (flat string
    values, offsets); empty tokens are null."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_integer(col.type):
        col = pc.cast(col, pa.string())
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.split_pattern(pc.fill_null(col, ""), sep)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise DataError(f"{where}: sequence feature '{name}': column has type {col.type} (values seen: "
                        f"{values_seen(col, 3)}); expected '{sep}'-separated ids (text), integer ids or lists")
    col = pc.fill_null(col, pa.scalar([], col.type))
    flat = _as_str(col.flatten())
    # an empty string (an empty sequence, or between two separators) is no token: null (id 0, not unknown)
    flat = pc.if_else(pc.equal(flat, ""), pa.scalar(None, flat.type), flat)
    offsets = np.asarray(col.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    return flat, offsets


@dataclass
class CategoricalEncoder:
    vocab: list[str] = field(default_factory=list)  # id = position + 1
    _lut: dict | None = field(default=None, init=False, repr=False, compare=False)  # {value: id}, built once

    @property
    def size(self) -> int:
        return len(self.vocab) + 1

    def fit(self, values: pa.Array, min_count: int = 1, max_size: int | None = None) -> CategoricalEncoder:
        """Values seen at least ``min_count`` times, most frequent first (ties by value); at most ``max_size``."""
        vc = pc.value_counts(pc.drop_null(values))
        v = vc.field("values").to_numpy(zero_copy_only=False)
        c = vc.field("counts").to_numpy()
        keep = (c >= min_count) & (v != "")
        v, c = v[keep], c[keep]
        order = np.lexsort((v.astype(str), -c))  # frequent first, ties by value: deterministic
        self.vocab = [str(x) for x in v[order[:max_size]]]
        self._lut = None
        return self

    def transform(self, values: pa.Array) -> tuple[np.ndarray, int]:
        """-> (int32 ids, number of unknown non-null values mapped to 0). Fewer values than the vocabulary (a
        server's micro-batch) are looked up in a dictionary built once; ``index_in`` hashes the whole
        vocabulary on every call (~1 s for 10^6 values), right for a file, not for a request."""
        if len(values) <= len(self.vocab):
            if self._lut is None:
                self._lut = {v: i + 1 for i, v in enumerate(self.vocab)}
            py = values.to_pylist()
            ids = np.fromiter((self._lut.get(v, 0) for v in py), np.int32, len(py))
            return ids, sum(1 for v, i in zip(py, ids) if i == 0 and v is not None)
        idx = pc.index_in(values, value_set=pa.array(self.vocab, pa.string()))
        unknown = int(pc.sum(pc.and_(pc.is_null(idx), pc.is_valid(values))).as_py() or 0)
        ids = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int32) + 1
        return ids, unknown


DenseEncoder = NumericEncoder  # the name before numeric transforms and buckets


def column(table: pa.Table, f: Feature) -> pa.Array:
    """The raw column of ``f`` with its ``null_values`` set to null."""
    return null_tokens(table.column(f.name), f.null_values)


def dense_column(table: pa.Table, f: Feature, where: str) -> np.ndarray:
    """Float64 [N] raw values of dense feature ``f`` (NaN = missing). Text that is no number or an infinite
    value -> DataError naming the column, the value and its row (its position in ``table``)."""
    col = column(table, f)
    try:
        x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{where}: dense column '{f.name}' {_not_numbers(col)}") from None
    x = np.asarray(x, dtype=np.float64)
    inf = np.flatnonzero(np.isinf(x))
    if len(inf):
        raise DataError(f"{where}: dense column '{f.name}' has {len(inf)} infinite value(s), the first {x[inf[0]]:g} "
                        f"at row {inf[0]}; a dense value must be finite (add the token to the feature's null_values "
                        f"to read it as missing)")
    return x


def _not_numbers(col: pa.Array) -> str:
    """Why a column does not cast to numbers: its first value that is no number, its row and count."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        vals = col.to_pylist()
        bad = []
        for i, v in enumerate(vals):
            try:
                if v is not None:
                    float(v)
            except ValueError:
                bad.append(i)
        if bad:
            return (f"holds text that is no number: {vals[bad[0]]!r} at row {bad[0]} ({len(bad)} row(s) in all; "
                    f"values seen: {values_seen(pc.take(col, pa.array(bad)), 3)}); add such tokens to the "
                    f"feature's null_values if they mean missing, or declare it kind: sparse")
    return f"has type {col.type} (values seen: {values_seen(col, 3)}); expected numbers"


class Encoders:
    """All encoders of a schema; ``fit`` on train, ``transform`` any split."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.cat: dict[str, CategoricalEncoder] = {}  # by table name
        self.dense: dict[str, DenseEncoder] = {}
        self.unknown_counts: dict[str, int] = {}
        self.train_rows = None  # a TrainRows fingerprint of the training rows (data/fingerprint.py), if taken

    def _categorical(self, table: pa.Table, f: Feature, where: str) -> tuple[pa.Array, np.ndarray | None]:
        """(string values, sequence offsets or None) of a sparse or sequence feature."""
        if f.kind == "sparse":
            return _as_str(column(table, f)), None
        if f.text:
            flat, offs = tokenize(table.column(f.name), f)
        else:
            flat, offs = _seq_values(table.column(f.name), f.separator, where, f.name)
        return null_tokens(flat, f.null_values), offs

    def fit(self, table: pa.Table, where: str = "train") -> Encoders:
        by_table: dict[str, list[pa.Array]] = {}
        min_count: dict[str, int] = {}
        max_size: dict[str, int | None] = {}
        cat_fields = [f for f in self.schema.fields if not f.bucketised]
        for f in cat_fields:
            by_table.setdefault(f.table, []).append(self._categorical(table, f, where)[0])
            min_count[f.table] = max(min_count.get(f.table, 1), f.min_count)
            if f.max_vocab is not None:  # features sharing a table: the smallest cap
                max_size[f.table] = min(max_size.get(f.table) or f.max_vocab, f.max_vocab)
        for t, arrs in by_table.items():
            self.cat[t] = CategoricalEncoder().fit(pa.concat_arrays(arrs), min_count[t], max_size.get(t))
        for f in cat_fields:
            f.vocab_size = self.cat[f.table].size
        self.schema.domain_values = list(self.cat[self.schema.feature(self.schema.domain).table].vocab)
        for f in self.schema.features:
            if f.kind == "dense":
                self.dense[f.name] = NumericEncoder().fit(dense_column(table, f, where), f, where)
            if f.numeric_embedding == "ple":
                f.ple_edges = self.dense[f.name].ple_edges
        for f in self.schema.fields:  # features sharing a table (bucketised ones too) get its largest size
            if f.bucketised:
                f.vocab_size = self.dense[f.name].num_buckets + 1
        return self

    def transform(self, table: pa.Table, where: str, labels: bool = True) -> dict[str, np.ndarray]:
        """Encoded columns: '<name>' for each feature (int32 ids, float32, or [N, L] int32), labels (unless
        ``labels`` is false: unlabeled rows), '__user__' (int64 group ids for gAUC). Records unknown
        counts per feature."""
        out: dict[str, np.ndarray] = {}
        self.unknown_counts = {}
        for f in self.schema.features:
            if f.kind == "sequence":
                flat, offs = self._categorical(table, f, where)
                ids, self.unknown_counts[f.name] = self.cat[f.table].transform(flat)
                out[f.name] = pad_sequences(ids, offs, f.max_len)
            elif f.kind == "sparse":
                out[f.name], self.unknown_counts[f.name] = self.cat[f.table].transform(self._categorical(table, f, where)[0])
            else:
                x = dense_column(table, f, where)
                nan = np.isnan(x)
                if nan.any() and f.nan_policy == "error":
                    raise DataError(f"{where}: dense column '{f.name}' has {int(nan.sum())} NaN value(s) and its "
                                    f"nan_policy is 'error' (use nan_policy: fill to fill them with fill_value)")
                out[f.name] = self.dense[f.name].transform(x, f, where)
                if f.missing_indicator:
                    out[f.name + "__missing"] = nan.astype(np.float32)
        for t in self.schema.tasks if labels else ():
            out[t.name] = label_column(table, t, where)
        if self.schema.user:
            u = table.column(self.schema.user)
            out["__user__"] = pc.dictionary_encode(_as_str(u)).indices.to_numpy(zero_copy_only=False).astype(np.int64) \
                if len(u) else np.zeros(0, np.int64)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {"categorical": {t: e.vocab for t, e in self.cat.items()},
             "dense": {n: e.to_dict() for n, e in self.dense.items()}}
        if self.train_rows is not None:
            d["train_rows"] = self.train_rows.to_dict()
        return d

    @classmethod
    def from_dict(cls, schema: Schema, d: dict[str, Any]) -> Encoders:
        enc = cls(schema)
        enc.cat = {t: CategoricalEncoder(list(v)) for t, v in d["categorical"].items()}
        enc.dense = {n: NumericEncoder.from_dict(v) for n, v in d["dense"].items()}
        if d.get("train_rows"):
            from dynarec.data.fingerprint import TrainRows

            enc.train_rows = TrainRows.from_dict(d["train_rows"])
        return enc


def pad_sequences(ids: np.ndarray, offsets: np.ndarray, max_len: int) -> np.ndarray:
    """Flat ids + list offsets -> [N, max_len] int32, keeping the first max_len ids, 0-padded."""
    n = len(offsets) - 1
    lens = np.minimum(np.diff(offsets), max_len)
    out = np.zeros((n, max_len), dtype=np.int32)
    rows = np.repeat(np.arange(n), lens)
    pos = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    out[rows, pos] = ids[np.repeat(offsets[:-1], lens) + pos]
    return out

