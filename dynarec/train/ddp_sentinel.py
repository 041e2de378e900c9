"""DDP without its "no unused parameters found" warning.

``dynarec`` wraps models in DDP with ``find_unused_parameters=True``: a batch may leave parameters unused
(e.g. the tower of a domain absent from the batch), and DDP without the flag fails at the next step. When the
first step happens to use every parameter, DDP prints a performance warning on every rank — from C++
(``reducer.cpp``), so no Python ``warnings`` filter reaches it, and lowering the C++ log level would hide
every other C++ warning too. :class:`WithSentinel` adds one parameter that the forward never uses: DDP then
always finds an unused parameter and stays quiet; the model, its state dict, its optimizers and its
gradients are unchanged (the sentinel is not the model's, has no gradient and is never saved).

Example::

    ddp = DistributedDataParallel(WithSentinel(model), find_unused_parameters=True)
    out = ddp(batch)   # = model(batch)
"""
from __future__ import annotations

import torch
from torch import nn


class WithSentinel(nn.Module):
    """``model`` plus an unused one-element parameter (see the module's docstring); ``forward`` is the model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.sentinel = nn.Parameter(torch.zeros(1, device=next(model.parameters()).device))

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
