"""DynamicTable: a :class:`~dynarec.tables.dynamic.DynamicIndex` (``table.index``) plus the one parameter whose
rows its slots index, for benchmarks and tests of the index with a model attached (the online runner keeps its
rows in the model's own tables instead, :mod:`dynarec.online.rows`).

Example::

    >>> import torch
    >>> t = DynamicTable(8, 2)
    >>> t(torch.tensor([5, 6])).shape  # a new module is in training mode: the ids are counted
    torch.Size([2, 2])
    >>> t.index.slots_in_use
    2
"""
import torch
from torch import nn

from dynarec.tables.dynamic import DynamicIndex
from dynarec.tables.eviction import EvictionConfig
from dynarec.tables.row_state import reset_slots


class DynamicTable(nn.Module):
    """``index`` + ``weight [capacity + 1, dim]``. Row 0 is the default row: it stays zero and gets no gradient.
    Admitted rows draw ``N(0, init_std^2)`` from the index's generator; freed rows are zeroed and their state in
    every :meth:`attach`-ed optimizer is reset. Gradients are dense by default, sparse with ``sparse=True`` (then
    use Adagrad or SparseAdam).

    Args: capacity, dim, caps, eviction, seed as :class:`DynamicIndex`; init_std, sparse."""

    def __init__(self, capacity, dim, caps=None, eviction: EvictionConfig | None = None, init_std=0.01,
                 sparse=False, seed=0):
        super().__init__()
        self.index = DynamicIndex(capacity, caps, eviction, seed)
        self.dim, self.init_std, self.sparse = dim, init_std, sparse
        self.weight = nn.Parameter(torch.zeros(capacity + 1, dim))
        self.optimizers = []
        self.index.subscribe(self._init_rows, self._clear_rows)

    @torch.no_grad()
    def _init_rows(self, slots):
        w = self.weight
        w[slots.to(w.device)] = (torch.randn(slots.numel(), self.dim, generator=self.index.gen)
                                 * self.init_std).to(w.device, w.dtype)

    @torch.no_grad()
    def _clear_rows(self, slots):
        self.weight[slots.to(self.weight.device)] = 0.0
        for opt in self.optimizers:
            reset_slots(opt, self.weight, slots)

    def attach(self, optimizer):
        """Reset this optimizer's row state whenever slots are freed."""
        self.optimizers.append(optimizer)

    def forward(self, ids, feature=0):
        """Embeddings [..., dim] of ``ids`` Long [B] or [B, L]; in training mode the ids are counted first."""
        slots = self.index.map(ids, feature, train=self.training)
        e = nn.functional.embedding(slots, self.weight, sparse=self.sparse)
        return e * (slots > 0).unsqueeze(-1).to(e.dtype)
