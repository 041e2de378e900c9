"""Where a training runs, as a strategy: one :class:`Placement` per way (one process, data-parallel processes
under DDP, TorchRec-sharded tables), each providing the same steps to the trainer — the build context of the
model, joining the process group and the device, the effective trainer config, the module the step calls
(:meth:`~Placement.wrap`), each rank's share of the data (:meth:`~Placement.shard`), its callbacks and the
validation it gathers, and :meth:`~Placement.finish`. The trainer holds one and has no placement branch.

A new placement is a subclass and one line in :data:`PLACEMENTS` (chosen by :func:`placement_for` from
``trainer.distributed`` and the number of processes), as TorchRec's planner types are plugged in.

Example::

    from dynarec.train.placement import placement_for

    placement = placement_for(cfg)           # SingleProcess outside torchrun
    with placement.build_context():
        model = build_model("dnn", schema, {})
    device = placement.join(model)           # process group joined, model moved to the device
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from dynarec.errors import ConfigError
from dynarec.train import device as devices
from dynarec.train import distributed
from dynarec.train import sharded_checkpoint
from dynarec.train.callbacks import Validation
from dynarec.train.config import TrainerConfig


def launched_world() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if distributed.launched() else 1


class Placement:
    """One process: the model on ``trainer.device``, the whole train split, the plain validation."""

    name = "single"

    def __init__(self, cfg: TrainerConfig, world: int = 1):
        self.cfg, self.world = cfg, world
        self.ctx = distributed.Context()
        self.device, self.precision = None, None

    @classmethod
    def check(cls, cfg: TrainerConfig, device, world: int) -> None:
        """The one-line refusals of this placement, before any process group is joined."""
        sharded_checkpoint.check(cfg, torchrec=False)

    def build_context(self):
        """The context the model is built in (eagerly here)."""
        return contextlib.nullcontext()

    def join(self, model):
        """Resolve ``trainer.device`` and ``precision``, join the process group, move ``model`` there (before
        the optimizers exist, so their state is created on the device); -> the device."""
        device = devices.resolve_device(self.cfg.device)
        self.precision = devices.check_precision(self.cfg.precision, device)
        self.check(self.cfg, device, self.world)
        self.ctx = distributed.init_from_env(device)
        self.device = distributed.local_device(device, self.ctx)
        model.to(self.device)
        return self.device

    def config(self, cfg: TrainerConfig) -> TrainerConfig:
        """The config the step runs with (``cfg`` itself, or a changed copy: the caller's is never changed)."""
        return cfg

    def prepare(self, model) -> None:
        """Before the step's optimizers are built."""

    def wrap(self, model, step):
        """The module the step calls (after its optimizers fixed the tables' gradient form)."""
        return model

    def shard(self, train):
        """This process's share of each batch of ``train`` (staged on the device; a streamed table reads only
        its own row groups, :class:`dynarec.data.loader.StreamTable`)."""
        if hasattr(train, "for_rank"):
            return train.for_rank(0, 1, self.device)
        return devices.on_device(train, self.device)

    def validation(self, valid, monitor: str, eval_batch_size: int):
        return Validation(devices.on_device(valid, self.device), monitor, eval_batch_size)

    def callbacks(self) -> list:
        """Callbacks that run first at each epoch's end."""
        return []

    def check_resume(self) -> None:
        """A one-line refusal when a run placed so cannot be resumed."""

    def resume_callbacks(self, work, meta: dict) -> list:
        """The callback writing the resume point after every epoch (last): ``last.pt`` by rank 0
        (``work``: its work folder; ``None`` on the other ranks)."""
        from dynarec.train.resume import LAST, LastState

        every = getattr(getattr(self, "cfg", None), "checkpoint_every_steps", 0)
        return [LastState(work / LAST, meta, every)] if work is not None else []

    def has_resume_point(self, work) -> bool:
        from dynarec.train import sharded_resume
        from dynarec.train.resume import LAST

        return (work / LAST).exists() or sharded_resume.exists(work)

    def load_resume(self, work, meta: dict, out=None, trainer=None):
        """-> the loop state to resume from (rank 0's ``work`` folder of the run into ``out``; ``None`` on
        the other ranks, which read rank 0's ``last.pt`` in ``out``'s work folder, the same folder on one
        machine): its ``last.pt``, or else the sharded resume point of a TorchRec run, resharded into this one
        process's ``trainer`` (:func:`~dynarec.train.sharded_resume.load_into_one`)."""
        from dynarec.errors import DynarecError
        from dynarec.outdir import work_dir
        from dynarec.train import sharded_resume
        from dynarec.train.resume import LAST, load_state

        if work is None:  # a rank other than 0: every rank continues from rank 0's resume point
            return load_state(work_dir(Path(out)) / LAST, meta) if out is not None else None
        if not (work / LAST).exists() and trainer is not None and self.world == 1 and sharded_resume.exists(work):
            return sharded_resume.load_into_one(work / sharded_resume.LAST_SHARDED, trainer.model,
                                                trainer.step.optimizers, meta)
        if not (work / LAST).exists():
            raise DynarecError(f"{out or work}: no interrupted run to resume (no {work / LAST})")
        return load_state(work / LAST, meta)

    def write_sharded(self, folder, model, meta: dict) -> bool:
        """Before :meth:`finish`: whether this run's checkpoint is sharded (``trainer.checkpoint``), and then
        written into rank 0's ``folder`` by every rank (the model then stays split: :meth:`finish` is skipped)."""
        return False

    def finish(self) -> None:
        """After the fit (and the test metrics): the model whole again where it was split."""

    @property
    def main(self) -> bool:
        """Whether this process writes the outputs (rank 0)."""
        return self.ctx.main

    @property
    def whole_model(self) -> bool:
        """Whether this process holds the whole trained model after :meth:`finish`."""
        return True


SingleProcess = Placement


class DataParallel(Placement):
    """Several processes under torchrun: the model under ``DistributedDataParallel``, each rank its rows of
    every global batch (:class:`~dynarec.train.distributed.ShardedTable`), validation on predictions gathered
    over ranks. On CUDA the tables form dense gradients: NCCL has no sparse all-reduce (the same Adagrad /
    SGD update)."""

    name = "ddp"

    def config(self, cfg):
        if self.device.type == "cuda" and cfg.embedding_grad != "dense":
            if cfg.embedding_optimizer == "sparse_adam":
                raise ConfigError("trainer.embedding_optimizer: sparse_adam needs sparse gradients, which NCCL "
                                  "cannot all-reduce; use adagrad or sgd with several GPUs")
            return dataclasses.replace(cfg, embedding_grad="dense")
        return cfg

    def wrap(self, model, step):
        if len(list(step.weighting.parameters())):
            raise ConfigError("trainer.task_weighting: learned weightings (uncertainty) are not supported "
                              "with several processes yet; use equal or fixed")
        return distributed.wrap_ddp(model, self.device)

    def shard(self, train):
        if hasattr(train, "for_rank"):  # streamed: each rank reads its own row groups, equal steps
            return train.for_rank(self.ctx.rank, self.world, self.device)
        staged = devices.on_device(train, self.device)
        return distributed.ShardedTable(getattr(staged, "staged", None) or train, self.ctx.rank, self.world,
                                        self.device)

    def validation(self, valid, monitor, eval_batch_size):
        return distributed.GatheredValidation(devices.on_device(valid, self.device), monitor, eval_batch_size)


class TorchRec(DataParallel):
    """``trainer.distributed: torchrec`` (:mod:`dynarec.train.torchrec_shard`): the feature tables sharded by
    TorchRec with a fused optimizer, the rest of the model under DDP; the tables are built without storage
    and assembled on rank 0 at :meth:`finish`."""

    name = "torchrec"

    def __init__(self, cfg, world=1):
        super().__init__(cfg, world)
        self.sharding = None

    @classmethod
    def check(cls, cfg, device, world):
        from dynarec.train.torchrec_shard import check

        check(cfg, device, world)
        sharded_checkpoint.check(cfg, torchrec=True)

    def build_context(self):
        from dynarec.tables import torchrec_adapter

        if self.world > 1 and torchrec_adapter.available():
            return torchrec_adapter.sharded_build()
        return contextlib.nullcontext()

    def prepare(self, model):  # the step's optimizers leave the feature tables (TorchRec's fused optimizer) out
        from dynarec.tables import torchrec_adapter

        torchrec_adapter.freeze(model)

    def wrap(self, model, step):
        from dynarec.train.torchrec_shard import TorchRecSharding

        if len(list(step.weighting.parameters())):
            raise ConfigError("trainer.task_weighting: learned weightings (uncertainty) are not supported "
                              "with several processes yet; use equal or fixed")
        self.sharding, self.step = TorchRecSharding(model, self.cfg, self.device, self.world), step
        step.optimizers += self.sharding.optimizers
        if self.main:
            self.sharding.print_plan()
        return self.sharding.dmp

    def callbacks(self):  # first: the fused tables follow the shards before anyone reads them
        return [self.sharding.callback()]

    def resume_callbacks(self, work, meta):  # every rank writes its shards (dynarec.train.sharded_resume)
        from dynarec.train.sharded_resume import ShardedLastState

        if self.cfg.checkpoint_every_steps:
            raise ConfigError("trainer.checkpoint_every_steps: a trainer.distributed: torchrec run writes its "
                              "sharded resume point after each epoch only; remove the key")

        return [ShardedLastState(work, self.sharding, meta)]

    def load_resume(self, work, meta, out=None, trainer=None):  # a collective call: the shards of this plan, from any world size
        from dynarec.train.sharded_resume import load_sharded_resume

        return load_sharded_resume(work, meta, self.sharding.model, self.sharding, self.step.optimizers)

    def write_sharded(self, folder, model, meta):
        if self.sharding is None or not self.sharding.layers or not sharded_checkpoint.wanted(self.cfg,
                                                                                              self.sharding.layers):
            return False
        sharded_checkpoint.save_sharded(folder, model, self.sharding, self.step.optimizers, meta)
        return True

    def finish(self):
        if self.sharding is not None:
            self.sharding.finish()

    @property
    def whole_model(self):
        return self.main


#: ``trainer.distributed`` -> its placement under several processes (one process: :class:`SingleProcess`)
PLACEMENTS: dict[str, type[Placement]] = {"ddp": DataParallel, "torchrec": TorchRec}


def placement_for(cfg: TrainerConfig, world: int | None = None) -> Placement:
    """The placement of a run with ``cfg`` over ``world`` processes (default: torchrun's, 1 outside it).
    ``trainer.distributed: torchrec`` is TorchRec at any world size (it refuses one process at
    :meth:`Placement.join`); ddp over one process is :class:`SingleProcess`."""
    if cfg.distributed not in PLACEMENTS:
        raise ConfigError(f"trainer.distributed: expected {' | '.join(PLACEMENTS)}, got '{cfg.distributed}'")
    world = launched_world() if world is None else world
    cls = PLACEMENTS[cfg.distributed]
    if cls is DataParallel and world == 1:
        cls = SingleProcess
    return cls(cfg, world)
