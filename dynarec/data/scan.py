"""Chunked reading of raw data of any size: a file, a glob or a folder of CSV / Parquet files, read in
chunks of bounded size with pyarrow's streaming readers (``pyarrow.csv.open_csv`` blocks, Parquet record
batches; both release the GIL), with the schema's ``read:`` options (delimiter, null tokens, encoding,
renames). Chunks carry the raw row index of their first row (rows numbered across the files in order).

Engine: pyarrow, already a dependency; its CSV reader streams fixed-size blocks (memory set by
``block_size``, not by the file) and parses them on its own threads. Polars and DuckDB are not installed
here; measured scan rates are in ``docs/out_of_core.md``.

Example::

    for start, chunk in scan_chunks(resolve_inputs("logs/*.csv"), schema.read, columns=schema.columns()):
        ...  # chunk: a pyarrow Table of at most ~block_bytes of raw text
"""
from __future__ import annotations

import glob as globmod
import sys
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dynarec.data.read import _csv_options, check_columns, null_tokens, rename_columns
from dynarec.errors import DataError

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def resolve_inputs(source: str | Path) -> list[Path]:
    """The files of ``source``: one file, a glob pattern, or a folder (its csv / parquet files at any depth,
    sorted, one format; hidden paths and folders holding a schema.json or model.pt are skipped)."""
    s = str(source)
    p = Path(s)
    if p.is_dir():  # recursively, skipping hidden paths and our own folders (prepared data, runs) inside it
        ours = {f.parent for m in ("schema.json", "model.pt") for f in p.rglob(m)} - {p}
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(p).parts)
                       and not any(d in ours for d in f.parents))
        if not files:
            raise DataError(f"{p}: directory holds no .csv / .parquet file")
        kinds = {SUFFIXES[f.suffix.lower()] for f in files}
        if len(kinds) > 1:
            raise DataError(f"{p}: directory holds both csv and parquet files (e.g. {files[0].name}); give a glob "
                            f"such as '{p}/*.parquet'")
        return files
    if p.is_file():
        return [p]
    if any(ch in s for ch in "*?["):
        files = sorted(Path(f) for f in globmod.glob(s, recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"{s}: no file matches the pattern")
        return files
    raise DataError(f"{p}: file not found")


def _format(f: Path, fmt: str | None) -> str:
    fmt = fmt or SUFFIXES.get(f.suffix.lower(), "csv")
    if fmt not in ("csv", "parquet"):
        raise DataError(f"{f}: unknown format '{fmt}' (expected csv or parquet)")
    return fmt


def _batches(f: Path, fmt: str, options, block_bytes: int) -> Iterator[pa.RecordBatch]:
    if f.stat().st_size == 0:
        raise DataError(f"{f}: file is empty")
    if fmt == "parquet":
        pf = pq.ParquetFile(f)
        rows = max(1024, block_bytes // max(1, pf.metadata.serialized_size // max(1, pf.metadata.num_rows) + 64))
        yield from pf.iter_batches(batch_size=min(rows, 1 << 20))
        return
    kw = _csv_options(options, list(options.null_values or []) if options is not None else [])
    read = kw.get("read_options") or pacsv.ReadOptions()
    read.block_size = int(block_bytes)
    kw["read_options"] = read
    reader = pacsv.open_csv(f, **kw)
    for b in reader:
        yield b


def scan_chunks(files: list[Path], options=None, columns: list[str] | None = None, fmt: str | None = None,
                block_bytes: int = 16 << 20, progress: "Progress | None" = None) -> Iterator[tuple[int, pa.Table]]:
    """(raw index of the chunk's first row, chunk) over ``files`` in order; only ``columns`` (after the
    renames) are kept. Every failure is one DataError naming the file."""
    start = 0
    for f in files:
        ff = _format(f, fmt)
        nulls = list(options.null_values or []) if options is not None else []
        it = _batches(f, ff, options, block_bytes)
        seen = 0
        while True:
            try:
                b = next(it)
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError, LookupError, UnicodeDecodeError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                kind = "truncated or not a parquet file" if ff == "parquet" else "not a readable CSV file"
                raise DataError(f"{f}: {kind} after {seen:,} row(s) ({msg}; a column whose type changes "
                                f"after the first block is one cause)") from None
            t = pa.Table.from_batches([b])
            if ff == "parquet" and nulls:
                t = pa.table({c: null_tokens(t.column(c), nulls) for c in t.column_names})
            if options is not None and options.rename:
                t = rename_columns(t, options.rename, str(f))
            if columns:
                if seen == 0:
                    check_columns(t, columns, str(f))
                t = t.select(list(dict.fromkeys(columns)))
            seen += t.num_rows
            if progress is not None:
                progress.advance(t.num_rows)
            yield start, t
            start += t.num_rows
        if seen == 0:
            raise DataError(f"{f}: file has no rows")


class Progress:
    """One line on stderr, rewritten at most every ``every`` seconds: ``label: N rows, R rows/s``."""

    def __init__(self, label: str, enabled: bool = True, every: float = 1.0, stream=None):
        self.label, self.enabled, self.every = label, enabled, every
        self.stream = stream or sys.stderr
        self.rows, self.t0 = 0, time.perf_counter()
        self.last = self.t0  # the first line after ``every`` seconds: a quick failure prints only its error
        self.shown = False

    @property
    def rate(self) -> float:
        return self.rows / max(time.perf_counter() - self.t0, 1e-9)

    def advance(self, rows: int) -> None:
        self.rows += rows
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every:
            self.last, self.shown = now, True
            self.stream.write(f"\r{self.label}: {self.rows:,} rows, {self.rate:,.0f} rows/s")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.shown:
            self.stream.write(f"\r{self.label}: {self.rows:,} rows, {self.rate:,.0f} rows/s\n")
            self.stream.flush()
