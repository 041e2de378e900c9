"""The trainer of ``train_model``, the benchmarks and the tests: a :class:`~dynarec.train.step.TrainStep`
driven by a :class:`~dynarec.train.loop.Loop` with the standard callbacks (validation, early stopping with
best-state reload, progress bar, CSV log)."""
from __future__ import annotations

from pathlib import Path

from dynarec.train.callbacks import CsvLog, EarlyStopping, ProgressBar, Validation, monitor_value  # noqa: F401
from dynarec.train import device as devices
from dynarec.train.config import TrainerConfig, check_trainer
from dynarec.train.loop import History, Loop, set_seed  # noqa: F401
from dynarec.train.norm_stats import NormStatistics
from dynarec.train.placement import Placement, placement_for
from dynarec.train.step import TrainStep


class Trainer:
    """Args:
        model: a registered dynarec model.
        cfg: the trainer settings (default :class:`TrainerConfig`).
        seed: seeds torch's generator and the batch order at :meth:`fit`.
        log_path: where each epoch's row is appended as CSV (none when ``None``).
        task_weighting: overrides ``cfg.task_weighting``.
        console: the rich console of the progress bar (stderr by default).

    The config is checked against the model's tasks (:func:`~dynarec.train.config.check_trainer`) before
    anything is built; a NaN / inf loss stops :meth:`fit` with a
    :class:`~dynarec.train.loop.DivergedError` naming the epoch, the step and the learning rates.
    ``placement``: where it runs (:func:`~dynarec.train.placement.placement_for` the config by default).

    Example::

        tr = Trainer(model, TrainerConfig(epochs=3, progress=False), seed=0)
        history = tr.fit(tables["train"], tables["valid"])
        history.best_epoch
    """

    def __init__(self, model, cfg: TrainerConfig | None = None, seed: int = 0, log_path: str | Path | None = None,
                 task_weighting: str | None = None, console=None, placement: Placement | None = None):
        self.model = model
        cfg = cfg or TrainerConfig()
        check_trainer(cfg, list(model.tasks), task_weighting, model.schema.task_types,
                      getattr(model.schema, "user", None) is not None)
        self.seed = seed
        self.log_path = Path(log_path) if log_path else None
        self.console = console
        self.placement = placement or placement_for(cfg)
        self.device = self.placement.join(model)
        self.precision = self.placement.precision
        self.cfg = self.placement.config(cfg)  # the caller's config is never changed
        self.placement.prepare(model)
        self.step = TrainStep(model, self.cfg, task_weighting)
        module = self.placement.wrap(model, self.step)  # after the optimizers fixed the gradient form
        self.step.forward = devices.AutocastForward(module, self.device, self.precision)

    @property
    def optimizers(self):
        return self.step.optimizers

    @property
    def dense_params(self):
        """The parameters whose gradient norm is clipped."""
        return self.step.clipped

    @property
    def weighting(self):
        return self.step.weighting

    @property
    def task_types(self):
        return self.step.task_types

    def _step(self, batch) -> float:
        return self.step(batch)

    def callbacks(self, valid=None, train=None) -> list:
        """The standard callbacks, in the order they run at an epoch's end. With ``train`` (the staged
        training table) and a model that defines ``refresh_statistics`` (STAR's partitioned norm), its running
        statistics are refreshed first (:class:`~dynarec.train.norm_stats.NormStatistics`)."""
        cfg, main = self.cfg, self.placement.main
        cbs = self.placement.callbacks()
        if train is not None and hasattr(self.model, "refresh_statistics"):
            cbs.append(NormStatistics(self.model, train, cfg.eval_batch_size))
        if valid is not None:
            cbs += [self.placement.validation(valid, cfg.monitor, cfg.eval_batch_size), EarlyStopping(cfg.patience)]
        if cfg.progress and main:
            cbs.append(ProgressBar(self.console, cfg.monitor))
        if self.log_path and main:
            cbs.append(CsvLog(self.log_path))
        return cbs

    def fit(self, train, valid=None, callbacks=(), resume: dict | None = None, finish: bool = True) -> History:
        """Train on ``train`` (a TensorTable) for ``cfg.epochs`` epochs, early-stopping on ``valid``; extra
        ``callbacks`` (e.g. :class:`~dynarec.train.callbacks.Checkpointing`) run after the standard ones.
        ``resume``: a saved :meth:`Loop.state_dict` to continue from (same model, config and data).
        ``finish=False`` (``trainer.distributed: torchrec``): the tables stay sharded after the fit (e.g. to
        evaluate the test split through the shards); call :meth:`finish` afterwards."""
        if resume is not None:
            self.placement.check_resume()
        staged = self.placement.shard(train)
        loop = Loop(self.model, self.step, self.callbacks(valid, staged) + list(callbacks))
        loop.hint = (f"trainer.lr {self.cfg.lr:g} / trainer.embedding_lr {self.cfg.embedding_lr:g} too high "
                     "(try 10x lower), or NaN / inf values in the data")
        hist = loop.fit(staged, self.cfg.epochs, self.cfg.batch_size, self.seed, self.cfg.threads, resume=resume)
        hist.train_rows_per_s *= self.placement.world  # rows of all ranks per second
        if finish:
            self.finish()
        return hist

    def finish(self) -> None:
        """After the fit: the model whole again where the placement split it (TorchRec: the trained tables
        assembled on rank 0, the other ranks' fused tables stay empty). A no-op in one process."""
        self.placement.finish()
