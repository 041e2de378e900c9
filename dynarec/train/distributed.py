"""Data-parallel training over processes (torchrun / ``torch.distributed.run``): process group from the
torchrun environment (gloo on CPU, NCCL on CUDA), each rank trains on its shard of every global batch, the
model under ``DistributedDataParallel``, validation / test metrics on the full split from predictions
gathered over ranks, one early-stopping decision (rank 0's) for all, outputs written by rank 0 only.

Sharding: every rank draws the same shuffled order of the train split (same seed); global batch ``s`` is
``order[s*B:(s+1)*B]`` exactly as in one process, and rank ``r`` takes its rows ``r, r+W, r+2W, ...``. DDP
averages the ranks' gradients, so with equal local batches one step of W processes at global batch B is the
step of one process at batch B (up to the summation order). Each epoch drops at most W-1 rows
(``len(train) % W``) so that every rank runs the same number of equal steps.

Table gradients: reduced by DDP in the form the optimizer asks for (``trainer.embedding_grad``). Sparse
gradients (only the batch's rows) need gloo, which all-gathers them: cheap for large tables and small
batches. NCCL has no sparse all-reduce, so on CUDA the tables form dense gradients (the same Adagrad / SGD
update) reduced in DDP's dense buckets: fine for tables of a few million numbers, slow beyond — there,
shard the tables with TorchRec instead (``docs/scale_out.md``)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from dynarec.data.table import TensorTable
from dynarec.errors import ConfigError
from dynarec.metrics import compute_metrics, predict_table
from dynarec.train.callbacks import Validation


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """This process's place: from the initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Context()


def is_main() -> bool:
    """Rank 0, or a single process; under torchrun also before the process group is joined (env RANK)."""
    if launched() and not (dist.is_available() and dist.is_initialized()):
        return int(os.environ["RANK"]) == 0
    return context().main


def launched() -> bool:
    """Whether this process was started by torchrun (its environment has ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_env(device: torch.device) -> Context:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...): NCCL on
    CUDA, gloo otherwise. A no-op (single process) outside torchrun or when already joined."""
    if not dist.is_initialized() and launched() and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return context()


def local_device(device: torch.device, ctx: Context) -> torch.device:
    """On CUDA under torchrun, rank ``LOCAL_RANK`` uses GPU ``LOCAL_RANK`` (``cuda`` without an index)."""
    if device.type == "cuda" and ctx.world > 1 and device.index in (None, 0):
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


