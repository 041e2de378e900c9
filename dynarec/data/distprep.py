"""The out-of-core prepare with its per-file work on a multi-worker engine (``engines.py``: ``dask``, or
``local`` in this process). The fit statistics are mergeable and encoding is a pure function of (encoders,
chunk), so each input file is one task:

1. rows per file (Parquet: its footer; CSV: a scan) -> each file's first raw row index;
2. the fit pass of each file (``FitPass(log=True)``, the same chunks as the one-process scan, since chunks
   never span files), merged on the driver in file order (:meth:`FitPass.merge`: the same vocabularies,
   bucket edges and float moments as one pass while the quantiles are exact);
3. the encode pass of each file, written by its worker as ``<split>.parquet/part-FFFFF-NNNNN.parquet``
   (file FFFFF's NNNNN-th shard): read in name order, each split holds the one-process prepare's rows in its
   order. The row groups are the one-process prepare's but for the last one of each input file.

The workers write into the output folder's staging directory, so workers on other machines need the inputs
and the output at the same paths. ``temporal`` splits are refused here (the tie quotas at the cut are
consumed in raw row order across files): use ``--engine local``.

Example::

    with open_engine("dask", workers=2) as eng:
        prepare_on_engine(eng, "logs/", Schema.load("schema.yaml"), "prepared/", split="random")
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from dynarec.data.fitpass import FitPass
from dynarec.data.outofcore import (ROW_GROUP_ROWS, SHARD_ROWS, ShardWriter, Splitter, budget_plan, check_fit,
                                    check_input_args, encode_chunk, write_meta)
from dynarec.data.scan import Progress, resolve_inputs, scan_chunks
from dynarec.data.schema import Schema
from dynarec.data.split import SPLITS, parse_split
from dynarec.errors import ConfigError


def _columns(schema: Schema, spec) -> list[str]:
    return schema.columns() + ([spec.by] if spec.by and spec.method in ("group", "column") else [])


def count_rows(f: Path, options, cols: list[str], fmt: str | None, block: int) -> int:
    """Rows of one input file (a Parquet footer, or a scan of the CSV with the schema's read options)."""
    if (fmt or "").lower() == "parquet" or (fmt is None and f.suffix.lower() in (".parquet", ".pq")):
        return pq.ParquetFile(f).metadata.num_rows
    return sum(t.num_rows for _, t in scan_chunks([f], options, cols, fmt, block))


def fit_file(f: Path, first: int, schema: Schema, spec, cols, fmt, block: int, cap: int) -> FitPass:
    """The fit pass over one file whose first raw row is ``first``."""
    fit, splitter = FitPass(schema, cap, log=True), Splitter(spec, schema)
    for start, chunk in scan_chunks([f], schema.read, cols, fmt, block):
        fit.add(chunk, splitter(first + start, chunk, str(f)), str(f))
    return fit


def encode_file(k: int, f: Path, first: int, schema: Schema, enc, spec, cols, fmt, block: int, tmp: Path,
                shard_rows: int, row_group_rows: int) -> dict:
    """The encode pass over input file ``k``: its rows of each split as ``part-KKKKK-NNNNN.parquet``."""
    splitter = Splitter(spec, schema)
    writers = {s: ShardWriter(tmp / f"{s}.parquet", shard_rows, row_group_rows, prefix=f"part-{k:05d}-")
               for s in SPLITS}
    for start, chunk in scan_chunks([f], schema.read, cols, fmt, block):
        encode_chunk(enc, schema, splitter(first + start, chunk, str(f)), first + start, chunk, writers)
    for w in writers.values():
        w.close()
    return {s: w.rows for s, w in writers.items()}


def prepare_on_engine(engine, source, schema: Schema, out, split="random", fractions=(0.8, 0.1, 0.1),
                      seed: int = 0, fmt: str | None = None, memory_mb: float = 1024, progress: bool = True,
                      shard_rows: int = SHARD_ROWS, row_group_rows: int = ROW_GROUP_ROWS,
                      block_bytes: int | None = None) -> dict:
    """``prepare_out_of_core``'s result, with the per-file work on ``engine`` (see the module docstring)."""
    from dynarec.outdir import atomic_dir

    files, where = resolve_inputs(source), str(source)
    spec = parse_split(split, fractions, seed)
    if spec.method == "temporal":
        raise ConfigError(f"data prepare: a temporal split on --engine {engine.name} is not offered (its cut's "
                          f"ties are taken in raw row order across files); use --engine local")
    Splitter(spec, schema)  # refuses leave_last_out and a column split without its column, here
    plan = budget_plan(memory_mb, len(FitPass(schema).sketches))
    block, cols = int(block_bytes or plan["block_bytes"]), _columns(schema, spec)
    prog = Progress(f"prepare ({engine.name}, {len(files)} files)", progress)
    counts = engine.map(count_rows, [(f, schema.read, cols, fmt, block) for f in files])
    firsts = [sum(counts[:i]) for i in range(len(files))]
    parts = engine.map(fit_file, [(f, a, schema, spec, cols, fmt, block, plan["cap"]) for f, a in zip(files, firsts)])
    fit = FitPass(schema, plan["cap"])
    for p in parts:  # in file order
        fit.merge(p)
    del parts
    prog.advance(sum(counts))
    check_fit(fit, where, spec)
    enc = fit.encoders()
    with atomic_dir(out, ("schema.json",), "prepared data") as tmp:
        per_file = engine.map(encode_file, [(k, f, a, schema, enc, spec, cols, fmt, block, tmp, shard_rows,
                                             row_group_rows) for k, (f, a) in enumerate(zip(files, firsts))])
        rows = {s: sum(r[s] for r in per_file) for s in SPLITS}
        write_meta(tmp, schema, enc, spec, fit, rows, files, shard_rows=shard_rows, row_group_rows=row_group_rows,
                   engine=engine.name)
    prog.done()
    return {"rows": rows, "exact": fit.exact, "quantile_rank_error": fit.quantile_error(), "rows_per_s": prog.rate}


def prepare_input_on_engine(engine_name: str, source: str, out, schema_file: str | None, raw=None, fmt=None,
                            options: bool = False, split="random", fractions=(0.8, 0.1, 0.1), seed: int = 0,
                            memory_mb: float = 1024, workers: int = 2) -> dict:
    """``dynarec data prepare --engine NAME``: the argument checks, then :func:`prepare_on_engine` on a
    started engine (an unknown name fails first, in one line)."""
    from dynarec.data.engines import open_engine

    eng = open_engine(engine_name, workers)
    check_input_args(raw, schema_file, options, memory_mb)
    schema = Schema.load(schema_file)
    with eng:
        return prepare_on_engine(eng, source, schema, out, split, fractions, seed, fmt, memory_mb)
