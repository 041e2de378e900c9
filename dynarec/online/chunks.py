"""An online pass read in chunks (``online.chunk_mb`` > 0): a pass file of any size is never held whole.

The pass is read twice with pyarrow's streaming readers (:func:`dynarec.data.scan.scan_chunks`, blocks of
``chunk_mb`` of raw text / Parquet batches of about that size), each time re-cut into pieces of exactly one
batch (:func:`dynarec.data.pieces.batch_pieces`) and encoded piece by piece (``encode_rows``):

1. the progressive evaluation: pieces of ``trainer.eval_batch_size`` rows, slots looked up (no admission),
   scored into :func:`dynarec.evalstream.evaluate_stream` (exact metrics while the pass's scores fit
   ``online.eval_budget_mb``, 1024 by default, ~7M rows; else histogram AUC with its error bound, reported as
   ``auc_error_bound``);
2. training: pieces of ``pass_batch(rows)`` rows in file order, each looked up, counted (admission) and
   trained on as one step, so the dynamic index is updated chunk by chunk.

Rows are counted first (a Parquet footer, or a scan of one CSV column) because the pass's batch size
depends on its row count. With ``online.shuffle: false`` the batches, the lookups, the admissions and the
steps are the whole-pass run's, in the same order: the model, the index, the pass metrics and the delta are
equal bit for bit (tested). ``online.shuffle`` permutes a whole pass, which needs it in memory, so it is
refused with ``chunk_mb``. Memory: one chunk, one batch and the metric accumulators, whatever the pass size.
The first pass's static encoders are still fitted on the first file read whole (``fresh_state``).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import torch

from dynarec.data.pieces import batch_pieces
from dynarec.data.scan import scan_chunks
from dynarec.online.schema import encode_rows


def count_rows(path: Path, schema) -> int:
    """Rows of a pass file: its Parquet footer, or a streamed scan of one CSV column."""
    if path.suffix in (".parquet", ".pq"):
        return pq.ParquetFile(path).metadata.num_rows
    col = schema.columns()[:1]
    return sum(t.num_rows for _, t in scan_chunks([path], schema.read, col, block_bytes=16 << 20))


class PassChunks:
    """One pass file, read in chunks: ``len`` rows, :meth:`batches` (what ``evaluate_stream`` consumes) and
    :meth:`train_batches`. ``fill(st, table, raw, idx, train)`` writes slots (the runner's)."""

    def __init__(self, st, path: Path, chunk_mb: float, fill, notes: dict):
        self.st, self.path, self.fill, self.notes = st, Path(path), fill, notes
        self.chunk_bytes = min(max(1 << 12, int(chunk_mb * (1 << 20))), 1 << 30)  # an int32 in pyarrow
        self.rows = count_rows(self.path, st.schema)
        self.raw_piece = None  # the last raw piece read (its column types name the id kinds for serving)

    def __len__(self) -> int:
        return self.rows

    def _encoded(self, batch_size: int):
        st = self.st
        chunks = scan_chunks([self.path], st.schema.read, st.schema.columns(), block_bytes=self.chunk_bytes)
        for start, piece in batch_pieces(chunks, batch_size):
            notes: dict = {}
            table, raw = encode_rows(piece, str(self.path), st.schema, st.encoders, st.dynamic, st.kinds, notes)
            for name, vals in notes.items():  # distinct values hashed, first seen first
                self.notes[name] = list(dict.fromkeys([*self.notes.get(name, []), *vals]))
            self.raw_piece = piece
            yield table, raw

    def batches(self, batch_size: int):
        """The pass's batches for scoring: slots looked up, nothing admitted."""
        for table, raw in self._encoded(batch_size):
            if self.st.index is not None:
                self.fill(self.st, table, raw)
            yield from table.batches(batch_size)

    def train_batches(self, batch_size: int):
        """(batch, raw ids, None) per step, in file order; the caller fills the slots with admission."""
        for table, raw in self._encoded(batch_size):
            yield table.take(torch.arange(len(table))), raw, None
