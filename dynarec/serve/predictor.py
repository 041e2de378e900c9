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
        unknown_rows: from :meth:`Predictor.encode_columns`: Int64[N, F] unknown values of row i in embedded
            field j (``schema.fields`` order; for a sequence, its unknown tokens within ``max_len``), else None.
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

    def __init__(self, model, encoders=None, name: str = "", version: str = "", checkpoint: str = "",
                 dynamic=None, online: dict | None = None):
        self.model = model
        self.dynamic = dynamic  # an online pass's SlotLookup (raw ids -> slots of its dynamic features), or None
        self.online = online  # {pass, file, folder, dynamic} of an online pass, or None
        self.schema = model.schema
        self.encoders = encoders
        self.name = name or getattr(model, "registry_name", "")
        self.version = version
        self.checkpoint = checkpoint
        self._lock = threading.Lock()  # Encoders.transform keeps its unknown counts on the instance

    @classmethod
    def load(cls, checkpoint: str | Path) -> Predictor:
        """The checkpoint folder (or its ``model.pt``) -> a predictor; an online run folder (the pass its
        ``current`` marker names) or one of its pass folders -> :meth:`load_pass`."""
        from dynarec.data.encode import Encoders
        from dynarec.online.serving import is_online
        from dynarec.train.checkpoint import load_checkpoint

        if is_online(checkpoint):
            return cls.load_pass(checkpoint)
        model, blob = load_checkpoint(checkpoint)
        enc = Encoders.from_dict(model.schema, blob["encoders"]) if blob.get("encoders") is not None else None
        p = Path(checkpoint)
        f = p / "model.pt" if p.is_dir() else p
        if not f.exists() and (p / "shards.json").exists():  # a sharded checkpoint: its manifest holds every digest
            f = p / "shards.json"
        return cls(model, enc, blob["model"], hashlib.sha256(f.read_bytes()).hexdigest()[:12], str(checkpoint))

    @classmethod
    def load_pass(cls, path: str | Path) -> Predictor:
        """An online run folder (follows ``RUN/current``) or a pass folder -> the predictor of that pass's
        ``serving.pt`` (:mod:`dynarec.online.serving`): its full model, the first pass's encoders for the
        static features, and the id -> slot lookups of the dynamic ones (unseen ids read the default row)."""
        from dynarec.data.schema import Schema
        from dynarec.models import build_model
        from dynarec.online.schema import encoders_for
        from dynarec.online.serving import SERVING, SlotLookup, describe, pass_folder, read_serving

        d = pass_folder(path)
        f = d / SERVING
        blob, digest = read_serving(f)
        try:
            schema = Schema.from_dict(blob["schema"], str(f))
            model = build_model(blob["model"], schema, blob["params"])
            model.prepare_for_load(blob["state_dict"])
            model.load_state_dict(blob["state_dict"])
            dyn = [e["feature"] for e in blob["dynamic"]]
            enc = encoders_for(schema, dyn, blob["encoders"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise DataError(f"{f}: does not match its model ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        model.eval()
        model.merge_for_inference()
        k = blob.get("pass")
        version = f"pass{k:04d}-{digest[:8]}" if isinstance(k, int) else digest[:12]
        return cls(model, enc, blob["model"], version, str(d), SlotLookup(blob["dynamic"]), describe(d, blob))

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
    def encode(self, table: pa.Table, where: str = "rows", labels: bool | None = None) -> Encoded:
        """Raw rows -> the model's tensors with the checkpoint's encoders (``dynarec evaluate`` / ``predict``;
        the HTTP server's :meth:`encode_columns` gives the same on Python lists).

        Args:
            table: raw columns (features; labels and the user column optional unless ``labels`` is True).
            where: names the source in error messages (a file path, 'rows').
            labels: True: every task's label column (and the user column) is required; False: labels are
                ignored; None: used when all are present.
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
        if self.dynamic is not None:
            from dynarec.online.ids import raw_ids

            for name in self.dynamic.features:
                ids = raw_ids(table, self.schema.feature(name))
                slots = self.dynamic.slots(name, ids)
                cols[name] = slots.numpy()
                unknown[name] = int(((ids >= 0) & (slots == 0)).sum())  # ids without a slot: the default row
        return Encoded(to_tensor_table(self.schema, cols), unknown, has)

    def encode_columns(self, cols: dict[str, list], where: str = "request") -> Encoded:
        """Raw feature columns as Python lists (a server's micro-batch: categories ``str`` or None, numbers
        ``float`` (NaN = missing), sequences one ``separator``-joined ``str``, as
        :func:`dynarec.serve.rows.rows_to_columns` gives them)
        -> the tensors and unknown counts of :meth:`encode` on the same rows (``labels=False``; a test holds
        the two equal) plus the unknowns of every row (``Encoded.unknown_rows``). Dictionary lookups
        instead of ~60 pyarrow calls: for the small batches of a server.
        """
        from dynarec.data.prepare import to_tensor_table
        from dynarec.data.text import tokens

        if self.encoders is None:
            raise DataError("checkpoint has no encoders; raw rows cannot be encoded")
        luts = self._lookups()
        n = len(cols[self.schema.domain])
        out, unknown = {}, {}
        unk_rows = np.zeros((n, len(self.schema.fields)), dtype=np.int64)
        col_of = {f.name: j for j, f in enumerate(self.schema.fields)}
        dyn = self.dynamic.features if self.dynamic is not None else ()
        for f in self.schema.features:
            vals = cols[f.name]
            if f.kind == "dense":
                out.update(self._dense_list(f, vals, where))
                continue
            if f.name in dyn:  # an online pass's dynamic feature: raw id -> slot (0: the default row)
                ids = self.dynamic.ids_of_values(f.name, vals, f)
                slots = self.dynamic.slots(f.name, ids)
                miss = ((ids >= 0) & (slots == 0)).numpy()
                out[f.name] = slots.numpy()
                unknown[f.name] = int(miss.sum())
                unk_rows[:, col_of[f.name]] = miss.reshape(n, -1).sum(1)
                continue
            lut, nulls = luts[f.table], frozenset(f.null_values or ())
            if f.kind == "sparse":
                ids = [0 if v is None or v in nulls else lut.get(v, 0) for v in vals]
                miss = [i for i, (v, k) in enumerate(zip(vals, ids)) if k == 0 and v is not None and v not in nulls]
                out[f.name] = np.asarray(ids, dtype=np.int32)
                unknown[f.name] = len(miss)
                unk_rows[miss, col_of[f.name]] = 1
            else:  # sequence: the first max_len tokens, 0-padded; unknown tokens counted over all
                ids = np.zeros((n, f.max_len), dtype=np.int32)
                total = 0
                for i, v in enumerate(vals):
                    toks = tokens(v, f) if f.text else (v or "").split(f.separator)  # text: its words
                    row = [0 if t in nulls or not t else lut.get(t, 0) for t in toks]  # "" token = null
                    bad = [bool(t) and t not in nulls and k == 0 for t, k in zip(toks, row)]
                    total += sum(bad)
                    if v:
                        unk_rows[i, col_of[f.name]] = sum(bad[:f.max_len])
                    ids[i, :min(len(row), f.max_len)] = row[:f.max_len]
                out[f.name] = ids
                unknown[f.name] = total
        return Encoded(to_tensor_table(self.schema, out), unknown, False, unk_rows)

    def _lookups(self) -> dict[str, dict[str, int]]:
        """Encoder table -> {value: id} (ids 1.., as ``CategoricalEncoder``), built once."""
        if getattr(self, "_luts", None) is None:
            self._luts = {t: {v: i + 1 for i, v in enumerate(e.vocab)} for t, e in self.encoders.cat.items()}
        return self._luts

    def _dense_list(self, f, vals: list, where: str) -> dict[str, np.ndarray]:
        """A dense feature's column as ``Encoders.transform`` encodes it (null tokens, NaN policy, transforms)."""
        x = np.array(vals, dtype=np.float64)
        nums = []
        for t in f.null_values or ():
            try:
                nums.append(float(t))
            except ValueError:
                pass
        if nums:
            x[np.isin(x, nums)] = np.nan
        if np.isinf(x).any():
            raise DataError(f"{where}: dense column '{f.name}' contains inf")
        nan = np.isnan(x)
        if nan.any() and f.nan_policy == "error":
            raise DataError(f"{where}: dense column '{f.name}' has {int(nan.sum())} NaN value(s) and its "
                            f"nan_policy is 'error' (use nan_policy: fill to fill them with fill_value)")
        out = {f.name: self.encoders.dense[f.name].transform(x, f, where)}
        if f.missing_indicator:
            out[f.name + "__missing"] = nan.astype(np.float32)
        return out

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
    return {"rows": table.num_rows, "unknown": {k: v for k, v in enc.unknown.items() if v}, "out": str(out),
            "dynamic": pred.dynamic.features if pred.dynamic is not None else []}
