"""Run under torchrun (or with WORLD_SIZE unset, as one process): train each model of CASES on the same small
synthetic split and save (rank 0) its test predictions and metrics, plus a record of every training step: the
weights before the step, the batch each rank took and the gradient the step applied (DDP's average over ranks,
before clipping). For the first model also the gathered validation predictions and their metrics.
Used by tests/scale/test_ddp.py."""
import sys

import torch
import torch.distributed as dist

import dynarec.train.step as step_module
from dynarec.data.prepare import synthetic_tables
from dynarec.train.distributed import context, gather_predictions, shutdown

# no dropout and no batch statistics: with them one process and several do not compute the same gradient
CASES = {
    "dnn": ({"hidden": [16]}, {"embedding_grad": "sparse"}),  # sparse table gradients, all-gathered by gloo
    "mmoe": ({"hidden": [8], "num_experts": 2, "expert_dropout": 0.0}, {}),
    "pepnet": ({}, {}),
    "star": ({"hidden": [16], "aux_hidden": [8], "partitioned_norm": False}, {}),
    "apg_dnn": ({"hidden": [16], "rank_k": 8}, {"embedding_grad": "dense"}),
}
TRAINER = {"epochs": 2, "batch_size": 256, "patience": 1, "progress": False, "eval_batch_size": 300}


def data():
    schema, tables, _ = synthetic_tables(4000, seed=0)
    pick = lambda t, n: t.subset(torch.arange(n))  # noqa: E731
    return schema, {"train": pick(tables["train"], 1024), "valid": pick(tables["valid"], 333),
                    "test": pick(tables["test"], 301)}


def dense_grads(model) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as a dense tensor (zeros where none was formed)."""
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        out[name] = torch.zeros_like(p) if g is None else (g.to_dense() if g.is_sparse else g).detach().clone()
    return out


class Recorder:
    """Wraps ``TrainStep.step`` and ``backward_and_step`` to keep, for every step, the weights before it, this
    rank's batch and the gradient after backward (for DDP: already averaged over the ranks)."""

    def __init__(self):
        self.steps, self._current = [], None
        self._step, self._backward = step_module.TrainStep.step, step_module.backward_and_step
        self._install(*self._patched())

    def grads(self, model) -> dict[str, torch.Tensor]:
        """The gradients a step records (every parameter's, dense)."""
        return dense_grads(model)

    def _patched(self):
        """The recording ``TrainStep.step`` and ``backward_and_step`` (a subclass may wrap them)."""
        recorder = self

        def step(ts, batch):
            recorder._current = {"model": ts.model, "batch": batch,
                                 "before": {k: v.detach().clone() for k, v in ts.model.state_dict().items()}}
            return recorder._step(ts, batch)

        def backward_and_step(loss, optimizers, clipped, grad_clip):
            cur = recorder._current
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()}")
            loss.backward()
            recorder.steps.append({"before": cur["before"], "batch": cur["batch"],
                                   "grads": recorder.grads(cur["model"]), "loss": loss.item()})
            if grad_clip and grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(clipped, grad_clip)
            for o in optimizers:
                o.step()
            return loss.item()

        return step, backward_and_step

    def _install(self, step, backward_and_step) -> None:
        step_module.TrainStep.step, step_module.backward_and_step = step, backward_and_step

    def close(self) -> None:
        """Put the training step's own functions back."""
        step_module.TrainStep.step, step_module.backward_and_step = self._step, self._backward

    def take(self) -> list[dict]:
        """The steps recorded since the last call; each step's ``batches`` holds every rank's batch, in rank
        order (a collective under torchrun: every rank calls it)."""
        steps, self.steps = self.steps, []
        for s in steps:
            mine = s.pop("batch")
            if dist.is_available() and dist.is_initialized():
                every = [None] * dist.get_world_size()
                dist.all_gather_object(every, mine)
            else:
                every = [mine]
            s["batches"] = every
        return steps


def main(out: str, names: list[str]) -> None:
    from dynarec.metrics import compute_metrics, predict_table
    from dynarec.train.run import train_model

    torch.set_num_threads(1)
    schema, tables = data()
    recorder = Recorder()
    saved = {}
    for name in names:
        params, extra = CASES[name]
        res = train_model(name, schema, tables, params, {**TRAINER, **extra}, seed=0)
        saved[name] = {"steps": recorder.take(), "test_preds": predict_table(res.model, tables["test"], 100),
                       "metrics": res.metrics, "epochs": len(res.history.epochs)}
        if name == names[0]:
            valid = tables["valid"]
            preds = gather_predictions(res.model, valid, 100)
            labels = {t: v.double().numpy() for t, v in valid.labels.items()}
            saved["gathered"] = {"preds": preds, "local": predict_table(res.model, valid, 100),
                                 "metrics": compute_metrics(labels, preds, valid.domain.numpy(),
                                                            schema.domain_values)}
    ctx = context()
    saved["world"] = ctx.world
    if ctx.main:
        torch.save(saved, out)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
