"""The experiment layer: the ``dynarec train | evaluate | predict`` verbs, above :mod:`dynarec.train` (ranking)
and :mod:`dynarec.retrieval` (retrieval), dispatched on the model's registered ``kind`` — the one way to tell
a ranking model from a retrieval one.

An :class:`ExperimentConfig` (YAML -> dataclasses, :func:`load_experiment`) names a model, a prepared folder,
the model's hyper-parameters and the trainer; :func:`train_experiment` trains it. A checkpoint is evaluated
(:func:`evaluate_checkpoint`) or scored (:func:`predict_checkpoint`) by the kind of the model it holds. Each
kind is one :class:`Kind` in :data:`KINDS` (a new kind: a class here, one registry line, and its name in
:data:`dynarec.models.registry.KINDS`).

Example::

    from dynarec.experiment import load_experiment, train_experiment

    cfg = load_experiment(None, {"model": "dnn", "data.path": "prepared/", "out": "runs/dnn"})
    res = train_experiment(cfg)
    print(res.metrics["auc"])
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynarec import outdir
from dynarec.config import apply_overrides, build_dataclass, read_yaml_mapping, to_dict
from dynarec.errors import DataError, DynarecError
from dynarec.models.registry import get_model_info
from dynarec.train.config import TrainerConfig
from dynarec.train.result import Result

__all__ = ["DataConfig", "ExperimentConfig", "load_experiment", "load_interrupted", "train_experiment",
           "evaluate_checkpoint", "predict_checkpoint", "kind_of", "KINDS", "Kind"]


@dataclass
class DataConfig:
    path: str = ""  # a prepared folder (schema.json + train/valid/test.parquet)
    loading: str = "auto"  # auto | memory | stream: the train split read whole or streamed (dynarec/data/loader.py)
    memory_budget_mb: float = 4096  # auto streams when the folder's splits as tensors would exceed this
    shuffle_buffer: int = 262_144  # streamed: rows permuted together (whole row groups, in a shuffled order)
    prefetch: int = 4  # streamed: row groups read ahead
    read_threads: int = 2  # streamed: background reader threads


@dataclass
class ExperimentConfig:
    model: str = "dnn"
    data: DataConfig = field(default_factory=DataConfig)
    params: dict[str, Any] = field(default_factory=dict)  # the model's hyper-parameters
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    out: str = "runs/exp"


def load_experiment(path: str | None, overrides: dict[str, Any] | None = None,
                    sets: list[str] | None = None) -> ExperimentConfig:
    """The experiment of YAML file ``path`` (none: the defaults), with ``overrides`` (``{"a.b": value}``,
    ``None`` values skipped) and ``sets`` (``["a.b=value"]``, the CLI's ``--set``) applied.

    Example::

        cfg = load_experiment(None, {"model": "mmoe", "data.path": "prepared/"}, ["trainer.epochs=3"])
    """
    d: dict[str, Any] = read_yaml_mapping(path) if path else {}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        cur = d
        parts = k.split(".")
        for p_ in parts[:-1]:
            cur = cur.setdefault(p_, {})
        cur[parts[-1]] = v
    apply_overrides(d, sets or [])
    return build_dataclass(ExperimentConfig, d, path or "config")


def load_interrupted(out: str | Path) -> ExperimentConfig:
    """The ``ExperimentConfig`` of the interrupted run into ``out`` (``dynarec train --resume out``): read from
    its work folder's ``config.json``; a one-line error when there is no interrupted run."""
    from dynarec.train.resume import LAST

    out = Path(out)
    work = outdir.work_dir(out)
    if not (work / LAST).exists():
        done = " (the run there finished: model.pt)" if (out / "model.pt").exists() else ""
        raise DynarecError(f"{out}: no interrupted run to resume{done}; expected {work / LAST}")
    f = work / "config.json"
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{f}: not a readable run config ({type(e).__name__})") from None
    cfg = build_dataclass(ExperimentConfig, d, str(f))
    cfg.out = str(out)
    return cfg


class Kind:
    """What the verbs do for the models of one registered ``kind``."""

    def train(self, cfg: ExperimentConfig, schema, tables: dict, encoders: dict, console, resume: bool,
              overwrite: bool = False) -> Result:
        raise NotImplementedError

    def evaluate(self, checkpoint: str | Path, data: str | Path, split: str | None, mc_dropout: int,
                 memory_budget_mb: float | None = None) -> dict:
        raise NotImplementedError

    def predict(self, checkpoint, data, out, id_column, mc_dropout) -> dict:
        raise NotImplementedError


class Ranking(Kind):
    """Logits per task: :func:`dynarec.train.run.train_model`, :class:`dynarec.serve.predictor.Predictor`."""

    def train(self, cfg, schema, tables, encoders, console, resume, overwrite=False):
        from dynarec.train.run import train_model

        return train_model(cfg.model, schema, tables, cfg.params, cfg.trainer, cfg.seed, cfg.out, encoders,
                           console=console, run_config=to_dict(cfg), resume=resume, overwrite=overwrite)

    def evaluate(self, checkpoint, data, split, mc_dropout, memory_budget_mb=None):
        from dynarec.evalstream import evaluate_split
        from dynarec.serve.predictor import Predictor

        if mc_dropout < 0:
            raise DynarecError(f"--mc-dropout: expected a number of passes >= 0, got {mc_dropout}")
        if split is not None and not Path(data).is_dir():
            raise DynarecError(f"--split applies to a prepared folder; {data} is a raw file (all its rows are scored)")
        if memory_budget_mb is not None and not Path(data).is_dir():
            raise DynarecError(f"--memory-budget applies to a prepared folder; {data} is a raw file (read whole)")
        predictor = Predictor.load(checkpoint)
        if Path(data).is_dir():  # streamed when the split does not fit the budget (dynarec/evalstream.py)
            budget = memory_budget_mb if memory_budget_mb is not None else run_budget(checkpoint)
            summary = evaluate_split(predictor, data, split or "test", budget, mc_dropout)
        else:
            summary = predictor.evaluate(data, split or "test", mc_dropout)
        summary["domain"] = predictor.schema.domain
        return summary

    def predict(self, checkpoint, data, out, id_column, mc_dropout):
        from dynarec.serve.predict_file import write_predictions

        return write_predictions(checkpoint, data, out, id_column, mc_dropout)


class Retrieval(Kind):
    """Query and item towers: :func:`dynarec.retrieval.train.train_retrieval`, exact full-corpus metrics."""

    def train(self, cfg, schema, tables, encoders, console, resume, overwrite=False):
        from dynarec.models.registry import build_model
        from dynarec.retrieval.train import train_retrieval

        return train_retrieval(cfg.model, schema, tables, cfg.params, cfg.trainer, cfg.seed, cfg.out, encoders,
                               console=console, run_config=to_dict(cfg), resume=resume, build=build_model,
                               overwrite=overwrite)

    def evaluate(self, checkpoint, data, split, mc_dropout, memory_budget_mb=None):
        from dynarec.retrieval.cli import evaluate_run

        if memory_budget_mb is not None:
            raise DynarecError("--memory-budget: retrieval metrics rank the whole corpus in memory; drop it")
        return evaluate_run(checkpoint, data, split)

    def predict(self, checkpoint, data, out, id_column, mc_dropout):
        raise DynarecError(f"predict: {checkpoint} holds a retrieval model, which scores no rows; "
                           "`dynarec retrieve` gives its top-k items per user")


#: the verbs per registered model kind (the names of :data:`dynarec.models.registry.KINDS`)
KINDS: dict[str, Kind] = {"ranking": Ranking(), "retrieval": Retrieval()}


def kind_of(model_name: str) -> str:
    """The registered kind of model ``model_name`` ("ranking" | "retrieval")."""
    return get_model_info(model_name).kind


def train_experiment(cfg: ExperimentConfig, console=None, resume: bool = False, overwrite: bool = False) -> Result:
    """``dynarec train``: train ``cfg`` on its prepared folder by its model's kind; checkpoint (with the
    folder's encoders), log and ``config.json`` in ``cfg.out``.

    Example::

        res = train_experiment(load_experiment("exp.yaml"))
        res.checkpoint  # cfg.out
    """
    from dynarec.data.prepare import load_encoders

    if not cfg.data.path:
        raise DynarecError("train: no data; give --data DIR (a prepared folder) or data.path in the config")
    from dynarec.data.loader import load_for_training

    kind = KINDS[kind_of(cfg.model)]
    schema, tables = load_for_training(cfg.data)
    if kind_of(cfg.model) == "retrieval" and not hasattr(tables["train"], "sparse"):
        raise DynarecError(f"data.loading: {cfg.model} trains on the train split in memory; use data.loading: memory")
    load_encoders(cfg.data.path, schema)  # a missing / broken encoders.json is a one-line error
    enc = json.loads((Path(cfg.data.path) / "encoders.json").read_text())
    return kind.train(cfg, schema, tables, enc, console, resume, overwrite)


def checkpoint_kind(checkpoint: str | Path) -> str:
    """The kind of the model a checkpoint (folder or ``model.pt``) holds; "ranking" for what holds no
    ``model.pt`` (an online run or pass: its loader names what is missing)."""
    from dynarec.train.checkpoint import read_checkpoint

    p = Path(checkpoint)
    f = p / "model.pt" if p.is_dir() else p
    if not f.is_file():
        return "ranking"
    return kind_of(read_checkpoint(f)["model"])


def run_budget(checkpoint: str | Path) -> float:
    """The ``data.memory_budget_mb`` the run in ``checkpoint`` trained with (its ``config.json``), else the default."""
    f = Path(checkpoint) / "config.json"
    try:
        v = json.loads(f.read_text())["data"]["memory_budget_mb"]
        return float(v) if isinstance(v, (int, float)) and v > 0 else DataConfig.memory_budget_mb
    except (OSError, ValueError, KeyError, TypeError):
        return DataConfig.memory_budget_mb


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str | None = None,
                        mc_dropout: int = 0, memory_budget_mb: float | None = None) -> dict:
    """``dynarec evaluate``: the metrics summary of ``checkpoint`` on ``data`` (a prepared folder's ``split``,
    "test" by default, or a raw file for a ranking model). A ranking model's split that would not fit
    ``memory_budget_mb`` (default: the run's ``data.memory_budget_mb``) is streamed (:mod:`dynarec.evalstream`).

    Example::

        summary = evaluate_checkpoint("runs/dnn", "prepared/", "test")
        summary["metrics"]["auc"]
    """
    return KINDS[checkpoint_kind(checkpoint)].evaluate(checkpoint, data, split, mc_dropout, memory_budget_mb)


def predict_checkpoint(checkpoint: str | Path, data: str | Path, out: str | Path, id_column: str | None = None,
                       mc_dropout: int = 0) -> dict:
    """``dynarec predict``: one output row per input row of raw file ``data`` into ``out`` (ranking models).

    Example::

        res = predict_checkpoint("runs/dnn", "new_rows.csv", "scores.parquet")
        res["rows"]
    """
    return KINDS[checkpoint_kind(checkpoint)].predict(checkpoint, data, out, id_column, mc_dropout)
