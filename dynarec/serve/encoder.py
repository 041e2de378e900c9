"""The one raw-row encoder of ``dynarec evaluate`` (raw files), ``dynarec predict`` and the server: raw rows (a
pyarrow table) -> the model's tensors through the checkpoint's :meth:`Encoders.transform` (the encoder that
prepared the training data), the ids of an online pass's dynamic features through a plug-in
(:class:`dynarec.serve.dynamic_ids.SlotLookup`), unknown values counted per feature (and per row for a
server's answers), and a value that no float32 holds refused with the column named (by the numeric encoder,
:mod:`dynarec.data.numeric`). One path, so the three
cannot disagree."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.encode import _seq_values, column, pad_sequences
from dynarec.data.read import as_text, null_tokens
from dynarec.errors import DataError


@dataclass
class Encoded:
    """Rows turned into the model's tensors.

    Attributes:
        table: a ``TensorTable`` (N rows, the model's schema).
        unknown: feature -> number of non-null values unseen in training (mapped to id 0; for a dynamic
            feature: ids without a slot); every sparse and sequence feature is present (0 when none); empty
            for a prepared folder.
        has_labels: False when the rows carried no labels (the label tensors are zeros then).
        unknown_rows: with ``per_row``: Int64[N, F] unknown values of row i in embedded field j
            (``schema.fields`` order; for a sequence, its unknown tokens within ``max_len``), else None.
    """

    table: object
    unknown: dict[str, int] = field(default_factory=dict)
    has_labels: bool = True
    unknown_rows: np.ndarray | None = None


class RowEncoder:
    """``encoders`` (the checkpoint's ``Encoders``) plus, for an online pass, ``dynamic`` (a ``SlotLookup``).

    Example::

        enc = RowEncoder(schema, encoders).encode(pa.table({...raw columns...}), "rows.csv", labels=False)
        enc.table.sparse, enc.unknown  # Long [N, S], {feature: unseen values}
    """

    def __init__(self, schema, encoders, dynamic=None):
        self.schema = schema
        self.encoders = encoders
        self.dynamic = dynamic
        self._lock = threading.Lock()  # Encoders.transform keeps its unknown counts on the instance

    def encode(self, table: pa.Table, where: str, labels: bool, per_row: bool = False) -> Encoded:
        """``table``'s raw columns -> :class:`Encoded` (labels encoded too when ``labels``)."""
        from dynarec.data.prepare import to_tensor_table

        with self._lock, np.errstate(over="ignore", invalid="ignore"):
            cols = self.encoders.transform(table, where, labels=labels)
            unknown = dict(self.encoders.unknown_counts)
        fields = self.schema.fields
        rows = np.zeros((table.num_rows, len(fields)), dtype=np.int64) if per_row else None
        dyn = set(self.dynamic.features) if self.dynamic is not None else set()
        for j, f in enumerate(fields):
            if f.name in dyn:
                cols[f.name], miss = self.dynamic.encode(table, f)
                unknown[f.name] = int(miss.sum())
                if per_row:
                    rows[:, j] = miss.reshape(table.num_rows, -1).sum(1)
            elif per_row and unknown.get(f.name) and f.kind in ("sparse", "sequence") and not f.bucketised:
                rows[:, j] = _unknown_per_row(table, f, cols[f.name])
        return Encoded(to_tensor_table(self.schema, cols), unknown, labels, rows)


def _unknown_per_row(table: pa.Table, f, ids: np.ndarray) -> np.ndarray:
    """Per row: non-null values that got id 0 (unseen in training), the definition of
    ``CategoricalEncoder.transform``'s count; for a sequence, within its first ``max_len`` tokens."""
    if f.kind == "sparse":
        valid = pc.is_valid(as_text(column(table, f))).to_numpy(zero_copy_only=False)
        return (valid & (ids == 0)).astype(np.int64)
    if f.text:  # a text column's tokens, as the encoders read them
        from dynarec.data.text import tokenize

        flat, offs = tokenize(table.column(f.name), f)
    else:
        flat, offs = _seq_values(table.column(f.name), f.separator)
    valid = pc.is_valid(null_tokens(flat, f.null_values)).to_numpy(zero_copy_only=False).astype(np.int32)
    return ((pad_sequences(valid, offs, f.max_len) == 1) & (ids == 0)).sum(1).astype(np.int64)
