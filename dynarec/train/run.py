"""One call from (model name, tables) to a trained model with test metrics: used by the CLI, the demo,
the benchmark harness and tests."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynarec import outdir
from dynarec.checks import validate
from dynarec.config import build_dataclass, to_dict
from dynarec.errors import DataError, DynarecError
from dynarec.metrics import evaluate_model
from dynarec.train.distributed import evaluate_split, is_main
from dynarec.models import build_model
from dynarec.train.checkpoint import save_checkpoint
from dynarec.train.config import TrainerConfig
from dynarec.train.loop import History
from dynarec.train.resume import LAST, LastState, load_state
from dynarec.train.trainer import Trainer


@dataclass
class Result:
    model: object
    metrics: dict  # on the test split
    history: History
    train_rows_per_s: float
    params: dict
    checkpoint: str | None = None
    valid_metrics: dict = field(default_factory=dict)
    eval_rows_per_s: float = 0.0
    gate_usage: dict = field(default_factory=dict)  # MoE models: per gate usage on the test split
    hints: list = field(default_factory=list)  # advice for the user (printed by the CLI after a successful run)

    def summary(self, model_name: str, data: str) -> dict:
        out = {"model": model_name, "data": data, "metrics": self.metrics,
               "train_rows_per_s": self.train_rows_per_s, "epochs": len(self.history.epochs),
               "best_epoch": self.history.best_epoch, "checkpoint": self.checkpoint}
        if self.gate_usage:
            out["gate_usage"] = self.gate_usage
        return out


def gate_usage_of(model, table) -> dict:
    """``model.gate_usage(table)`` for models with softmax / top-k gates (MMoE, PLE, sparse MoE), else {}."""
    if table is None or not hasattr(model, "gate_usage") or not model.gate_modules():
        return {}
    return model.gate_usage(table)


MARKERS = ("model.pt",)  # what makes a folder a training run's (dynarec.outdir)


def train_model(model_name: str, schema, tables: dict, params: dict | None = None, trainer: dict | TrainerConfig | None = None,
                seed: int = 0, out: str | Path | None = None, encoders: dict | None = None,
                task_weighting: str | None = None, console=None, run_config: dict | None = None,
                resume: bool = False) -> Result:
    """Build ``model_name`` on ``schema``, train on tables['train'] with early stopping on tables['valid'],
    evaluate on tables['test'] (or 'valid' when there is no test).

    With ``out``: the run writes into the work folder :func:`dynarec.outdir.work_dir` (``config.json`` =
    ``run_config`` first, then ``log.csv`` and the resume point ``last.pt`` after every epoch, at the end
    ``model.pt``, ``metrics.json``) and replaces ``out`` only when it has succeeded, so a failing or
    refused run leaves an existing run there byte-identical, and a folder's files always describe one run.
    A run killed or interrupted after an epoch leaves its work folder: ``resume=True`` continues it after its
    last completed epoch (same arguments). A run stopped by a user mistake (a diverging loss included), or
    before its first epoch ended, removes it."""
    import torch

    if isinstance(trainer, TrainerConfig):
        validate(trainer, "trainer")
        cfg = trainer
    else:
        cfg = build_dataclass(TrainerConfig, trainer or {}, "trainer")
    params = dict(params or {})
    torch.manual_seed(seed)
    with _build_context(cfg):
        model = build_model(model_name, schema, params)
    valid = tables.get("valid")
    if out is None or not is_main():  # no output folder, or a rank other than 0 of several processes
        if resume and out is None:
            raise DynarecError("resume: needs the interrupted run's out folder")
        tr = Trainer(model, cfg, seed, None, task_weighting, console)
        hist = tr.fit(tables["train"], valid, finish=False)
        return _finish(model, cfg, hist, tables, params, None, encoders, seed, tr.finish)
    out = outdir.check_out(out, MARKERS, "training run")
    work = outdir.work_dir(out)
    tr = Trainer(model, cfg, seed, work / "log.csv", task_weighting, console)  # checks the config first
    meta = {"model": model_name, "train_rows": len(tables["train"]), "valid_rows": len(valid) if valid else 0,
            "train_data": tables["train"].fingerprint(), "valid_data": valid.fingerprint() if valid else ""}
    state = None
    if resume:
        if not (work / LAST).exists():
            raise DynarecError(f"{out}: no interrupted run to resume (no {work / LAST})")
        state = load_state(work / LAST, meta)
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if run_config is None:
            run_config = {"model": model_name, "params": params, "seed": seed, "out": str(out),
                          "trainer": {**to_dict(cfg), "task_weighting": task_weighting or cfg.task_weighting}}
        (work / "config.json").write_text(json.dumps(run_config, indent=2))
    try:
        hist = tr.fit(tables["train"], valid, [LastState(work / LAST, meta)], resume=state, finish=False)
        res = _finish(model, cfg, hist, tables, params, work, encoders, seed, tr.finish)
        (work / LAST).unlink(missing_ok=True)
    except BaseException as e:  # a refused or diverged run, or one that stopped before a resume point
        if isinstance(e, DynarecError) or not (work / LAST).exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    outdir.swap_in(work, out)
    res.checkpoint = str(out)
    return res


def _build_context(cfg: TrainerConfig):
    """Where the model is built: under torchrun with ``trainer.distributed: torchrec``, its TorchRec tables
    are created without storage (each rank later writes only its shards' initial rows, the rows of an
    eager build); anywhere else, eagerly."""
    import contextlib
    import os

    from dynarec.train.distributed import launched

    if cfg.distributed == "torchrec" and launched() and int(os.environ["WORLD_SIZE"]) > 1:
        from dynarec.tables import torchrec_adapter

        if torchrec_adapter.available():
            return torchrec_adapter.sharded_build()
    return contextlib.nullcontext()


MIN_STEPS_PER_EPOCH = 50


def batch_hint(train_rows: int, batch_size: int) -> list[str]:
    """A one-line hint when ``batch_size`` gives fewer than 50 optimiser steps per epoch (on Adult, batch 4096 =
    ~10 steps per epoch cost 0.009 AUC against batch 512; docs/benchmarks.md)."""
    steps = -(-train_rows // batch_size)
    if steps >= MIN_STEPS_PER_EPOCH:
        return []
    better = max(32, 1 << max(0, (train_rows // MIN_STEPS_PER_EPOCH).bit_length() - 1))
    return [f"hint: trainer.batch_size {batch_size} gives {steps} step(s) per epoch on {train_rows:,} train rows; "
            f"a smaller batch (e.g. --batch-size {better}) usually reaches a better AUC on data this size"]


def _finish(model, cfg, hist, tables, params, folder, encoders, seed, done=None) -> Result:
    """Test metrics of the trained model; with ``folder``: model.pt, metrics.json (and gate_usage.json).
    ``done``: called after the test metrics (a TorchRec fit: the tables, sharded until then, assembled on
    rank 0; the other ranks' models then hold no feature table and compute no gate usage)."""
    test = tables.get("test") or tables.get("valid")
    t0 = time.perf_counter()
    metrics = evaluate_split(model, test, cfg.eval_batch_size) if test is not None else {}  # gathered over ranks
    eval_rps = len(test) / max(time.perf_counter() - t0, 1e-9) if test is not None else 0.0
    if done is not None:
        done()
    model.to("cpu")  # trained on trainer.device; results, gate usage and checkpoint on the host
    sharded = cfg.distributed == "torchrec" and not is_main()
    usage = {} if sharded else gate_usage_of(model, test)
    if folder is not None:
        save_checkpoint(folder, model, params, encoders,
                        {"trainer": to_dict(cfg), "seed": seed, "best_epoch": hist.best_epoch})
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if usage:
            (folder / "gate_usage.json").write_text(json.dumps(usage, indent=2))
    return Result(model, metrics, hist, hist.train_rows_per_s, params, str(folder) if folder else None,
                  hints=batch_hint(len(tables["train"]), cfg.batch_size),
                  eval_rows_per_s=eval_rps, gate_usage=usage)


def train_experiment(cfg, console=None, resume: bool = False) -> Result:
    """``dynarec train``: train ``cfg`` (an ``ExperimentConfig``) on its prepared folder; checkpoint (with the
    folder's encoders), log and ``config.json`` in ``cfg.out``. Returns the ``train_model`` result."""
    from dynarec.data.prepare import load_encoders, load_prepared

    if not cfg.data.path:
        raise DynarecError("train: no data; give --data DIR (a prepared folder) or data.path in the config")
    schema, tables = _load_tables(cfg.data)
    load_encoders(cfg.data.path, schema)  # a missing / broken encoders.json is a one-line error
    enc = json.loads((Path(cfg.data.path) / "encoders.json").read_text())
    from dynarec.retrieval.train import is_retrieval, train_retrieval

    if is_retrieval(cfg.model) and not hasattr(tables["train"], "sparse"):
        raise DynarecError(f"data.loading: {cfg.model} trains on the train split in memory; use data.loading: memory")
    if is_retrieval(cfg.model):  # two_tower / popularity: the retrieval trainer (dynarec/retrieval/train.py)
        return train_retrieval(cfg.model, schema, tables, cfg.params, cfg.trainer, cfg.seed, cfg.out, enc,
                               console=console, run_config=to_dict(cfg), resume=resume)
    return train_model(cfg.model, schema, tables, cfg.params, cfg.trainer, cfg.seed, cfg.out, enc, console=console,
                       run_config=to_dict(cfg), resume=resume)


def _load_tables(data):
    """(schema, {split: table}) of ``data.path``: every split in memory, or with ``data.loading`` streamed
    (chosen, or ``auto`` when the splits would exceed ``data.memory_budget_mb``) the train split as a
    :class:`~dynarec.data.loader.StreamTable` and valid / test in memory."""
    from dynarec.data.loader import check_data_keys, choose_loading, open_split
    from dynarec.data.prepare import load_prepared
    from dynarec.data.schema import Schema

    check_data_keys(data)
    p = Path(data.path)
    schema = Schema.load(p / "schema.json") if (p / "schema.json").exists() else None
    if schema is None or choose_loading(p, schema, data.loading, data.memory_budget_mb) == "memory":
        return load_prepared(p)
    train = open_split(p, "train", data.shuffle_buffer, data.prefetch, data.read_threads)
    schema, rest = load_prepared(p, ("valid", "test"))
    train.schema = schema
    return schema, {"train": train, **rest}


def load_interrupted(out: str | Path):
    """The ``ExperimentConfig`` of the interrupted run into ``out`` (``dynarec train --resume out``): read from
    its work folder's ``config.json``; a one-line error when there is no interrupted run."""
    from dynarec.config import ExperimentConfig

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
