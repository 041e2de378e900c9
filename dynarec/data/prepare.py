"""Read raw CSV / Parquet, split (random or temporal), fit encoders on train, write a prepared folder:
``train.parquet``, ``valid.parquet``, ``test.parquet`` (encoded columns), ``schema.json``, ``encoders.json``.
Preparation runs once; training and evaluation load tensors straight from the prepared folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from dynarec.data.encode import Encoders
from dynarec.data.schema import Schema
from dynarec.data.table import TensorTable
from dynarec.errors import DataError

SPLITS = ("train", "valid", "test")


def read_table(path: str | Path, fmt: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a CSV or Parquet file with pyarrow; clear errors for missing / empty / truncated files."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    fmt = fmt or ("parquet" if p.suffix in (".parquet", ".pq") else "csv")
    if p.is_file() and p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    try:
        if fmt == "parquet":
            t = pq.read_table(p)
        elif fmt == "csv":
            t = pacsv.read_csv(p)
        else:
            raise DataError(f"{p}: unknown format '{fmt}' (expected csv or parquet)")
    except (pa.ArrowInvalid, OSError) as e:
        msg = str(e).splitlines()[0]
        kind = "truncated or not a parquet file" if fmt == "parquet" else "not a readable CSV file"
        raise DataError(f"{p}: {kind} ({msg})") from None
    if t.num_rows == 0:
        raise DataError(f"{p}: file has no rows")
    if columns:
        check_columns(t, columns, str(p))
    return t


def check_columns(t: pa.Table, columns: list[str], where: str) -> None:
    have = set(t.column_names)
    for c in columns:
        if c not in have:
            import difflib

            close = difflib.get_close_matches(c, list(have), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(f"{where}: missing column '{c}' required by the schema{hint}")


def split_indices(t: pa.Table, schema: Schema, how: str = "random", fractions=(0.8, 0.1, 0.1),
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint train / valid / test row indices; ``temporal`` orders by ``schema.timestamp``."""
    n = t.num_rows
    if how == "random":
        order = np.random.default_rng(seed).permutation(n)
    elif how == "temporal":
        if not schema.timestamp:
            raise DataError("temporal split needs 'timestamp' in the schema")
        check_columns(t, [schema.timestamp], "data")
        order = np.argsort(t.column(schema.timestamp).to_numpy(zero_copy_only=False), kind="stable")
    else:
        raise DataError(f"unknown split '{how}' (expected random or temporal)")
    a = int(round(fractions[0] * n))
    b = a + int(round(fractions[1] * n))
    return {"train": np.sort(order[:a]) if how == "random" else order[:a],
            "valid": order[a:b], "test": order[b:]}


def prepare_table(t: pa.Table, schema: Schema, out: str | Path | None = None, split: str = "random",
                  fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, TensorTable]:
    """Split, fit on train, encode every split; write the prepared folder when ``out`` is given."""
    check_columns(t, schema.columns(), "data")
    idx = split_indices(t, schema, split, fractions, seed)
    enc = Encoders(schema).fit(t.take(pa.array(idx["train"])), "train")
    encoded = {s: enc.transform(t.take(pa.array(idx[s])), s) for s in SPLITS}
    if out is not None:
        write_prepared(out, schema, enc, encoded)
    return {s: to_tensor_table(schema, encoded[s]) for s in SPLITS}


def write_prepared(out: str | Path, schema: Schema, enc: Encoders, encoded: dict[str, dict[str, np.ndarray]]) -> None:
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


def to_tensor_table(schema: Schema, cols: dict[str, np.ndarray]) -> TensorTable:
    n = len(cols[schema.task_names[0]])
    sparse = torch.from_numpy(np.stack([cols[f.name] for f in schema.sparse], 1).astype(np.int64)) \
        if schema.sparse else torch.zeros(n, 0, dtype=torch.long)
    dense_cols = []
    for f in schema.dense:
        dense_cols.append(cols[f.name])
        if f.missing_indicator:
            dense_cols.append(cols[f.name + "__missing"])
    dense = torch.from_numpy(np.stack(dense_cols, 1)) if dense_cols else torch.zeros(n, 0)
    seqs = {f.name: torch.from_numpy(cols[f.name].astype(np.int64)) for f in schema.sequences}
    labels = {t: torch.from_numpy(cols[t]) for t in schema.task_names}
    user = torch.from_numpy(cols["__user__"]) if "__user__" in cols else None
    return TensorTable(schema, sparse, dense, labels, seqs, user)


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
        cols = {}
        for name in t.column_names:
            c = t.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(c.type):
                cols[name] = np.require(c.flatten().to_numpy().reshape(len(c), c.type.list_size), requirements="W")
            else:
                cols[name] = np.require(c.to_numpy(zero_copy_only=False), requirements="W")  # torch needs writable
        out[s] = to_tensor_table(schema, cols)
    return schema, out


def load_encoders(path: str | Path, schema: Schema) -> Encoders:
    return Encoders.from_dict(schema, json.loads((Path(path) / "encoders.json").read_text()))


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
