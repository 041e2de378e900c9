"""Raw chunks of any sizes re-cut into pieces of exactly ``batch_size`` rows (the last one shorter): what a
streamed verb encodes and scores / trains on as one batch, so that its batches are the ones a one-shot read of
the whole file makes (``dynarec predict``, chunked online passes).

Example::

    for start, piece in batch_pieces(scan_chunks([path], schema.read), 4096):
        ...  # piece: a pyarrow Table of 4096 raw rows; start: the raw index of its first row
"""
from __future__ import annotations

from typing import Iterable, Iterator

import pyarrow as pa


def batch_pieces(chunks: Iterable[tuple[int, pa.Table]], batch_size: int) -> Iterator[tuple[int, pa.Table]]:
    """(raw index of the first row, table of ``batch_size`` rows) over ``chunks`` ((start, table) pairs in row
    order, e.g. :func:`dynarec.data.scan.scan_chunks`); the last piece holds the rows left."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    tail, start = None, 0
    for _, t in chunks:
        t = t if tail is None else pa.concat_tables([tail, t])
        full = t.num_rows - t.num_rows % batch_size
        for s in range(0, full, batch_size):
            yield start, t.slice(s, batch_size)
            start += batch_size
        tail = t.slice(full) if full < t.num_rows else None
    if tail is not None and tail.num_rows:
        yield start, tail
