"""Run under torchrun (2 processes, ``trainer.distributed: torchrec``, column_wise): dnn on the small split of
:mod:`tests.scale.ddp_worker` for 3 epochs into ``argv[1]``:

* ``ref/``: the uninterrupted run;
* ``run/``: the same run stopped by a KeyboardInterrupt inside epoch 3 (its work folder keeps the sharded
  resume point of epoch 2, copied to ``kept/``, the whole work folder to ``partial/``), then resumed with
  ``resume=True``;
* ``pieces.<rank>.pt``: what each rank held when it wrote that resume point, taken from the live objects (not
  through DCP): every table shard, fused Adagrad accumulator, dense weight and optimizer tensor, with its
  offsets in the whole tensor — the test assembles them to check a one-process load of ``kept/``;
* ``held.<rank>.json``: the rows of the model's own fused table on the rank after each resume-point write.

Used by tests/scale/test_sharded_resume.py."""
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import dynarec.train.sharded_resume as sharded_resume
from dynarec.train.distributed import context, shutdown
from dynarec.train.sharded_checkpoint import state_of
from dynarec.train.step import TrainStep
from tests.scale.ddp_worker import TRAINER, data

CFG = {**TRAINER, "epochs": 3, "patience": 3, "embedding_grad": "sparse", "embedding_optimizer": "adagrad",
       "distributed": "torchrec", "sharding": "column_wise", "checkpoint": "file"}
STEPS = 4  # 1024 train rows, global batch 256


def _pieces(obj, prefix="") -> dict:
    """{key: [(offsets, local tensor)]} of every tensor in a (nested) state."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_pieces(v, f"{prefix}.{k}" if prefix else str(k)))
    elif hasattr(obj, "local_shards"):
        out[prefix] = [(list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in obj.local_shards()]
    elif isinstance(obj, torch.Tensor):
        out[prefix] = [([0] * obj.dim(), obj.detach().clone())]
    return out


def main(out: str) -> None:
    from dynarec.train.run import train_model

    torch.set_num_threads(1)
    schema, tables = data()
    d = Path(out)
    train_model("dnn", schema, tables, {}, CFG, seed=0, out=d / "ref")
    rank = context().rank  # the process group is joined by the first run
    real_save, real_step, calls = sharded_resume.save_sharded_resume, TrainStep.step, []

    held = []  # the rows of the model's own fused table on this rank after each save (0: nothing assembled)

    def save(work, loop, sharding, meta):
        real_save(work, loop, sharding, meta)
        held.extend(layer.orig.weight.weight.shape[0] for _, layer in sharding.layers)
        if loop.epoch == 2:
            torch.save(_pieces(state_of(loop.model, sharding, loop.step.optimizers)), d / f"pieces.{rank}.pt")

    def step(self, batch):
        calls.append(1)
        if len(calls) == 2 * STEPS + 2:
            raise KeyboardInterrupt
        return real_step(self, batch)

    sharded_resume.save_sharded_resume, TrainStep.step = save, step
    try:
        train_model("dnn", schema, tables, {}, CFG, seed=0, out=d / "run")
        raise AssertionError("the run was not interrupted")
    except KeyboardInterrupt:
        pass
    sharded_resume.save_sharded_resume, TrainStep.step = real_save, real_step
    (d / f"held.{rank}.json").write_text(json.dumps(held))
    dist.barrier()
    if rank == 0:
        shutil.copytree(d / ".run.partial" / sharded_resume.LAST_SHARDED, d / "kept")
        shutil.copytree(d / ".run.partial", d / "partial")  # for a resume in one process
    dist.barrier()
    train_model("dnn", schema, tables, {}, CFG, seed=0, out=d / "run", resume=True)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