class ShardedTable:
    """Rank ``rank``'s share of each global batch of ``table`` (see the module docstring). ``batches`` takes
    the GLOBAL batch size; ``len`` is this rank's rows per epoch. ``table`` may be staged on the device
    already (its rows are then gathered there), else each local batch is copied to ``device``."""

    def __init__(self, table: TensorTable, rank: int, world: int, device=None):
        self.table, self.rank, self.world = table, rank, world
        self.device = torch.device(device) if device is not None else table.sparse.device
        self.schema = table.schema

    def __len__(self) -> int:
        return (len(self.table) // self.world * self.world) // self.world

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        if batch_size % self.world:
            raise ConfigError(f"trainer.batch_size: {batch_size} is not divisible by the {self.world} processes")
        n = len(self.table)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        mine = order[: n // self.world * self.world][self.rank::self.world]
        mine = mine.to(self.table.sparse.device)
        local = batch_size // self.world
        for s in range(0, len(mine), local):
            b = self.table.take(mine[s:s + local])
            yield b if b.sparse.device == self.device else b.to(self.device)


def wrap_ddp(model, device: torch.device):
    """``DistributedDataParallel`` of ``model`` (built after the optimizers, which fix the tables' gradient
    form: DDP reads each table's ``sparse`` flag when it is built)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from dynarec.train.ddp_sentinel import WithSentinel  # keeps DDP's "no unused parameters" warning away

    ids = [device.index] if device.type == "cuda" else None
    return DDP(WithSentinel(model), device_ids=ids, find_unused_parameters=True)


def gather_predictions(model, table, batch_size: int, ctx: Context | None = None) -> dict[str, np.ndarray]:
    """Predictions for every row of ``table``: rank r predicts its contiguous slice, the slices are
    all-gathered and joined in row order (so every rank holds the same full arrays).

    Every rank's slice is padded (with copies of row 0, predicted and dropped) to ``ceil(n / world)`` rows,
    so all ranks run the same number of forwards at the same batch sizes: a model whose tables are sharded
    (TorchRec) looks them up in collective calls that every rank must join."""
    ctx = ctx or context()
    if ctx.world == 1:
        return predict_table(model, table, batch_size)
    n = len(table)
    lo, hi = n * ctx.rank // ctx.world, n * (ctx.rank + 1) // ctx.world
    width = -(-n // ctx.world)
    rows = torch.cat([torch.arange(lo, hi), torch.zeros(width - (hi - lo), dtype=torch.long)])
    host = getattr(table, "host", table)
    part = host.subset(rows)
    dev = next(model.parameters()).device
    if dev.type != "cpu":
        from dynarec.train.device import DeviceTable
        part = DeviceTable(part, dev)
    mine = {t: v[: hi - lo] for t, v in predict_table(model, part, batch_size).items()} if width else {}
    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, mine)
    if not width:
        return {t.name: np.zeros(0) for t in model.schema.tasks}
    return {t: np.concatenate([p[t] for p in parts]) for t in mine}


def evaluate_split(model, table, batch_size: int = 65536) -> dict:
    """The metrics of ``evaluate_model`` on the full ``table``, from gathered predictions under several
    processes, with the model on any device (the table is staged to the model's device)."""
    from dynarec.train.device import on_device

    dev = next(model.parameters()).device
    table = on_device(table, dev)
    preds = gather_predictions(model, table, batch_size)
    labels = {t: v.double().cpu().numpy() for t, v in table.labels.items()}
    user = None if table.user is None else table.user.cpu().numpy()
    return compute_metrics(labels, preds, table.domain.cpu().numpy(), model.schema.domain_values, user,
                           model.schema.task_types)


class GatheredValidation(Validation):
    """:class:`Validation` on predictions gathered over ranks; the monitored value is rank 0's, broadcast,
    so every rank takes the same early-stopping decision."""

    def metrics(self, model) -> dict:
        return evaluate_split(model, self.valid, self.eval_batch_size)

    def agree(self, score: float) -> float:
        box = [score]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launch_train(a, nproc: int, trainer=None) -> int:
    """``dynarec train ... --nproc N``: the same command under ``torch.distributed.run`` with N local
    processes (``--standalone``: a rendezvous on this machine). Only rank 0 writes to stdout. ``trainer``
    (the run's TrainerConfig): its TorchRec refusals are raised here, once, before any process starts."""
    from torch.distributed.run import main as torchrun

    if trainer is not None and trainer.distributed == "torchrec":
        from dynarec.train.device import resolve_device
        from dynarec.train.torchrec_shard import check
        check(trainer, resolve_device(trainer.device), nproc)
    argv = ["train"]
    for flag, v in (("--config", a.config), ("--model", a.model), ("--data", a.data), ("--epochs", a.epochs),
                    ("--batch-size", a.batch_size), ("--lr", a.lr), ("--seed", a.seed), ("--out", a.out)):
        if v is not None:
            argv += [flag, str(v)]
    for s in a.set or []:
        argv += ["--set", s]
    if a.json:
        argv.append("--json")
    if getattr(a, "overwrite", False):
        argv.append("--overwrite")
    if getattr(a, "resume", None) is not None:
        argv += ["--resume", str(a.resume)]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    import logging
    import tempfile

    from dynarec.train.rank_errors import ENV, first_line

    elastic = logging.getLogger("torch.distributed.elastic")
    level, elastic.level = elastic.level, logging.CRITICAL  # its "failed (exitcode: 2) ..." log: our line says it
    with tempfile.TemporaryDirectory(prefix="dynarec-ranks-") as errors:
        os.environ[ENV] = errors  # the ranks' one-line errors (dynarec.train.rank_errors), printed once below
        try:
            torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "dynarec", *argv])
        except Exception as e:  # ChildFailedError
            codes = {f.exitcode for f in (getattr(e, "failures", None) or {}).values()}
            line = first_line(errors)
            if line is not None:  # a user's mistake, a diverged or collapsed fit: one line, exit code 2
                print(line, file=sys.stderr)
                return 2
            print(f"dynarec: error: training with {nproc} processes failed ({type(e).__name__}, exit codes "
                  f"{sorted(codes) or '?'})", file=sys.stderr)
            return 1
        finally:
            os.environ.pop(ENV, None)
            elastic.level = level
    return 0


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
