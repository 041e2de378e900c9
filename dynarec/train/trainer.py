"""The trainer of ``train_model``, the benchmarks and the tests: a :class:`~dynarec.train.step.TrainStep`
driven by a :class:`~dynarec.train.loop.Loop` with the standard callbacks (validation, early stopping with
best-state reload, progress bar, CSV log)."""
from __future__ import annotations

import os
from pathlib import Path

from dynarec.train.callbacks import CsvLog, EarlyStopping, ProgressBar, Validation, monitor_value  # noqa: F401
from dynarec.errors import ConfigError
from dynarec.train import device as devices
from dynarec.train import distributed
from dynarec.train.config import TrainerConfig, check_trainer
from dynarec.train.loop import History, Loop, set_seed  # noqa: F401
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
    :class:`~dynarec.train.loop.DivergedError` naming the epoch, the step and the learning rates."""

    def __init__(self, model, cfg: TrainerConfig | None = None, seed: int = 0, log_path: str | Path | None = None,
                 task_weighting: str | None = None, console=None):
        self.model = model
        self.cfg = cfg or TrainerConfig()
        check_trainer(self.cfg, list(model.tasks), task_weighting, {t.name: t.type for t in model.schema.tasks},
                      getattr(model.schema, "user", None) is not None)
        self.seed = seed
        self.log_path = Path(log_path) if log_path else None
        self.console = console
        self.device, self.dist = self._place(model)
        self.sharding = None
        torchrec = self.cfg.distributed == "torchrec"
        if torchrec:  # the feature tables are TorchRec's (fused optimizer): the step's optimizers leave them out
            from dynarec.tables import torchrec_adapter
            torchrec_adapter.freeze(model)
        self.step = TrainStep(model, self.cfg, task_weighting)
        module = model
        if self.dist.world > 1:
            if len(list(self.step.weighting.parameters())):
                raise ConfigError("trainer.task_weighting: learned weightings (uncertainty) are not supported "
                                  "with several processes yet; use equal or fixed")
            if torchrec:
                from dynarec.train.torchrec_shard import TorchRecSharding
                self.sharding = TorchRecSharding(model, self.cfg, self.device, self.dist.world)
                self.step.optimizers += self.sharding.optimizers
                module = self.sharding.dmp
                if self.dist.main:
                    self.sharding.print_plan()
            else:
                module = distributed.wrap_ddp(model, self.device)  # after the optimizers fixed the gradient form
        self.step.forward = devices.AutocastForward(module, self.device, self.precision)

    def _place(self, model):
        """Resolve ``trainer.device`` / ``precision`` / ``distributed``, join torchrun's process group, move
        the model there (before the optimizers exist, so their state is created on the device)."""
        cfg = self.cfg
        if cfg.distributed not in ("ddp", "torchrec"):
            raise ConfigError(f"trainer.distributed: expected ddp | torchrec, got '{cfg.distributed}'")
        device = devices.resolve_device(cfg.device)
        self.precision = devices.check_precision(cfg.precision, device)
        if cfg.distributed == "torchrec":  # refusals before joining the process group
            from dynarec.train.torchrec_shard import check
            check(cfg, device, int(os.environ.get("WORLD_SIZE", 1)) if distributed.launched() else 1)
        ctx = distributed.init_from_env(device)
        device = distributed.local_device(device, ctx)
        if ctx.world > 1 and device.type == "cuda" and cfg.embedding_grad != "dense":
            if cfg.embedding_optimizer == "sparse_adam":
                raise ConfigError("trainer.embedding_optimizer: sparse_adam needs sparse gradients, which NCCL "
                                  "cannot all-reduce; use adagrad or sgd with several GPUs")
            cfg.embedding_grad = "dense"  # NCCL has no sparse all-reduce (same Adagrad / SGD update)
        model.to(device)
        return device, ctx

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

    def callbacks(self, valid=None) -> list:
        """The standard callbacks, in the order they run at an epoch's end."""
        cfg, cbs, main = self.cfg, [], self.dist.main
        if self.sharding is not None:  # first: the fused tables follow the shards before anyone reads them
            cbs.append(self.sharding.callback())
        if valid is not None:
            valid = devices.on_device(valid, self.device)
            check = distributed.GatheredValidation if self.dist.world > 1 else Validation
            cbs += [check(valid, cfg.monitor, cfg.eval_batch_size), EarlyStopping(cfg.patience)]
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
        if resume is not None and self.sharding is not None:
            raise ConfigError("train --resume: a trainer.distributed: torchrec run cannot be resumed yet (the "
                              "fused optimizer's state is not saved); start it again")
        loop = Loop(self.model, self.step, self.callbacks(valid) + list(callbacks))
        loop.hint = (f"trainer.lr {self.cfg.lr:g} / trainer.embedding_lr {self.cfg.embedding_lr:g} too high "
                     "(try 10x lower), or NaN / inf values in the data")
        staged = devices.on_device(train, self.device) if not hasattr(train, "for_rank") else \
            train.for_rank(self.dist.rank, self.dist.world, self.device)  # streamed: reads its own row groups
        if self.dist.world > 1 and not hasattr(train, "for_rank"):
            staged = distributed.ShardedTable(getattr(staged, "staged", None) or train, self.dist.rank,
                                              self.dist.world, self.device)
        hist = loop.fit(staged, self.cfg.epochs, self.cfg.batch_size, self.seed, self.cfg.threads, resume=resume)
        hist.train_rows_per_s *= self.dist.world  # rows of all ranks per second
        if finish:
            self.finish()
        return hist

    def finish(self) -> None:
        """After a TorchRec fit: the trained tables assembled on rank 0 (the usual model there; the other
        ranks' fused tables stay empty) and the model's own layers back. A no-op otherwise."""
        if self.sharding is not None:
            self.sharding.finish()
