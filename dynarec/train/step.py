"""One optimisation step, apart from any loop: forward, per-task losses combined by the task weighting,
the model's auxiliary loss, backward, gradient clipping of the dense parameters and both optimizer groups
(tables and dense part, :mod:`dynarec.train.optim`). Epochs (:mod:`dynarec.train.loop`), online passes
and data-parallel training all drive this same step."""
from __future__ import annotations

import torch
from torch import nn

from dynarec.errors import DataError
from dynarec.losses import build_weighting, model_task_losses
from dynarec.train.config import TrainerConfig
from dynarec.train.optim import build_optimizers
from dynarec.train.precision import check_compile, compile_model



def backward_and_step(loss, optimizers, clipped, grad_clip) -> float:
    """The end of every training step: refuse a non-finite loss, backward, clip ``clipped`` to ``grad_clip``
    (when > 0), step every optimizer; returns the loss as a float."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()} (lower trainer.lr or check the data)")
    loss.backward()
    if grad_clip and grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(clipped, grad_clip)
    for o in optimizers:
        o.step()
    return loss.item()

class TrainStep:
    """``step(batch) -> loss``: one update of ``model`` (and of the task weighting's own parameters, e.g.
    Kendall et al.'s learned log-variances, trained with the dense optimizer).

    Args:
        model: a registered dynarec model; its hooks ``task_loss`` / ``extra_loss`` are used when defined.
        cfg: optimizers, learning rates, ``grad_clip``, ``task_weighting`` and ``loss_weights``.
        task_weighting: overrides ``cfg.task_weighting`` when given.
        forward: the module whose call runs the forward pass (default ``model``; e.g. a
            ``DistributedDataParallel`` wrapper of it). Loss hooks are always read from ``model``.

    The step never changes the model's train / eval mode: the caller sets it."""

    def __init__(self, model: nn.Module, cfg: TrainerConfig | None = None, task_weighting: str | None = None,
                 forward: nn.Module | None = None):
        self.model = model
        self.forward = forward if forward is not None else model
        self.cfg = cfg or TrainerConfig()
        self.task_types = model.schema.task_types
        self.weighting = build_weighting(task_weighting or self.cfg.task_weighting, model.tasks, self.task_types,
                                         self.cfg.loss_weights)
        self.optimizers, self.clipped = build_optimizers(model, self.cfg, list(self.weighting.parameters()))
        if check_compile(self.cfg.compile):  # trainer.compile: forward + backward compiled, optimizers eager
            compile_model(model)

    def __call__(self, batch) -> float:
        return self.step(batch)

    def step(self, batch) -> float:
        """One update on ``batch`` (a :class:`dynarec.data.table.Batch` of B rows) -> its training loss
        (weighted task losses + auxiliary loss, a Python float). A NaN / inf loss raises before any update."""
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        out = self.forward(batch)
        losses = model_task_losses(self.model, out, batch.labels, self.task_types)
        loss = self.weighting(losses)
        extra = self.model.extra_loss()
        if extra is not None:
            loss = loss + extra
        return backward_and_step(loss, self.optimizers, self.clipped, self.cfg.grad_clip)

    def state_dict(self) -> dict:
        """What a resumed run needs besides the model's weights: every optimizer's state (Adagrad
        accumulators, Adam moments, step counts) and the task weighting's parameters. Like torch's
        ``state_dict`` it holds references to the live tensors: ``torch.save`` it (or deep-copy it) to keep a
        snapshot."""
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into a step built with the same model and config."""
        opts = state.get("optimizers", [])
        kinds = [type(o).__name__ for o in self.optimizers]
        if len(opts) != len(self.optimizers):
            raise DataError(f"training state: {len(opts)} optimizer states saved, this run has {len(kinds)} "
                            f"({', '.join(kinds)}): was it saved with another trainer config?")
        for o, s in zip(self.optimizers, opts):
            o.load_state_dict(s)
        self.weighting.load_state_dict(state.get("weighting", {}))
