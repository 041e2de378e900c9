"""Read raw CSV / Parquet, split (``split.py``), fit encoders on train, write a prepared folder:
``train.parquet``, ``valid.parquet``, ``test.parquet`` (encoded columns + ``_row``, the raw row index),
``schema.json``, ``encoders.json``, ``split.json`` (how it was split). Preparation runs once; training and
evaluation load tensors straight from the prepared folder."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dynarec.data.fingerprint import TrainRows
from dynarec.data.encode import Encoders
from dynarec.data.labels import check_label_rules
from dynarec.data.rawchecks import check_raw_values
from dynarec.data.read import check_columns, read_table
from dynarec.data.schema import Schema
from dynarec.data.split import SPLITS, SplitSpec, parse_split, split_indices
from dynarec.data.table import TensorTable
from dynarec.errors import DataError

ROW = "_row"  # raw row index of each prepared row (not a feature)
__all__ = ["prepare_table", "prepare_file", "read_raw", "encode_raw", "read_table", "split_indices", "load_prepared",
           "load_encoders", "to_tensor_table", "synthetic_tables", "SPLITS", "ROW"]


def read_raw(path: str | Path, schema: Schema, fmt: str | None = None, labels: bool = True) -> pa.Table:
    """A raw file read with the schema's ``read:`` options; checks the columns the schema needs (the
    label columns only when ``labels``)."""
    cols = schema.columns()
    if not labels:
        sources = {t.source for t in schema.tasks}
        cols = [c for c in cols if c not in sources or c in {f.name for f in schema.features}]
    return read_table(path, fmt, columns=cols, options=schema.read)


def encode_raw(path: str | Path, schema: Schema, enc: Encoders, labels: bool = True,
               fmt: str | None = None) -> tuple[TensorTable, dict[str, int]]:
    """A raw file encoded with fitted encoders (evaluate / predict): (table whose ``row`` is the raw row
    index, unknown-value counts per feature). ``labels=False``: unlabeled rows (no label columns needed)."""
    t = read_raw(path, schema, fmt, labels)
    cols = enc.transform(t, str(path), labels=labels)
    cols[ROW] = np.arange(t.num_rows, dtype=np.int64)
    return to_tensor_table(schema, cols), dict(enc.unknown_counts)


def prepare_file(path: str | Path, schema: Schema, out: str | Path | None = None, split: str | SplitSpec = "random",
                 fractions=(0.8, 0.1, 0.1), seed: int = 0, fmt: str | None = None) -> dict[str, TensorTable]:
    """``read_raw`` + ``prepare_table``; errors name the file."""
    return prepare_table(read_raw(path, schema, fmt), schema, out, split, fractions, seed, source=str(path))


def prepare_table(t: pa.Table, schema: Schema, out: str | Path | None = None, split: str | SplitSpec = "random",
                  fractions=(0.8, 0.1, 0.1), seed: int = 0, source: str = "data") -> dict[str, TensorTable]:
    """Split, fit on train, encode every split; write the prepared folder when ``out`` is given.

    ``split``: a method (``random``, ``temporal``, ``stratified:TASK``, ``group:COL``, ``column:COL``) or
    a SplitSpec. Each split keeps the raw row index of its rows (``_row``, never a model input)."""
    check_columns(t, schema.columns(), source)
    check_label_rules(t, schema, source)
    check_raw_values(t, schema, source)  # missing domains, dense values: rows of the file, before the split
    spec = parse_split(split, fractions, seed)
    idx = split_indices(t, schema, spec, where=source)
    train = t.take(pa.array(idx["train"]))
    enc = Encoders(schema).fit(train, "train")
    enc.train_rows = TrainRows.fit(train, schema.columns())  # evaluate warns on a file of training rows
    encoded = {s: enc.transform(t.take(pa.array(idx[s])), s) for s in SPLITS}
    for s in SPLITS:
        encoded[s][ROW] = idx[s].astype(np.int64)
    if out is not None:  # written aside and swapped in: no stale file of an earlier dataset, nothing lost on error
        from dynarec.outdir import atomic_dir

        with atomic_dir(out, ("schema.json",), "prepared data") as tmp:
            write_prepared(tmp, schema, enc, encoded, spec)
    return {s: to_tensor_table(schema, encoded[s]) for s in SPLITS}


def write_prepared(out: str | Path, schema: Schema, enc: Encoders, encoded: dict[str, dict[str, np.ndarray]],
                   spec: SplitSpec | None = None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s, cols in encoded.items():
        arrays = {}
        for k, v in cols.items():
            if v.ndim == 2:
                arrays[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
            else:
                arrays[k] = pa.array(v)
        tmp = out / f".{s}.parquet.tmp"
        pq.write_table(pa.table(arrays), tmp)
        os.replace(tmp, out / f"{s}.parquet")
    schema.save(out / "schema.json")
    (out / "encoders.json").write_text(json.dumps(enc.to_dict()))
    if spec is not None:
        (out / "split.json").write_text(json.dumps({**asdict(spec), "rows": {s: len(c[ROW]) for s, c in encoded.items()}}))


def table_columns(t: pa.Table) -> dict[str, np.ndarray]:
    """A prepared table's columns as writable NumPy arrays (torch needs writable memory); fixed-size lists
    (sequences) as [N, L]."""
    cols = {}
    for name in t.column_names:
        c = t.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(c.type):
            cols[name] = np.require(c.flatten().to_numpy().reshape(len(c), c.type.list_size), requirements="W")
        else:
            cols[name] = np.require(c.to_numpy(zero_copy_only=False), requirements="W")
    return cols


def to_tensor_table(schema: Schema, cols: dict[str, np.ndarray]) -> TensorTable:
    n = len(cols[schema.domain])
    sparse = torch.from_numpy(np.stack([cols[f.name] for f in schema.sparse], 1).astype(np.int64)) \
        if schema.sparse else torch.zeros(n, 0, dtype=torch.long)
    dense_cols = []
    for f in schema.dense:
        dense_cols.append(cols[f.name])
        if f.missing_indicator:
            dense_cols.append(cols[f.name + "__missing"])
    dense = torch.from_numpy(np.stack(dense_cols, 1)) if dense_cols else torch.zeros(n, 0)
    seqs = {f.name: torch.from_numpy(cols[f.name].astype(np.int64)) for f in schema.sequences}
    labels = {t: torch.from_numpy(cols[t]) for t in schema.task_names if t in cols}  # none: unlabeled rows
    user = torch.from_numpy(cols["__user__"]) if "__user__" in cols else None
    row = torch.from_numpy(np.asarray(cols[ROW], dtype=np.int64)) if ROW in cols else None
    return TensorTable(schema, sparse, dense, labels, seqs, user, row=row)


def load_prepared(path: str | Path, splits=SPLITS) -> tuple[Schema, dict[str, TensorTable]]:
    p = Path(path)
    if not (p / "schema.json").exists():
        raise DataError(f"{p}: not a prepared data folder (no schema.json); run `dynarec data prepare` first")
    schema = Schema.load(p / "schema.json")
    out = {}
    for s in splits:
        f = p / f"{s}.parquet"
        if not f.exists():
            raise DataError(f"{f}: missing split file")
        t = read_table(f, "parquet")
        cols = table_columns(t)
        need = [f.name for f in schema.features] + schema.task_names
        missing = [c for c in need if c not in cols]
        if missing:
            raise DataError(f"{f}: no column '{missing[0]}' although schema.json declares it (a folder mixing "
                            f"two preparations?); prepare it again")
        out[s] = to_tensor_table(schema, cols)
    return schema, out


def load_encoders(path: str | Path, schema: Schema) -> Encoders:
    f = Path(path) / "encoders.json"
    if not f.is_file():
        raise DataError(f"{f}: missing (not a complete prepared folder); run `dynarec data prepare` again")
    try:
        d = json.loads(f.read_text())
        return Encoders.from_dict(schema, d)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{f}: truncated or not an encoders file ({type(e).__name__}: {e})") from None


def write_synthetic(out: str | Path, rows: int, seed: int = 0, split: str | SplitSpec = "random",
                    fractions=(0.8, 0.1, 0.1)) -> dict[str, TensorTable]:
    """The built-in synthetic data as a prepared folder in ``out`` plus its true probabilities
    ``truth_<split>.npz`` (``p_click``, ``p_conversion``), row-aligned with each prepared split.

    Args:
        rows: raw rows before the split. seed: the generator's and the split's seed.
        split, fractions: as :func:`prepare_table`.
    Returns: {split: TensorTable}."""
    from dynarec.data.synthetic import generate, synthetic_schema

    t, truth = generate(rows, seed)
    tables = prepare_table(t, synthetic_schema(), out, split, fractions, seed, source="synthetic data")
    for s, tt in tables.items():
        ix = tt.row.numpy()
        np.savez(Path(out) / f"truth_{s}.npz", p_click=truth["p_click"][ix], p_conversion=truth["p_conversion"][ix])
    return tables


def synthetic_tables(rows: int = 20_000, seed: int = 0, split_seed: int | None = None, **kw):
    """Synthetic data prepared in memory: (schema, {split: TensorTable}, truth per split).

    The quickest way to get real tables in tests: ``schema, tables, truth = synthetic_tables(5000)``."""
    from dynarec.data.synthetic import generate, synthetic_schema

    t, truth = generate(rows, seed, **kw)
    schema = synthetic_schema()
    idx = split_indices(t, schema, "random", seed=seed if split_seed is None else split_seed)
    tables = prepare_table(t, schema, None, "random", seed=seed if split_seed is None else split_seed)
    per_split = {s: {k: v[idx[s]] for k, v in truth.items()} for s in SPLITS}
    return schema, tables, per_split
