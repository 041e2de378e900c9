"""Run under torchrun (2 processes, ``trainer.distributed: torchrec``): train dnn on the small synthetic split
of :mod:`tests.scale.ddp_worker` once per sharding of argv[2] and ``trainer.checkpoint`` value, into
``argv[1]/<sharding>-<checkpoint>``; rank 0 writes ``argv[1]/rows.json``: the rows of the model's own fused
table on each rank after each run (a sharded checkpoint must leave them unassembled: 0 everywhere).
Used by tests/scale/test_sharded_checkpoint.py."""
import json
import sys
from pathlib import Path

import torch

from tests.scale.ddp_worker import TRAINER, data
from tests.scale.torchrec_worker import _rows_per_rank
from dynarec.train.distributed import context, shutdown


def main(out: str, shardings: list[str]) -> None:
    from dynarec.train.run import train_model

    torch.set_num_threads(1)
    schema, tables = data()
    rows = {}
    for sharding in shardings:
        for checkpoint in ("file", "sharded"):
            res = train_model("dnn", schema, tables, {}, {**TRAINER, "embedding_grad": "sparse",
                                                          "embedding_optimizer": "adagrad", "distributed": "torchrec",
                                                          "sharding": sharding, "checkpoint": checkpoint},
                              seed=0, out=Path(out) / f"{sharding}-{checkpoint}")
            rows[f"{sharding}-{checkpoint}"] = _rows_per_rank(res.model)
    if context().main:
        (Path(out) / "rows.json").write_text(json.dumps(rows))
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
