"""Precise statistics: at the end of every epoch, the layers whose evaluation uses statistics gathered in
training (``stats == "precise"``, e.g. STAR's :class:`~dynarec.nn.star.PartitionedNorm`) get the exact
statistics of the model as it is now, from one training-mode forward pass over up to :data:`ROWS` training rows
("precise BN", Wu & Johnson, *Rethinking "Batch" in BatchNorm*, 2021), instead of running averages that mix
every batch since the start (stale after a short fit: issue 29).

The pass runs before validation (so early stopping and the kept state see the new statistics), without
gradients, on a fixed random subset of the training rows (the same rows every epoch, a generator of its own:
the training's shuffling and dropout draws are unchanged), and restores every other buffer of the model (no
other layer learns from it). A layer declares it takes part by ``stats == "precise"`` and the two methods
``begin_precise()`` / ``end_precise()``; a model without such a layer costs nothing.

Example::

    >>> import torch
    >>> from dynarec.nn.star import PartitionedNorm
    >>> pn = PartitionedNorm(3, num_domains=2).train()
    >>> x, d = torch.randn(8, 3), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    >>> pn.begin_precise(); _ = pn(x, d); pn.end_precise()
    2
    >>> torch.allclose(pn.running_mean[1], x[4:].mean(0))
    True
"""
from __future__ import annotations

import torch

from dynarec.train.loop import Callback

ROWS = 1 << 16  # training rows of a precise pass: per-domain statistics to ~1/sqrt(n) of their spread


def precise_layers(model) -> list:
    """The modules of ``model`` (unwrapped from DDP) that take their statistics from a precise pass."""
    model = getattr(model, "module", model)
    return [m for m in model.modules() if getattr(m, "stats", None) == "precise" and hasattr(m, "begin_precise")]


def _agreed_batches(n: int) -> int:
    """The number of batches every rank runs (the smallest; a sharded lookup is a collective)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return n
    t = torch.tensor([n], dtype=torch.long)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def refresh(model, train, batch_size: int, rows: int = ROWS, seed: int = 0) -> int:
    """One precise pass of ``model`` over up to ``rows`` rows of ``train`` -> the layers refreshed."""
    layers = precise_layers(model)
    if not layers:
        return 0
    net = getattr(model, "module", model)
    kept = {n: b.clone() for n, b in net.named_buffers()
            if not any(b is q for m in layers for q in m.buffers())}  # the other layers' buffers: restored
    was = net.training
    n_batches = _agreed_batches(-(-min(rows, len(train)) // batch_size))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        net.train()
        for m in layers:
            m.begin_precise()
        try:
            for i, b in enumerate(train.batches(batch_size, shuffle=True, generator=gen)):
                if i >= n_batches:
                    break
                net(b)
        finally:
            for m in layers:
                m.end_precise()
    named = dict(net.named_buffers())
    for n, b in kept.items():
        named[n].copy_(b)
    net.train(was)
    return len(layers)


class PreciseStatistics(Callback):
    """:func:`refresh` at the end of every epoch (put before validation)."""

    def __init__(self, train, batch_size: int, rows: int = ROWS):
        self.train, self.batch_size, self.rows = train, batch_size, rows

    def on_epoch_end(self, loop, row: dict) -> None:
        refresh(loop.model, self.train, self.batch_size, self.rows)
