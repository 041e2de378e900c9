"""``dynarec predict``: a raw file of any size scored as it is read. The file is read in chunks
(:func:`dynarec.data.scan.scan_chunks`: pyarrow's streaming CSV reader, Parquet record batches), re-cut into
pieces of exactly ``batch_size`` raw rows (:mod:`dynarec.data.pieces`), each encoded by the one row encoder, scored
as one batch and appended to the output (a Parquet row group / CSV rows) in a temporary file beside ``out``,
renamed into place at the end. The batches are the ones a one-shot read of the whole file makes, so the
output equals it row for row and bit for bit whatever the chunk size (MC-dropout aside: its masks are drawn
per batch with the seed = the batch's first raw row). Memory: pyarrow's read-ahead of ``chunk_bytes`` blocks
(about 40 in flight for CSV; 4 MB blocks, as the out-of-core prepare) plus one batch, whatever the file size.
A failure removes the temporary file; an existing ``out`` is replaced only when dynarec wrote it (a Parquet
file with our marker, or a file whose columns are the ones we write)."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from dynarec.errors import DataError
from dynarec.serve.predictor import Predictor

MARKER = b"dynarec.predictions"


def _ours(out: Path, names: list[str]) -> bool:
    """Whether an existing ``out`` is a predictions file dynarec wrote (so it may be replaced)."""
    import pyarrow.parquet as pq

    try:
        if out.suffix == ".parquet":
            s = pq.read_schema(out)
            return MARKER in (s.metadata or {}) or s.names == names
        with open(out, encoding="utf-8", errors="replace") as f:
            return [c.strip().strip('"') for c in f.readline().rstrip("\r\n").split(",")] == names
    except (OSError, pa.ArrowInvalid):
        return False


def write_predictions(checkpoint: str | Path, data: str | Path, out: str | Path, id_column: str | None = None,
                      mc_dropout: int = 0, batch_size: int = 65536, chunk_bytes: int = 4 << 20) -> dict:
    """``dynarec predict``: one output row per input row of the raw file ``data`` (no labels needed), one
    probability (binary) / value (regression) column per task — the MC-dropout mean plus ``<task>_var`` with
    ``mc_dropout`` passes — and the raw row index ``_row`` (or ``id_column`` copied from the input).
    ``out`` ends in .parquet or .csv. Streamed (see the module docstring). -> {rows, unknown, out, dynamic}.

    Example::

        write_predictions("runs/pepnet", "new_rows.csv", "scores.parquet", id_column="request_id")
    """
    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from dynarec.data.pieces import batch_pieces
    from dynarec.data.scan import scan_chunks

    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise DataError(f"--out {out}: expected a .parquet or .csv file name")
    if out.is_dir():
        raise DataError(f"--out {out}: is a folder; expected a .parquet or .csv file name")
    if mc_dropout < 0:
        raise DataError(f"--mc-dropout: expected a number of passes >= 0, got {mc_dropout}")
    p = Path(data)
    if p.is_dir():
        raise DataError(f"{p}: predict reads a raw CSV / Parquet file, got a folder")
    if not p.exists():
        raise DataError(f"{p}: file not found")
    pred = Predictor.load(checkpoint)
    names = [id_column or "_row"] + [c for t in pred.tasks for c in ([t, f"{t}_var"] if mc_dropout else [t])]
    if out.exists() and not _ours(out, names):
        raise DataError(f"--out {out}: exists and is not a predictions file written by dynarec; "
                        "choose another --out (it is not replaced)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer, rows, unknown = None, 0, {}
    try:
        chunks = scan_chunks([p], pred.schema.read, None, block_bytes=min(chunk_bytes, 1 << 30))  # an int32 in pyarrow
        for start, raw in batch_pieces(chunks, batch_size):
            if id_column and id_column not in raw.column_names:
                raise DataError(f"{p}: --id-column '{id_column}' is not a column (have: {', '.join(raw.column_names)})")
            enc = pred.encode(raw, str(p), labels=False)  # names a missing feature column
            cols = {id_column: raw.column(id_column)} if id_column else \
                {"_row": pa.array(np.arange(start, start + raw.num_rows, dtype=np.int64))}
            if mc_dropout:
                mean, var = pred.predict_mc(enc, mc_dropout, batch_size, seed=start)
                for t in pred.tasks:
                    cols[t], cols[f"{t}_var"] = pa.array(mean[t]), pa.array(var[t])
            else:
                for t, v in pred.predict(enc, batch_size).items():
                    cols[t] = pa.array(v)
            table = pa.table(cols)
            if writer is None:
                if out.suffix == ".parquet":
                    table = table.replace_schema_metadata({MARKER: b"1"})
                    writer = pq.ParquetWriter(tmp, table.schema)
                else:
                    writer = pacsv.CSVWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema) if out.suffix == ".parquet" else table)
            rows += table.num_rows
            for k, v in enc.unknown.items():
                unknown[k] = unknown.get(k, 0) + v
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return {"rows": rows, "unknown": {k: v for k, v in unknown.items() if v}, "out": str(out),
            "dynamic": pred.dynamic.features if pred.dynamic is not None else []}
