"""One call from (model name, tables) to a trained model with test metrics: used by the CLI, the demo,
the benchmark harness and tests."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from dynarec import outdir
from dynarec.checks import validate
from dynarec.config import build_dataclass, to_dict
from dynarec.errors import ConfigError, DynarecError
from dynarec.metrics import evaluate_model
from dynarec.train.distributed import evaluate_split, is_main
from dynarec.models import build_model
from dynarec.train.better import refuse_worse, valid_record
from dynarec.train.checkpoint import save_checkpoint
from dynarec.train.collapse import CollapseGuard
from dynarec.train.config import TrainerConfig
from dynarec.train.placement import placement_for
from dynarec.train.result import MARKERS, Result  # noqa: F401  (Result: the return type)
from dynarec.train.resume import LAST
from dynarec.train.sharded_resume import LAST_SHARDED
from dynarec.train.trainer import Trainer


def gate_usage_of(model, table) -> dict:
    """``model.gate_usage(table)`` for models with softmax / top-k gates (MMoE, PLE, sparse MoE), else {}."""
    if table is None or not hasattr(model, "gate_usage") or not model.gate_modules():
        return {}
    return model.gate_usage(table)


def train_model(model_name: str, schema, tables: dict, params: dict | None = None, trainer: dict | TrainerConfig | None = None,
                seed: int = 0, out: str | Path | None = None, encoders: dict | None = None,
                task_weighting: str | None = None, console=None, run_config: dict | None = None,
                resume: bool = False, overwrite: bool = False) -> Result:
    """Build ``model_name`` on ``schema``, train on tables['train'] with early stopping on tables['valid'],
    evaluate on tables['test'] (or 'valid' when there is no test).

    With ``out``: the run writes into the work folder :func:`dynarec.outdir.work_dir` (``config.json`` =
    ``run_config`` first, then ``log.csv`` and the resume point ``last.pt`` after every epoch, at the end
    ``model.pt``, ``metrics.json``) and replaces ``out`` only when it has succeeded, so a failing or
    refused run leaves an existing run there byte-identical, and a folder's files always describe one run.
    A run killed or interrupted after an epoch leaves its work folder: ``resume=True`` continues it after its
    last completed epoch (same arguments). A run stopped by a user mistake (a diverging loss included), or
    before its first epoch ended, removes it.

    A collapsed fit (:mod:`dynarec.train.collapse`: the loss far above its start, or a model no better than a
    constant predictor) raises :class:`~dynarec.train.collapse.CollapsedError`; a finished run never replaces
    a run in ``out`` whose validation score is better (:mod:`dynarec.train.better`) unless ``overwrite``.

    Example::

        from dynarec.data.prepare import synthetic_tables
        from dynarec.train.run import train_model

        schema, tables, _ = synthetic_tables(4000, seed=0)
        res = train_model("pepnet", schema, tables, {"embed_dim": 8}, {"epochs": 2, "progress": False},
                          out="runs/pepnet")
        res.metrics["auc"]["click"]["all"], res.checkpoint
    """
    import torch

    if isinstance(trainer, TrainerConfig):
        validate(trainer, "trainer")
        cfg = trainer
    else:
        cfg = build_dataclass(TrainerConfig, trainer or {}, "trainer")
    params = dict(params or {})
    torch.manual_seed(seed)
    placement = placement_for(cfg)
    with placement.build_context():  # TorchRec under torchrun: tables without storage (each rank fills its shards)
        model = build_model(model_name, schema, params)
    valid = tables.get("valid")
    meta = {"model": model_name, "train_rows": len(tables["train"]), "valid_rows": len(valid) if valid else 0,
            "train_data": tables["train"].fingerprint(), "valid_data": valid.fingerprint() if valid else ""}
    if out is None or not is_main():  # no output folder, or a rank other than 0 of several processes
        if resume and out is None:
            raise DynarecError("resume: needs the interrupted run's out folder")
        if cfg.checkpoint_every_steps and out is None:
            raise ConfigError(f"trainer.checkpoint_every_steps: {cfg.checkpoint_every_steps} needs an out folder "
                              "(the resume point last.pt is written there); set it to 0 or give an out folder")
        tr = Trainer(model, cfg, seed, None, task_weighting, console, placement)
        # every rank continues from rank 0's resume point (TorchRec: each rank reads its own shards of it)
        state = placement.load_resume(None, meta, out) if resume else None
        hist = tr.fit(tables["train"], valid, [CollapseGuard(valid)] + placement.resume_callbacks(None, {}),
                      resume=state, finish=False)
        return _finish(model, cfg, hist, tables, params, None, encoders, seed, placement)
    out = outdir.check_out(out, MARKERS, "training run")
    work = outdir.work_dir(out)
    tr = Trainer(model, cfg, seed, work / "log.csv", task_weighting, console, placement)  # checks the config first
    state = None
    if resume:
        state = placement.load_resume(work, meta, out, tr)
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if run_config is None:
            run_config = {"model": model_name, "params": params, "seed": seed, "out": str(out),
                          "trainer": {**to_dict(cfg), "task_weighting": task_weighting or cfg.task_weighting}}
        (work / "config.json").write_text(json.dumps(run_config, indent=2))
    try:
        hist = tr.fit(tables["train"], valid, [CollapseGuard(valid)] + placement.resume_callbacks(work, meta),
                      resume=state, finish=False)
        res = _finish(model, cfg, hist, tables, params, work, encoders, seed, placement)
        refuse_worse(out, valid_record(hist, valid), overwrite)
        (work / LAST).unlink(missing_ok=True)
        shutil.rmtree(work / LAST_SHARDED, ignore_errors=True)
    except BaseException as e:  # a refused or diverged run, or one that stopped before a resume point
        if isinstance(e, DynarecError) or not placement.has_resume_point(work):
            shutil.rmtree(work, ignore_errors=True)
        raise
    outdir.swap_in(work, out)
    res.checkpoint = str(out)
    return res


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


def _finish(model, cfg, hist, tables, params, folder, encoders, seed, placement) -> Result:
    """Test metrics of the trained model; with ``folder``: model.pt, metrics.json (and gate_usage.json).
    ``placement.finish()`` runs after the test metrics (a TorchRec fit: the tables, sharded until then,
    assembled on rank 0; the other ranks' models then hold no feature table and compute no gate usage)."""
    test = tables.get("test") or tables.get("valid")
    t0 = time.perf_counter()
    metrics = evaluate_split(model, test, cfg.eval_batch_size) if test is not None else {}  # gathered over ranks
    eval_rps = len(test) / max(time.perf_counter() - t0, 1e-9) if test is not None else 0.0
    extra = {"trainer": to_dict(cfg), "seed": seed, "best_epoch": hist.best_epoch,
             "valid": valid_record(hist, tables.get("valid"))}
    sharded = placement.write_sharded(folder, model, {"model": model.registry_name, "params": params,
                                                      "schema": model.schema.to_dict(), "encoders": encoders,
                                                      "extra": extra})
    if not sharded:  # a sharded checkpoint leaves the tables split (no rank assembles them)
        placement.finish()
    model.to("cpu")  # trained on trainer.device; results, gate usage and checkpoint on the host
    usage = gate_usage_of(model, test) if placement.whole_model and not sharded else {}
    if folder is not None and not sharded:
        save_checkpoint(folder, model, params, encoders, extra)
    if folder is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if usage:
            (folder / "gate_usage.json").write_text(json.dumps(usage, indent=2))
    return Result(model, metrics, hist, hist.train_rows_per_s, params, str(folder) if folder else None,
                  hints=batch_hint(len(tables["train"]), cfg.batch_size),
                  eval_rows_per_s=eval_rps, gate_usage=usage)
