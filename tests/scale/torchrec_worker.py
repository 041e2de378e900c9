"""Run under torchrun with ``trainer.distributed: torchrec``, once per sharding type of argv[3], or as one
process (WORLD_SIZE unset) with the plain trainer: train each model of argv[2] on the small synthetic split
of :mod:`tests.scale.ddp_worker` and save (rank 0) its validation history, test metrics, what the run printed
to stderr (the sharding plan) and, under torchrun, a record of every training step (:class:`ShardRecorder`),
under ``"<sharding>/<model>"`` (one process: ``"one/<model>"``). Used by tests/scale/test_torchrec.py."""
import contextlib
import io
import sys

import torch
import torch.distributed as dist

from tests.scale.ddp_worker import CASES, TRAINER, Recorder, data
from dynarec.train.distributed import context, launched, shutdown


def _rows_per_rank(model) -> list[int] | None:
    """Rows of the model's fused feature table on each rank after the run (all-gathered)."""
    from dynarec.tables.torchrec_adapter import feature_layers

    rows = sum(m.weight.weight.shape[0] for _, m in feature_layers(model)[0])
    if not (dist.is_available() and dist.is_initialized()):
        return [rows]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, rows)
    return out


def _pieces(model) -> list[tuple]:
    """(logical table, row offset, column offset, copy) of every shard / replica of the TorchRec layers."""
    from dynarec.tables.torchrec_adapter import TorchRecFeatures

    return [(tb, r, c, t.detach().clone()) for m in model.modules() if isinstance(m, TorchRecFeatures)
            for tb, r, c, t in m._pieces()]


class ShardRecorder(Recorder):
    """:class:`~tests.scale.ddp_worker.Recorder` for a TorchRec run, where the sharded tables have no
    gradient (TorchRec's fused optimizer updates them inside backward). Per step and rank it keeps: the
    dense weights before the step and their (DDP-averaged) gradients, this rank's batch, the pooled lookup
    output of the TorchRec layer and the gradient that reached it, and this rank's table shards before and
    after the step. :meth:`take` all-gathers the per-rank parts."""

    def __init__(self):
        super().__init__()
        from dynarec.tables.torchrec_adapter import TorchRecFeatures

        step, backward = self._patched()
        recorder = self

        def hook(module, args, out):
            cur = recorder._current
            if cur is None or not out.requires_grad:  # an evaluation pass
                return
            cur["lookup"] = out.detach().clone()
            out.register_hook(lambda g: cur.__setitem__("lookup_grad", g.detach().clone()))

        def step_(ts, batch):
            if "hook" not in ts.__dict__:
                ts.__dict__["hook"] = [m.register_forward_hook(hook) for m in ts.model.modules()
                                       if isinstance(m, TorchRecFeatures)]
            recorder._current = {"model": ts.model, "batch": batch, "before_tables": _pieces(ts.model),
                                 "before": {k: v.detach().clone() for k, v in ts.model.state_dict().items()
                                            if "local_shard" not in k}}
            return recorder._step(ts, batch)

        def backward_and_step(loss, optimizers, clipped, grad_clip):
            out = backward(loss, optimizers, clipped, grad_clip)
            cur, s = recorder._current, recorder.steps[-1]
            recorder._current = None
            s.update(lookup=cur["lookup"], lookup_grad=cur["lookup_grad"], before_tables=cur["before_tables"],
                     after_tables=_pieces(cur["model"]))
            return out

        self._install(step_, backward_and_step)

    def grads(self, model) -> dict[str, torch.Tensor]:
        """The dense part's gradients (the sharded tables have none)."""
        out = {}
        for n, p in model.named_parameters():
            if ".ebc." not in n and p.requires_grad:
                g = torch.zeros_like(p) if p.grad is None else p.grad
                out[n] = (g.to_dense() if g.is_sparse else g).detach().clone()
        return out

    def take(self) -> list[dict]:
        steps = super().take()
        if dist.is_available() and dist.is_initialized():
            for s in steps:
                for key in ("lookup", "lookup_grad", "before_tables", "after_tables"):
                    every = [None] * dist.get_world_size()
                    dist.all_gather_object(every, s[key])
                    s[key] = every
        return steps


def main(out: str, names: list[str], shardings: list[str], optimizer: str = "adagrad") -> None:
    from dynarec.train.run import train_model

    torch.set_num_threads(1)
    schema, tables = data()
    saved = {}
    recorder = ShardRecorder() if launched() else None
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
                "history": res.history.epochs, "best_epoch": res.history.best_epoch, "metrics": res.metrics,
                "stderr": err.getvalue(), "steps": recorder.take() if recorder else None,
                "state_keys": sorted(res.model.state_dict()),
                "held_bytes": getattr(res.history, "held_bytes", None),
                "table_rows_after": _rows_per_rank(res.model)}
    ctx = context()
    saved["world"] = ctx.world
    if ctx.main:
        torch.save(saved, out)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",") if len(sys.argv) > 3 else [], *sys.argv[4:])
