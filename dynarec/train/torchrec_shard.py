"""``trainer.distributed: torchrec``: the feature tables as TorchRec collections
(:mod:`dynarec.tables.torchrec_adapter`) sharded by ``DistributedModelParallel`` with a fused optimizer
(updated inside the backward pass, no table gradient is ever formed), the rest of the model under DDP.

``trainer.sharding`` picks TorchRec's sharding type for every table: ``table_wise`` (each table on one
rank), ``column_wise`` (each table's columns split over the ranks), ``data_parallel`` (a replica per rank,
gradients all-reduced, updated by a plain Adagrad / SGD), ``row_wise`` (rows split; CUDA only) or ``auto``
(TorchRec's planner chooses). The plan is printed at start (rank 0, stderr).

Embedding optimizers: ``adagrad`` (FBGEMM's exact Adagrad with torch's ``eps`` = 1e-10: the update of
``torch.optim.Adagrad``) and ``sgd``. TorchRec divides the sharded tables' gradients by the number of ranks
(its default gradient division) and DDP averages the dense ones, so both see the gradient of the mean loss
over the global batch, as one process does (measured: SGD tables equal to 2e-8, tests/scale/test_torchrec.py)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

import torch
import torch.distributed as dist

from dynarec.errors import ConfigError
from dynarec.tables import torchrec_adapter
from dynarec.train.config import SHARDINGS
from dynarec.train.loop import Callback

OPTIMIZERS = ("adagrad", "sgd")
EPS = 1e-10  # torch.optim.Adagrad's default


def check(cfg, device: torch.device, world: int) -> None:
    """The one-line refusals, before anything is built."""
    torchrec_adapter.require()
    if cfg.sharding not in SHARDINGS:
        raise ConfigError(f"trainer.sharding: expected {' | '.join(SHARDINGS)}, got '{cfg.sharding}'")
    if cfg.sharding == "row_wise" and device.type != "cuda":
        raise ConfigError("trainer.sharding: row_wise needs CUDA (TorchRec has no row-wise CPU kernel); use "
                          "table_wise, column_wise or data_parallel on CPU")
    if cfg.embedding_optimizer not in OPTIMIZERS:
        raise ConfigError(f"trainer.embedding_optimizer: '{cfg.embedding_optimizer}' has no fused TorchRec "
                          f"kernel here; use {' | '.join(OPTIMIZERS)} with trainer.distributed: torchrec")
    if world < 2:
        raise ConfigError("trainer.distributed: torchrec needs several processes (--nproc N, or torchrun); "
                          "one process trains the same model with ddp")


def column_shard(dim: int, world: int) -> int | None:
    """Width of the column shards of a ``dim``-wide table over ``world`` ranks: ``dim / k`` for the largest
    ``2 <= k <= world`` whose shards are multiples of 4 wide (FBGEMM's rule); ``None`` when there is none."""
    for k in range(world, 1, -1):
        if dim % (4 * k) == 0:
            return dim // k
    return None


class TorchRecSharding:
    """Shards ``model`` (already on ``device``; its optimizers built with the feature tables frozen):
    ``self.dmp`` is the module to call, ``self.plan`` TorchRec's plan, ``self.optimizers`` the extra ones
    (data-parallel tables). The model's fused tables are released once the shards hold their rows: during
    the fit, validation and early stopping's best state go through the shards; :meth:`finish` assembles
    the trained tables on one rank at the end."""

    def __init__(self, model, cfg, device: torch.device, world: int):
        with _quiet():
            self._build(model, cfg, device, world)

    def _build(self, model, cfg, device: torch.device, world: int) -> None:
        from torchrec.distributed.embedding_types import EmbeddingComputeKernel
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from fbgemm_gpu.split_embedding_configs import EmbOptimType

        main = dist.get_rank() == 0
        for path, layer in torchrec_adapter.feature_layers(model)[1] if main else ():
            print(f"torchrec: the {layer.layout.spec.name} table (width {layer.embed_dim}, not a multiple of 4) "
                  "stays in the model under DDP", file=sys.stderr)
        self.model, self.layers = model, torchrec_adapter.attach(model)
        sgd = cfg.embedding_optimizer == "sgd"
        fused = {"optimizer": EmbOptimType.EXACT_SGD if sgd else EmbOptimType.EXACT_ADAGRAD,
                 "learning_rate": cfg.embedding_lr}
        if not sgd:
            fused["eps"] = EPS
        sharder = EmbeddingBagCollectionSharder(fused_params=fused)
        constraints = None
        if cfg.sharding != "auto":
            kernel = (EmbeddingComputeKernel.DENSE if cfg.sharding == "data_parallel"
                      else EmbeddingComputeKernel.FUSED).value
            constraints = {}
            for _, layer in self.layers:
                kind, cw = cfg.sharding, None
                if kind == "column_wise":
                    cw = column_shard(layer.embed_dim, world)
                    if cw is None:
                        kind = "table_wise"
                        if main:
                            print(f"torchrec: the {layer.layout.spec.name} tables (dim {layer.embed_dim}) are "
                                  f"table_wise: column shards need widths that are multiples of 4", file=sys.stderr)
                for t in layer.logical:
                    constraints[t] = ParameterConstraints(sharding_types=[kind], compute_kernels=[kernel],
                                                          min_partition=cw)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, local_world_size=local,
                                                             compute_device=device.type),
                                           constraints=constraints)
        from dynarec.train.ddp_sentinel import WithSentinel  # keeps DDP's "no unused parameters" warning away

        model = WithSentinel(model)
        self.plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
        self.dmp = DistributedModelParallel(
            model, device=device, plan=self.plan, sharders=[sharder],
            data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False, find_unused_parameters=True))
        for _, layer in self.layers:
            layer.scatter()  # the sharded collections start from the model's own initial rows
            layer.release()  # ... and from now on only they hold the rows (see torchrec_adapter)
        replicas = [p for n, p in self.dmp.named_parameters()
                    if ".ebc." in n and p.requires_grad and not hasattr(p, "_in_backward_optimizers")]
        self.optimizers = []
        if replicas:  # data-parallel tables: all-reduced (averaged) gradients, a plain optimizer
            self.optimizers.append(torch.optim.SGD(replicas, lr=cfg.embedding_lr) if sgd
                                   else torch.optim.Adagrad(replicas, lr=cfg.embedding_lr, eps=EPS))

    def describe(self) -> str:
        return f"torchrec sharding plan:\n{self.plan}"

    def print_plan(self) -> None:
        print(self.describe(), file=sys.stderr)

    def finish(self, dst: int = 0) -> None:
        """The fit is over: the trained tables assembled on rank ``dst`` (a collective call; the other ranks
        keep empty fused tables) and the model's original layers put back, so rank ``dst`` holds the usual
        model (the checkpoint it writes needs no TorchRec). Idempotent."""
        if self.layers:
            for _, layer in self.layers:
                layer.consolidate(dst)
            torchrec_adapter.detach(self.model, self.layers)
            self.layers = []

    def callback(self) -> Callback:
        return _Sync(self)


@contextlib.contextmanager
def _quiet():
    """TorchRec's and FBGEMM's advice to their own developers (deprecations, planner notes, one log line per
    table) kept off the user's terminal while the collections are planned and sharded."""
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # "is_fx_tracing" at each forward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


class _Sync(Callback):
    """First callback of a TorchRec fit: at the fit's end, the bytes of table storage each rank held
    (``history.held_bytes``: its shards, its fused copy — 0 since released — and the table once)."""

    def __init__(self, sharding: TorchRecSharding):
        self.sharding = sharding

    def on_fit_end(self, loop) -> None:
        keys = ("shards", "fused", "table")
        mine = {k: sum(layer.held_bytes()[k] for _, layer in self.sharding.layers) for k in keys}
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        loop.history.held_bytes = ranks
