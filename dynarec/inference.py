"""Two small pieces every scorer of a model shares: :func:`eval_mode` (evaluation mode for a block, the
caller's mode restored after it, also on an error) and :func:`task_output` (a task's logit -> what it
predicts: the probability of a binary task, the value of a regression one).

Example::

    with eval_mode(model), torch.no_grad():
        out = model(batch)
    probs = {t: task_output(v, types.get(t, "binary")) for t, v in out.items()}
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["eval_mode", "task_output", "task_outputs"]


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module.eval()`` for the block; its former mode (training or not) back afterwards."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def task_output(logit: torch.Tensor, task_type: str = "binary") -> torch.Tensor:
    """The sigmoid of a binary task's logit; a regression task's output as it is."""
    return torch.sigmoid(logit) if task_type == "binary" else logit


def task_outputs(logits: dict[str, torch.Tensor], types: dict[str, str]) -> dict[str, torch.Tensor]:
    """:func:`task_output` of every task (a task missing from ``types`` is binary)."""
    return {t: task_output(v, types.get(t, "binary")) for t, v in logits.items()}
