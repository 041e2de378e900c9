"""A trained checkpoint as a predictor: raw rows (a list of dicts, a pyarrow table, a CSV / Parquet file) or
a prepared folder -> the model's tensors (the checkpoint's own encoders) -> predictions and metrics.

Shared by ``dynarec evaluate`` on raw files, ``dynarec predict`` and the HTTP server, all through the one row
encoder (:mod:`dynarec.serve.encoder`). Unknown categories (values unseen in training, mapped to id 0) are
counted per feature on every encode. Loading: :mod:`dynarec.serve.loader`; writing a predictions file:
:mod:`dynarec.serve.predict_file`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from dynarec.errors import DataError
from dynarec.serve.encoder import Encoded, RowEncoder


class Predictor:
    """A model in eval mode with its schema and the one row encoder; ``Predictor.load(path)``.

    Args:
        model: the trained model (eval mode, inference form).
        encoders: the checkpoint's ``Encoders`` (None: it can score prepared folders only).
        name: the registered model name.
        version: a short checksum of the checkpoint file ('' when built in memory).
        checkpoint: where it was loaded from ('' when built in memory).
        dynamic: an online pass's ``SlotLookup`` (raw ids -> slots of its dynamic features), or None.
        online: ``{pass, file, folder, dynamic}`` of an online pass, or None.

    Example::

        p = Predictor.load("runs/pepnet")  # a checkpoint, an online run or one of its passes
        preds, unknown = p.predict_rows([{"user_id": "u1", "item_id": 7, "domain": "news", ...}])
        p.evaluate("data/test.csv")["metrics"]
    """

    def __init__(self, model, encoders=None, name: str = "", version: str = "", checkpoint: str = "",
                 dynamic=None, online: dict | None = None):
        self.model = model
        self.dynamic = dynamic
        self.online = online
        self.schema = model.schema
        self.encoders = encoders
        self.encoder = RowEncoder(self.schema, encoders, dynamic) if encoders is not None else None
        self.name = name or getattr(model, "registry_name", "")
        self.version = version
        self.checkpoint = checkpoint

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """A checkpoint folder (or its ``model.pt``), an online run folder (the pass its ``current`` marker
        names) or one of its pass folders -> a predictor (:func:`dynarec.serve.loader.load_predictor`)."""
        from dynarec.serve.loader import load_predictor

        return load_predictor(path, cls)

    @classmethod
    def load_pass(cls, path: str | Path) -> Predictor:
        """An online run folder or a pass folder -> the predictor of that pass's ``serving.pt``."""
        from dynarec.serve.loader import load_pass

        return load_pass(path, cls)

    # ------------------------------------------------------------------------------------- metadata
    @property
    def tasks(self) -> list[str]:
        return list(self.schema.task_names)

    def feature_columns(self) -> list[str]:
        """The raw columns every row must have (sparse, sequence and dense features)."""
        return [f.name for f in self.schema.features]

    def metadata(self) -> dict:
        """``{model, version, tasks, features, domain, domains}`` (what a server's /metadata shows)."""
        m = {"model": self.name, "version": self.version, "tasks": self.tasks, "features": self.feature_columns(),
             "domain": self.schema.domain, "domains": list(self.schema.domain_values)}
        if self.online is not None:
            m["online"] = self.online
        return m

    # ------------------------------------------------------------------------------------- encoding
    def encode(self, table: pa.Table, where: str = "rows", labels: bool | None = None,
               per_row: bool = False) -> Encoded:
        """Raw rows -> the model's tensors through the one row encoder (``dynarec evaluate`` / ``predict`` and,
        through :meth:`encode_columns`, the server).

        Args:
            table: raw columns (features; labels and the user column optional unless ``labels`` is True).
            where: names the source in error messages (a file path, 'rows').
            labels: True: every task's label column (and the user column) is required; False: labels are
                ignored; None: used when all are present.
            per_row: also count the unknown values of every row (``Encoded.unknown_rows``).
        """
        from dynarec.data.prepare import check_columns

        if self.encoders is None:
            raise DataError("checkpoint has no encoders; evaluate it on a prepared folder")
        if table.num_rows == 0:
            raise DataError(f"{where}: no rows")
        check_columns(table, self.feature_columns(), where)
        extra = [t.source for t in self.schema.tasks] + ([self.schema.user] if self.schema.user else [])
        if labels:
            check_columns(table, extra, where)
        has = bool(labels) or (labels is None and all(c in table.column_names for c in extra))
        return self.encoder.encode(table, where, has, per_row)

    def encode_columns(self, cols: dict[str, list], where: str = "request") -> Encoded:
        """Raw feature columns as Python lists (a server's micro-batch, as
        :func:`dynarec.serve.rows.rows_to_columns` gives them) -> :meth:`encode` of the same rows
        (``labels=False``) with the unknowns of every row (``Encoded.unknown_rows``)."""
        from dynarec.serve.rows import columns_to_table

        if self.encoders is None:
            raise DataError("checkpoint has no encoders; raw rows cannot be encoded")
        return self.encode(columns_to_table(cols, self.schema), where, labels=False, per_row=True)

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
        if labels is not False:  # scored against labels (evaluate): say when the rows were trained on
            self._warn_on_training_rows(table, path)
        import torch

        enc.table.row = torch.arange(table.num_rows)  # the raw row index of every row
        return enc

    def _warn_on_training_rows(self, table, path) -> None:
        """A one-line DataWarning when the hash sample of the training rows (``Encoders.train_rows``) says
        that 5 % or more of the file's rows were trained on: its metrics would overstate new-data quality."""
        fp = getattr(self.encoders, "train_rows", None)
        if fp is None:
            return
        share, sampled = fp.overlap(table)
        if share >= 0.05 and share * sampled >= 3:
            import warnings

            from dynarec.errors import DataWarning

            how = "exactly" if fp.modulus == 1 else f"estimated from {sampled:,} hash-sampled rows"
            warnings.warn(DataWarning(
                f"{path}: {share:.0%} of its rows are rows the model was trained on ({how}); metrics on them "
                "overstate its quality on new data (evaluate the prepared folder's test split, or new rows)"))

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

