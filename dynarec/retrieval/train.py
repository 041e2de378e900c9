"""Training of retrieval models (``dynarec train --model two_tower | popularity``), beside the ranking path of
:func:`dynarec.train.run.train_model`, with the same pieces where they fit:

* :class:`dynarec.train.loop.Loop` (seeded shuffled epochs over the positive pairs, callbacks) driving a
  :class:`~dynarec.retrieval.step.RetrievalStep` (same optimizer groups and clipping as the ranking step);
* :class:`~dynarec.train.callbacks.EarlyStopping` (best-state reload), ``ProgressBar``, ``CsvLog``, with
  :class:`RetrievalValidation` as the monitor: validation ``recall@50`` (``trainer.monitor`` is a ranking
  metric and is not used);
* the run folder of the ranking path (work folder swapped in on success), ``model.pt`` by
  :func:`~dynarec.train.checkpoint.save_checkpoint`, ``metrics.json``, plus ``retrieval.pt``
  (:mod:`dynarec.retrieval.lookup`: corpus vectors, query ids and seen items for ``dynarec retrieve``).

A finished run never replaces a better one in ``--out`` (``--overwrite`` does), and a collapsed fit stops with
one line. Not supported here (one-line errors): ``--resume``, several processes. The run stays on the CPU."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dynarec import outdir
from dynarec.config import build_dataclass, to_dict
from dynarec.errors import DynarecError
from dynarec.retrieval.dataset import build_retrieval_data
from dynarec.retrieval.evaluate import corpus_vectors, evaluate_retrieval
from dynarec.train.better import refuse_worse, valid_record
from dynarec.train.callbacks import CsvLog, EarlyStopping, ProgressBar
from dynarec.train.collapse import CollapseGuard
from dynarec.train.config import TrainerConfig
from dynarec.train.loop import Callback, History, Loop
from dynarec.train.result import MARKERS, Result

__all__ = ["train_retrieval", "RetrievalValidation", "MONITOR"]

MONITOR = "recall@50"


class RetrievalValidation(Callback):
    """After each epoch: exact validation metrics, ``valid_recall@50`` (and @10, ndcg@10) in the log row,
    ``loop.monitor`` for early stopping."""

    def __init__(self, data, split: str = "valid"):
        self.data, self.split = data, split

    def on_epoch_end(self, loop, row: dict) -> None:
        m = evaluate_retrieval(loop.model, self.data, self.split)
        if not m:
            return
        for k in ("recall@10", MONITOR, "ndcg@10"):
            row[f"valid_{k}"] = m[k]["all"]
        loop.monitor = (m[MONITOR]["all"], True)
        loop.history.monitor, loop.history.higher = MONITOR, True


def _fit(model, data, cfg: TrainerConfig, seed: int, log_path, console) -> History:
    from dynarec.retrieval.step import RetrievalStep

    if callable(getattr(model, "fit_counts", None)):  # counted, not trained (popularity)
        model.fit_counts(data.item_ids[data.train_item])
        return History(epochs=[{"epoch": 1, "train_loss": 0.0}], best_epoch=1)
    step = RetrievalStep(model, cfg, data, torch.Generator().manual_seed(seed + 1))
    cbs = [RetrievalValidation(data), EarlyStopping(cfg.patience)] if "valid" in data.evals else []
    cbs.append(CollapseGuard())  # the training-loss sign (a ranking model's AUC sign does not apply)
    if cfg.progress:
        cbs.append(ProgressBar(console, MONITOR))
    if log_path is not None:
        cbs.append(CsvLog(log_path))
    loop = Loop(model, step, cbs)
    loop.hint = f"trainer.lr {cfg.lr:g} / trainer.embedding_lr {cfg.embedding_lr:g} too high (try 10x lower)"
    return loop.fit(data.train, cfg.epochs, cfg.batch_size, seed, cfg.threads)


def train_retrieval(model_name: str, schema, tables: dict, params: dict | None = None, trainer=None, seed: int = 0,
                    out=None, encoders: dict | None = None, console=None, run_config: dict | None = None,
                    resume: bool = False, data=None, *, build, overwrite: bool = False):
    """Build (``build(model_name, schema, params)``: the registry's ``build_model``, passed down by the
    experiment layer) and train retrieval model ``model_name`` on the prepared ``tables``; exact full-corpus
    metrics on the test split (valid when there is none). ``data``: a prebuilt :class:`RetrievalData`.
    Returns a :class:`dynarec.train.result.Result` (``metrics`` = ``{"recall@10": {"all": x, ...}, ...}``).

    As a ranking run, a finished run never replaces one in ``out`` whose validation ``recall@50`` on the same
    validation split is better (:mod:`dynarec.train.better`) unless ``overwrite``, and a fit whose training loss
    ends far above its start stops with one line (:mod:`dynarec.train.collapse`)."""
    from dynarec.train.checkpoint import save_checkpoint

    if resume:
        raise DynarecError("train --resume: not supported for retrieval models yet; train again")
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DynarecError("train --nproc: retrieval models train in one process (no data-parallel yet)")
    cfg = trainer if isinstance(trainer, TrainerConfig) else build_dataclass(TrainerConfig, trainer or {}, "trainer")
    if cfg.checkpoint_every_steps:  # no resume point here: the key would have no effect
        raise DynarecError("trainer.checkpoint_every_steps: retrieval models write no resume point; remove the key")
    params = dict(params or {})
    torch.manual_seed(seed)
    model = build(model_name, schema, params)
    if data is None:
        names = (encoders or {}).get("categorical", {}).get(schema.feature(schema.domain).table, [])
        data = build_retrieval_data(schema, tables, model.config.task, names)
    work = None
    if out is not None:
        out = outdir.check_out(out, MARKERS, "training run")
        work = outdir.work_dir(out)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rc = run_config or {"model": model_name, "params": params, "seed": seed, "out": str(out),
                            "trainer": to_dict(cfg)}
        (work / "config.json").write_text(json.dumps(rc, indent=2))
    try:
        hist = _fit(model, data, cfg, seed, work / "log.csv" if work else None, console)
        model.eval()
        vectors = corpus_vectors(model, data)
        split = "test" if "test" in data.evals else "valid"
        metrics = evaluate_retrieval(model, data, split, vectors=vectors)
        if work is not None:
            from dynarec.retrieval.lookup import save_lookup

            record = valid_record(hist, tables.get("valid"))
            refuse_worse(out, record, overwrite)
            save_checkpoint(work, model, params, encoders, {"trainer": to_dict(cfg), "seed": seed,
                                                           "best_epoch": hist.best_epoch, "kind": "retrieval",
                                                           "valid": record})
            save_lookup(work, model, data, vectors)
            (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if work is not None:
        outdir.swap_in(work, out)
    return Result(model, metrics, hist, hist.train_rows_per_s, params, str(out) if out is not None else None,
                  data=data)


def load_retrieval_data(path: str | Path, task: str = ""):
    """(schema, encoders dict, RetrievalData) of a prepared folder."""
    from dynarec.data.prepare import load_encoders, load_prepared

    schema, tables = load_prepared(path)
    load_encoders(path, schema)
    enc = json.loads((Path(path) / "encoders.json").read_text())
    names = enc.get("categorical", {}).get(schema.feature(schema.domain).table, [])
    return schema, enc, build_retrieval_data(schema, tables, task, names)
