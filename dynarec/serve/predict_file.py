"""``dynarec predict``: a raw file scored row by row into a Parquet / CSV file (written beside, then renamed)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from dynarec.errors import DataError
from dynarec.serve.predictor import Predictor


def write_predictions(checkpoint: str | Path, data: str | Path, out: str | Path, id_column: str | None = None,
                      mc_dropout: int = 0, batch_size: int = 65536) -> dict:
    """``dynarec predict``: one output row per input row of the raw file ``data`` (no labels needed), one
    probability (binary) / value (regression) column per task — the MC-dropout mean plus ``<task>_var`` with
    ``mc_dropout`` passes — and the raw row index ``_row`` (or ``id_column`` copied from the input).
    ``out`` ends in .parquet or .csv; written to a temporary file and renamed. -> {rows, unknown, out}.

    Example::

        write_predictions("runs/pepnet", "new_rows.csv", "scores.parquet", id_column="request_id")
    """
    import os

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from dynarec.data.prepare import read_table

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
    pred = Predictor.load(checkpoint)
    ids = None
    if id_column:
        raw = read_table(p, columns=None, options=pred.schema.read)
        if id_column not in raw.column_names:
            raise DataError(f"{p}: --id-column '{id_column}' is not a column (have: {', '.join(raw.column_names)})")
        ids = raw.column(id_column)
    enc = pred.encode_file(p, labels=False)
    cols = {id_column: ids} if ids is not None else {"_row": pa.array(enc.table.row.numpy())}
    if mc_dropout:
        mean, var = pred.predict_mc(enc, mc_dropout, batch_size)
        for t in pred.tasks:
            cols[t], cols[f"{t}_var"] = pa.array(mean[t]), pa.array(var[t])
    else:
        for t, v in pred.predict(enc, batch_size).items():
            cols[t] = pa.array(v)
    table = pa.table(cols)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    (pq.write_table if out.suffix == ".parquet" else pacsv.write_csv)(table, tmp)
    os.replace(tmp, out)
    return {"rows": table.num_rows, "unknown": {k: v for k, v in enc.unknown.items() if v}, "out": str(out),
            "dynamic": pred.dynamic.features if pred.dynamic is not None else []}
