"""A real, time-ordered stream for online training: a loaded dataset cut into passes of equal time span.

``cut_stream`` writes the layout of :func:`dynarec.data.stream.write_stream` (``pass-0000.parquet ...``
sorted by time, and ``schema.yaml`` with the id features marked ``dynamic``), e.g. MovieLens-100K::

    table, schema = load_dataset("movielens", "shared/data/movielens/ml-100k")
    cut_stream(table, schema, passes=10, out="runs/ml100k-stream")
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynarec.data.schema import Schema
from dynarec.data.stream import save_schema_yaml
from dynarec.errors import DataError


def cut_stream(table: pa.Table, schema: Schema, passes: int, out: str | Path,
               dynamic: Sequence[str] | None = None) -> list[Path]:
    """Cut ``table`` by ``schema.timestamp`` into ``passes`` passes of equal time span and write them.

    Args:
        table: raw table (as a dataset loader returns it) with the schema's timestamp column.
        schema: its schema; the written copy marks ``dynamic`` the features named in ``dynamic``
            (default: the user column and every sparse feature whose name ends in ``_id``).
        passes: number of passes (>= 1); pass k holds rows with ts in [t0 + k·span, t0 + (k+1)·span).
        out: folder to write ``pass-NNNN.parquet`` (rows sorted by time, stable) and ``schema.yaml``.
    Returns the pass files in order."""
    ts_col = schema.timestamp
    if not ts_col or ts_col not in table.column_names:
        raise DataError(f"cut_stream: the table has no timestamp column {ts_col!r} (set 'timestamp' in the schema)")
    if passes < 1:
        raise DataError(f"cut_stream: passes must be >= 1, got {passes}")
    names = {f.name for f in schema.features}
    dyn = set(dynamic) if dynamic is not None else \
        {f.name for f in schema.features if f.kind == "sparse" and (f.name == schema.user or f.name.endswith("_id"))}
    unknown = sorted(dyn - names)
    if unknown:
        raise DataError(f"cut_stream: dynamic feature '{unknown[0]}' is not in the schema")
    ts = table.column(ts_col).to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.argsort(ts, kind="stable")
    table, ts = table.take(pa.array(order)), ts[order]
    edges = np.linspace(ts[0], ts[-1], passes + 1) if len(ts) else np.zeros(passes + 1)
    which = np.minimum(np.searchsorted(edges, ts, side="right") - 1, passes - 1)  # last edge joins the last pass
    bounds = np.searchsorted(which, np.arange(passes + 1))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(passes):
        files.append(out / f"pass-{k:04d}.parquet")
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), files[-1])
    marked = Schema(features=[replace(f, dynamic=f.name in dyn) for f in schema.features], tasks=schema.tasks,
                    domain=schema.domain, user=schema.user, timestamp=schema.timestamp,
                    domain_values=schema.domain_values, read=schema.read)
    save_schema_yaml(marked, out / "schema.yaml")
    return files
