"""A trained checkpoint as a predictor: raw rows (a list of dicts, a pyarrow table, a CSV / Parquet file) or
a prepared folder -> the model's tensors (the checkpoint's own encoders) -> predictions and metrics.

Shared by ``dynarec evaluate`` on raw files, ``dynarec predict`` and the HTTP server. Unknown categories
(values unseen in training, mapped to id 0) are counted per feature on every encode."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dynarec.errors import DataError


@dataclass
class Encoded:
    """Rows turned into the model's tensors.

    Attributes:
        table: a ``TensorTable`` (N rows, the model's schema).
        unknown: feature -> number of non-null values unseen in training (mapped to id 0); every sparse and
            sequence feature is present (0 when none); empty for a prepared folder.
        has_labels: False when the rows carried no labels (the label tensors are zeros then).
        unknown_rows: with ``per_row``: Int64[N, F] unknown values of row i in embedded field j
            (``schema.fields`` order; for a sequence, its unknown tokens within ``max_len``), else None.
    """

    table: object
    unknown: dict[str, int] = field(default_factory=dict)
    has_labels: bool = True
    unknown_rows: np.ndarray | None = None


class Predictor:
    """A model in eval mode with its schema and encoders; ``Predictor.load(checkpoint_dir)``.

    Args:
        model: the trained model (eval mode, inference form).
        encoders: the checkpoint's ``Encoders`` (None: it can score prepared folders only).
        name: the registered model name.
        version: a short checksum of the checkpoint file ('' when built in memory).
        checkpoint: where it was loaded from ('' when built in memory).
    """

    def __init__(self, model, encoders=None, name: str = "", version: str = "", checkpoint: str = ""):
        self.model = model
        self.schema = model.schema
        self.encoders = encoders
        self.name = name or getattr(model, "registry_name", "")
        self.version = version
        self.checkpoint = checkpoint
        self._lock = threading.Lock()  # Encoders.transform keeps its unknown counts on the instance

    @classmethod
    def load(cls, checkpoint: str | Path) -> Predictor:
        """The checkpoint folder (or its ``model.pt``) -> a predictor."""
        from dynarec.data.encode import Encoders
        from dynarec.train.checkpoint import load_checkpoint

        model, blob = load_checkpoint(checkpoint)
        enc = Encoders.from_dict(model.schema, blob["encoders"]) if blob.get("encoders") is not None else None
        p = Path(checkpoint)
        f = p / "model.pt" if p.is_dir() else p
        return cls(model, enc, blob["model"], hashlib.sha256(f.read_bytes()).hexdigest()[:12], str(checkpoint))

    # ------------------------------------------------------------------------------------- metadata
    @property
    def tasks(self) -> list[str]:
        return list(self.schema.task_names)

    def feature_columns(self) -> list[str]:
        """The raw columns every row must have (sparse, sequence and dense features)."""
        return [f.name for f in self.schema.features]

    def metadata(self) -> dict:
        """``{model, version, tasks, features, domain, domains}`` (what a server's /metadata shows)."""
        return {"model": self.name, "version": self.version, "tasks": self.tasks, "features": self.feature_columns(),
                "domain": self.schema.domain, "domains": list(self.schema.domain_values)}

    # ------------------------------------------------------------------------------------- encoding
    def encode(self, table: pa.Table, where: str = "rows", labels: bool | None = None,
               per_row: bool = False) -> Encoded:
        """Raw rows -> the model's tensors with the checkpoint's encoders (the one encoder of ``dynarec
        evaluate`` / ``predict`` and of the HTTP server, which calls it once per micro-batch).

        Args:
            table: raw columns (features; labels and the user column optional unless ``labels`` is True).
            where: names the source in error messages (a file path, 'rows').
            labels: True: every task's label column (and the user column) is required; False: labels are
                ignored; None: used when all are present.
            per_row: also count the unknown values of every row (``Encoded.unknown_rows``).
        """
        from dynarec.data.prepare import check_columns, to_tensor_table

        if self.encoders is None:
            raise DataError("checkpoint has no encoders; evaluate it on a prepared folder")
        if table.num_rows == 0:
            raise DataError(f"{where}: no rows")
        check_columns(table, self.feature_columns(), where)
        extra = [t.source for t in self.schema.tasks] + ([self.schema.user] if self.schema.user else [])
        if labels:
            check_columns(table, extra, where)
        has = bool(labels) or (labels is None and all(c in table.column_names for c in extra))
        with self._lock:
            cols = self.encoders.transform(table, where, labels=has)
            unknown = dict(self.encoders.unknown_counts)
        tt = to_tensor_table(self.schema, cols)
        return Encoded(tt, unknown, has, _unknown_rows(self.schema, table, tt, unknown) if per_row else None)

    def inputs(self, encoded: Encoded) -> tuple:
        """The positional tensors of the exported programs (``sparse``, [``dense``], sequences...)."""
        from dynarec.data.table import Batch
        from dynarec.serve.export import batch_inputs

        tt = encoded.table
        return batch_inputs(self.schema, Batch(tt.sparse, tt.dense, tt.domain, {}, tt.sequences))

    def encode_rows(self, rows: list[dict], labels: bool | None = None) -> Encoded:
        """JSON-like rows (``[{"user_id": "u1", "item_price": 3.5, ...}]``) -> the model's tensors."""
        if not rows:
            raise DataError("rows: no rows")
        try:
            table = pa.Table.from_pylist(list(rows))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise DataError(f"rows: values of one column have mixed types ({str(e).splitlines()[0]})") from None
        return self.encode(table, "rows", labels)

    def encode_file(self, path: str | Path, labels: bool | None = None) -> Encoded:
        """A raw CSV / Parquet file -> the model's tensors."""
        from dynarec.data.prepare import read_raw

        if self.encoders is None:
            raise DataError("checkpoint has no encoders; evaluate it on a prepared folder")
        table = read_raw(path, self.schema, labels=labels is not False)
        enc = self.encode(table, str(path), labels)
        import torch

        enc.table.row = torch.arange(table.num_rows)  # the raw row index of every row
        return enc

    def load_data(self, data: str | Path, split: str = "test", labels: bool | None = True) -> Encoded:
        """A prepared folder (its ``split``, which must use the checkpoint's encoders) or a raw file."""
        from dynarec.data.prepare import load_prepared

        p = Path(data)
        if not p.is_dir():
            return self.encode_file(p, labels)
        ps, tables = load_prepared(p, (split,))
        if [f.vocab_size for f in ps.fields] != [f.vocab_size for f in self.schema.fields]:
            raise DataError(f"{p}: prepared with other encoders than the checkpoint's (vocab sizes differ); "
                            "pass the raw data file instead")
        return Encoded(tables[split], {}, True)

    # ------------------------------------------------------------------------------------- scoring
    def predict(self, encoded: Encoded, batch_size: int = 65536) -> dict[str, np.ndarray]:
        """task -> Float64[N]: probabilities for binary tasks, values for regression, in row order."""
        from dynarec.metrics import predict_table

        return predict_table(self.model, encoded.table, batch_size)

    def predict_mc(self, encoded: Encoded, n_passes: int, batch_size: int = 65536,
                   seed: int | None = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """MC-dropout (Gal & Ghahramani, ICML 2016): -> (task -> mean Float64[N], task -> variance Float64[N])
        over ``n_passes`` stochastic passes (``dynarec.uncertainty.mc_dropout_predict``)."""
        from dynarec.uncertainty import mc_dropout_predict

        mean, var = mc_dropout_predict(self.model, encoded.table, n_passes, batch_size, seed)
        return ({t: v.double().numpy() for t, v in mean.items()}, {t: v.double().numpy() for t, v in var.items()})

    def predict_rows(self, rows: list[dict], batch_size: int = 65536) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """-> (task -> predictions, feature -> unknown count) for JSON-like rows (labels ignored)."""
        enc = self.encode_rows(rows, labels=False)
        return self.predict(enc, batch_size), enc.unknown

    def metrics(self, encoded: Encoded, batch_size: int = 65536) -> dict:
        """Metrics per task × domain (``dynarec.metrics.evaluate_model``); the rows need labels."""
        from dynarec.metrics import evaluate_model

        if not encoded.has_labels:
            raise DataError("metrics need labels; these rows have none (predict them instead)")
        return evaluate_model(self.model, encoded.table, batch_size)

    def evaluate(self, data: str | Path, split: str = "test", mc_dropout: int = 0) -> dict:
        """The summary ``dynarec evaluate`` prints: ``{model, data, metrics, checkpoint, rows, unknown}``
        (``unknown`` keeps the features with unseen values) plus ``mc_dropout`` with N > 0 passes."""
        enc = self.load_data(data, split)
        summary = {"model": self.name, "data": str(data), "metrics": self.metrics(enc),
                   "checkpoint": self.checkpoint, "rows": len(enc.table),
                   "unknown": {k: v for k, v in enc.unknown.items() if v}}
        if mc_dropout:
            from dynarec.uncertainty import mc_dropout_report

            summary["mc_dropout"] = mc_dropout_report(self.model, enc.table, mc_dropout)
        return summary


def _unknown_rows(schema, table: pa.Table, tt, unknown: dict[str, int]) -> np.ndarray:
    """Int64[N, F]: the unknown values of each row and embedded field; a feature without any unknown value
    in the batch (the common case) costs nothing."""
    import pyarrow.compute as pc

    from dynarec.data.encode import column

    out = np.zeros((len(tt), len(schema.fields)), dtype=np.int64)
    for j, f in enumerate(schema.sparse):
        if unknown.get(f.name):  # id 0 for a value that is not null (nor a null token)
            valid = np.asarray(column(table, f).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            out[:, j] = (tt.sparse[:, j].numpy() == 0) & valid
    for k, f in enumerate(schema.sequences):
        if unknown.get(f.name):  # tokens within max_len minus the known ones
            col = table.column(f.name)
            lens = pc.list_value_length(pc.split_pattern(col, f.separator)).to_numpy(zero_copy_only=False)
            lens = np.minimum(np.nan_to_num(np.asarray(lens, dtype=np.float64)), f.max_len).astype(np.int64)
            lens[np.asarray(pc.equal(col, "").to_numpy(zero_copy_only=False), dtype=bool)] = 0
            out[:, len(schema.sparse) + k] = np.maximum(lens - (tt.sequences[f.name].numpy() != 0).sum(1), 0)
    return out


def write_predictions(checkpoint: str | Path, data: str | Path, out: str | Path, id_column: str | None = None,
                      mc_dropout: int = 0, batch_size: int = 65536) -> dict:
    """``dynarec predict``: one output row per input row of the raw file ``data`` (no labels needed), one
    probability (binary) / value (regression) column per task — the MC-dropout mean plus ``<task>_var`` with
    ``mc_dropout`` passes — and the raw row index ``_row`` (or ``id_column`` copied from the input).
    ``out`` ends in .parquet or .csv; written to a temporary file and renamed. -> {rows, unknown, out}."""
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
    return {"rows": table.num_rows, "unknown": {k: v for k, v in enc.unknown.items() if v}, "out": str(out)}
