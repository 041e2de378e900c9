"""Out-of-core prepare: a prepared folder from raw data of any size (a file, a glob or a folder of CSV /
Parquet files) in memory bounded by ``memory_mb``, whatever the row count.

Passes over the files (``scan.py``): for a temporal split, one pass for the timestamp cut; the fit pass
(``fitpass.py``: vocabularies, numeric statistics, quantiles, label checks, rows per split); the encode pass,
which encodes each chunk with the fitted encoders (the same ``Encoders.transform`` as the in-memory prepare)
and writes each split as sharded Parquet: ``train.parquet/part-00000.parquet ...`` (``shard_rows`` rows per
file, ``row_group_rows`` per row group: the unit the streamed reader, ``loader.py``, reads and shuffles).
``load_prepared`` reads such a folder as it reads the one-file layout. Splits are decided row by row
(``rowsplit.py``): ``temporal`` and ``column`` give the in-memory prepare's rows; ``random``,
``stratified`` and ``group`` are hashes (the same fractions and seed, other rows than the in-memory
permutation). ``__user__`` (gAUC groups) holds a 64-bit hash of the user's text instead of per-split ids.

Example::

    rows = prepare_out_of_core("logs/*.csv", Schema.load("schema.yaml"), "prepared/", split="temporal")
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynarec.data.fitpass import FitPass
from dynarec.data.rowsplit import TemporalCut, column_split, group_split, random_split, text_hash
from dynarec.data.scan import Progress, resolve_inputs, scan_chunks
from dynarec.data.schema import Schema
from dynarec.data.sketch import QuantileSketch
from dynarec.data.split import SPLITS, SplitSpec, _cuts, parse_split
from dynarec.errors import ConfigError, DataError

ROW = "_row"
SHARD_ROWS = 1 << 20
ROW_GROUP_ROWS = 1 << 16


def budget_plan(memory_mb: float, n_sketches: int) -> dict:
    """Chunk size and sketch capacity from the memory budget. pyarrow's streaming CSV reader reads about 32-40
    blocks ahead on its IO thread whatever the file (measured on 10M rows: 159-170 MB of pool at 4 MB blocks,
    43 MB at 1 MB, as fast; a file smaller than that window is held whole, so at 4 MB blocks the scan's memory
    grew with the file up to ~160 MB: docs/out_of_core.md), so a block is 1/1024 of the budget (1 MB at 1 GB;
    256 kB to 4 MB); each quantile sketch holds at most ``cap`` (<= 2^20) (value, weight) pairs of 16 bytes,
    x2 pending, x3 while merging."""
    b = int(memory_mb * (1 << 20))
    block = int(min(4 << 20, max(256 << 10, b // 1024)))
    cap = int(max(1 << 12, min(1 << 20, (b // 4) // (48 * max(1, n_sketches)))))
    return {"block_bytes": block, "cap": cap}


class Splitter:
    """Split code (0 train, 1 valid, 2 test) of each row of a chunk."""

    def __init__(self, spec: SplitSpec, schema: Schema, cut: TemporalCut | None = None):
        self.spec, self.schema, self.cut = spec, schema, cut
        m = spec.method
        if m == "leave_last_out":
            raise ConfigError("split: leave_last_out needs every row of a user at once; the out-of-core prepare "
                              "offers random, stratified, temporal, group and column")
        if m == "column" and not spec.by:
            raise ConfigError("split: 'column' needs the split column: column:COLUMN")
        self.col = {"temporal": spec.by or schema.timestamp, "group": spec.by or schema.user,
                    "column": spec.by}.get(m)
        if m == "temporal" and not self.col:
            raise DataError("temporal split needs 'timestamp' in the schema (or temporal:COLUMN)")
        if m == "group" and not self.col:
            raise DataError("group split needs 'user' in the schema (or group:COLUMN)")

    def __call__(self, start: int, chunk: pa.Table, where: str) -> np.ndarray:
        m, fr, seed = self.spec.method, self.spec.fractions, self.spec.seed
        if m in ("random", "stratified"):
            return random_split(np.arange(start, start + chunk.num_rows), fr, seed)
        if m == "group":
            return group_split(chunk.column(self.col), fr, seed)
        if m == "column":
            return column_split(chunk.column(self.col), self.col, where)
        return self.cut(timestamps(chunk, self.col, where))


def timestamps(chunk: pa.Table, col: str, where: str) -> np.ndarray:
    ts = chunk.column(col)
    if ts.null_count:
        raise DataError(f"{where}: timestamp column '{col}' has {ts.null_count} missing value(s); a temporal "
                        f"split needs a time for every row")
    return np.asarray(ts.to_numpy(), dtype=np.float64)


class ShardWriter:
    """One split's encoded rows as ``<split>.parquet/part-NNNNN.parquet``: full row groups of
    ``row_group_rows`` (rows are buffered until one is full), a new file every ``shard_rows`` rows."""

    def __init__(self, folder: Path, shard_rows: int = SHARD_ROWS, row_group_rows: int = ROW_GROUP_ROWS,
                 prefix: str = "part-"):
        self.folder, self.shard_rows, self.rg, self.prefix = folder, shard_rows, row_group_rows, prefix
        folder.mkdir(parents=True, exist_ok=True)
        self.buf: list[pa.Table] = []
        self.buffered = self.in_file = self.files = self.rows = 0
        self.writer = None

    def add(self, t: pa.Table) -> None:
        self.buf.append(t)
        self.buffered += t.num_rows
        while self.buffered >= self.rg:
            self._flush(self.rg)

    def _flush(self, n: int) -> None:
        t = pa.concat_tables(self.buf).combine_chunks()
        head, rest = t.slice(0, n), t.slice(n)
        self.buf, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.folder / f"{self.prefix}{self.files:05d}.parquet", head.schema)
            self.files += 1
        self.writer.write_table(head, row_group_size=n)
        self.in_file += n
        self.rows += n
        if self.in_file >= self.shard_rows:
            self.writer.close()
            self.writer, self.in_file = None, 0

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)
        if self.writer is not None:
            self.writer.close()


def _counts(sk: QuantileSketch) -> tuple[np.ndarray, np.ndarray]:
    v, w = sk.summary()
    return v, np.rint(w).astype(np.int64)


def to_arrow(cols: dict[str, np.ndarray]) -> pa.Table:
    arrays = {}
    for k, v in cols.items():
        arrays[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]) if v.ndim == 2 \
            else pa.array(v)
    return pa.table(arrays)


def check_fit(fit: FitPass, where: str, spec: SplitSpec) -> None:
    """The whole-input checks after the fit pass (label rules, NaN policy, no empty split)."""
    total = int(fit.rows.sum())
    fit.check(where, total)
    for k, s in enumerate(SPLITS):
        if fit.rows[k] == 0:
            raise DataError(f"{where}: split '{s}' would be empty ({total} row(s), split {spec.describe()}); "
                            f"use more rows or other fractions")


def encode_chunk(enc, schema: Schema, code: np.ndarray, start: int, chunk: pa.Table, writers: dict) -> None:
    """Encode ``chunk`` (raw rows ``start...``) split by ``code`` into ``writers[split]``: a pure function of
    (encoders, chunk, split codes) but for the writers."""
    for k, s in enumerate(SPLITS):
        idx = np.flatnonzero(code == k)
        if not len(idx):
            continue
        part = chunk.take(pa.array(idx))
        encoded = enc.transform(part, s)
        if "__user__" in encoded:
            encoded["__user__"] = text_hash(part.column(schema.user)).view(np.int64)
        encoded[ROW] = (idx + start).astype(np.int64)
        writers[s].add(to_arrow(encoded))


def write_meta(tmp: Path, schema: Schema, enc, spec: SplitSpec, fit: FitPass, rows: dict, files: list,
               **extra) -> None:
    """schema.json, encoders.json and split.json of an out-of-core prepared folder."""
    schema.save(tmp / "schema.json")
    (tmp / "encoders.json").write_text(json.dumps(enc.to_dict()))
    info = {**asdict(spec), "rows": rows, "method_rows": "per-row hash" if spec.method in
            ("random", "stratified", "group") else "exact", "out_of_core": True,
            "quantiles_exact": fit.exact, "quantile_rank_error": fit.quantile_error(), **extra,
            "files": [str(f) for f in files]}
    (tmp / "split.json").write_text(json.dumps(info))


def prepare_out_of_core(source: str | Path, schema: Schema, out: str | Path, split: str | SplitSpec = "random",
                        fractions=(0.8, 0.1, 0.1), seed: int = 0, fmt: str | None = None,
                        memory_mb: float = 1024, progress: bool = True, shard_rows: int = SHARD_ROWS,
                        row_group_rows: int = ROW_GROUP_ROWS, block_bytes: int | None = None) -> dict:
    """Prepare ``source`` (a file, glob or folder) into ``out`` (see the module docstring).

    Returns ``{"rows": {split: n}, "exact": bool, "quantile_rank_error": {column: bound}, "rows_per_s":
    the fit pass's rate}``. ``block_bytes``: the raw chunk size (default: from ``memory_mb``). Raw rows are
    numbered across the files in sorted order (``_row``). On a multi-worker engine: ``distprep.py``."""
    from dynarec.outdir import atomic_dir

    files = resolve_inputs(source)
    where = str(source)
    spec = parse_split(split, fractions, seed)
    fit = FitPass(schema)
    plan = budget_plan(memory_mb, len(fit.sketches) + (spec.method == "temporal"))
    if block_bytes:
        plan["block_bytes"] = int(block_bytes)
    fit = FitPass(schema, plan["cap"])
    cols = schema.columns() + ([spec.by] if spec.by and spec.method in ("temporal", "group", "column") else [])
    scan = lambda label: scan_chunks(files, schema.read, cols, fmt, plan["block_bytes"],  # noqa: E731
                                     Progress(label, progress))
    splitter = Splitter(spec, schema)
    if spec.method == "temporal":
        sk, n = QuantileSketch(plan["cap"]), 0
        for start, chunk in scan("prepare: time cut"):
            ts = timestamps(chunk, splitter.col, where)
            sk.add(ts)
            n += len(ts)
        a, b = _cuts(n, spec.fractions)
        splitter.cut = TemporalCut(*_counts(sk), a, b)
    prog = Progress("prepare: fit pass", progress)
    for start, chunk in scan_chunks(files, schema.read, cols, fmt, plan["block_bytes"], prog):
        fit.add(chunk, splitter(start, chunk, where), where)
    prog.done()
    fit_rate = prog.rate
    check_fit(fit, where, spec)
    enc = fit.encoders()
    if spec.method == "temporal":  # the encode pass consumes the tie quotas again from the start
        splitter.cut = TemporalCut(*_counts(sk), a, b)
    with atomic_dir(out, ("schema.json",), "prepared data") as tmp:
        writers = {s: ShardWriter(tmp / f"{s}.parquet", shard_rows, row_group_rows) for s in SPLITS}
        prog = Progress("prepare: encode pass", progress)
        for start, chunk in scan_chunks(files, schema.read, cols, fmt, plan["block_bytes"], prog):
            encode_chunk(enc, schema, splitter(start, chunk, where), start, chunk, writers)
        prog.done()
        for w in writers.values():
            w.close()
        rows = {s: writers[s].rows for s in SPLITS}
        write_meta(tmp, schema, enc, spec, fit, rows, files, shard_rows=shard_rows, row_group_rows=row_group_rows)
    return {"rows": rows, "exact": fit.exact, "quantile_rank_error": fit.quantile_error(),
            "rows_per_s": fit_rate}


def prepare_input_out_of_core(source: str, out: str | Path, schema_file: str | None, raw: str | None = None,
                              fmt: str | None = None, options: bool = False, split: str | SplitSpec = "random",
                              fractions=(0.8, 0.1, 0.1), seed: int = 0, memory_mb: float = 1024) -> dict:
    """``dynarec data prepare --out-of-core`` (and any glob / folder input): checks the arguments the way
    ``prepare_input`` does, then :func:`prepare_out_of_core` with a progress line on stderr."""
    check_input_args(raw, schema_file, options, memory_mb)
    return prepare_out_of_core(source, Schema.load(schema_file), out, split, fractions, seed, fmt, memory_mb)


def check_input_args(raw: str | None, schema_file: str | None, options: bool, memory_mb: float) -> None:
    """The CLI arguments an out-of-core prepare refuses (one DataError each)."""
    if raw:
        raise DataError("data prepare: --out-of-core reads data files with --schema, not a named dataset with --raw")
    if not schema_file:
        raise DataError("data prepare: --schema FILE is required for a data file")
    if options:
        raise DataError("data prepare: --option applies to a named dataset (with --raw); a data file takes its "
                        "reading options from the schema's read: section")
    if not memory_mb > 0:
        raise DataError(f"data prepare: --memory-budget must be a positive number of MB, got {memory_mb}")
