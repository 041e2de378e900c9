"""Run under torchrun with ``trainer.distributed: torchrec``, once per sharding type of argv[3], or as one
process (WORLD_SIZE unset) with the plain trainer: train each model of argv[2] on the small synthetic split
of :mod:`tests.scale.ddp_worker` and save (rank 0) its weights, validation history, test metrics and what
the run printed to stderr (the sharding plan), under ``"<sharding>/<model>"`` (one process: ``"one/<model>"``).
Used by tests/scale/test_torchrec.py."""
import contextlib
import io
import sys

import torch

from tests.scale.ddp_worker import CASES, TRAINER, data
from dynarec.train.distributed import context, launched, shutdown


def _rows_per_rank(model) -> list[int] | None:
    """Rows of the model's fused feature table on each rank after the run (all-gathered)."""
    import torch.distributed as dist
    from dynarec.tables.torchrec_adapter import feature_layers

    rows = sum(m.weight.weight.shape[0] for _, m in feature_layers(model)[0])
    if not (dist.is_available() and dist.is_initialized()):
        return [rows]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, rows)
    return out


def main(out: str, names: list[str], shardings: list[str], optimizer: str = "adagrad") -> None:
    from dynarec.train.run import train_model

    torch.set_num_threads(1)
    schema, tables = data()
    saved = {}
    for sharding in shardings if launched() else ["one"]:
        extra = {"distributed": "torchrec", "sharding": sharding} if launched() else {}
        for name in names:
            params = CASES[name][0] if name in CASES else {}
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                # monitor auc:click: with it some case reloads an earlier best state (what the tests need)
                res = train_model(name, schema, tables, params, {**TRAINER, "embedding_grad": "sparse",
                                                                  "monitor": "auc:click",
                                                                  "embedding_optimizer": optimizer, **extra}, seed=0)
            saved[f"{sharding}/{name}"] = {
                "state": {k: v.detach().clone() for k, v in res.model.state_dict().items()},
                "history": res.history.epochs, "best_epoch": res.history.best_epoch, "metrics": res.metrics,
                "stderr": err.getvalue(),
                "held_bytes": getattr(res.history, "held_bytes", None),
                "table_rows_after": _rows_per_rank(res.model)}
    ctx = context()
    saved["world"] = ctx.world
    if ctx.main:
        torch.save(saved, out)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",") if len(sys.argv) > 3 else [], *sys.argv[4:])
