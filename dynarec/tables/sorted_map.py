"""A sorted map of int64 keys -> int64 values on CPU tensors, and the two array helpers of the dynamic index
(a linear merge of sorted runs, the k lowest scores by selection).

:class:`SortedMap` is a sorted main array plus a small sorted delta: a lookup is a ``searchsorted`` in each,
an insert merges the new keys into the delta, which merges into the main array when it outgrows
``32 * sqrt(n)`` (O(n), every few dozen steps). Removed keys are tombstoned (value -1) and dropped at the next
flush. Everything runs in NumPy on views of the tensors (several times cheaper per call than torch's
small-array kernels on one thread).

Example::

    >>> import torch
    >>> m = SortedMap()
    >>> m.put(torch.tensor([3, 7]), torch.tensor([1, 2]))
    >>> m.get(torch.tensor([7, 5])).tolist()
    [2, -1]
"""
import math

import numpy as np
import torch

_L = torch.long


def merge(a, av, b, bv):
    """Merge sorted disjoint keys ``b`` (values ``bv``) into sorted ``a`` (``av``) in O(len(a) + len(b)), in
    NumPy on views of the tensors: small arrays by a stable argsort of the two runs (timsort merges them in
    linear time), large ones by placing ``b`` at its insertion points and ``a`` in the rest."""
    if a.numel() == 0 or b.numel() == 0:
        return (b, bv) if a.numel() == 0 else (a, av)
    a, av, b, bv = a.numpy(), av.numpy(), b.numpy(), bv.numpy()
    n, m = a.size, b.size
    if n + m <= 65536:
        k, v = np.concatenate([a, b]), np.concatenate([av, bv])
        o = np.argsort(k, kind="stable")
        return torch.from_numpy(k[o]), torch.from_numpy(v[o])
    pb = np.searchsorted(a, b) + np.arange(m)  # b[j] lands at its insertion point, shifted by the j before it
    rest = np.ones(n + m, dtype=bool)
    rest[pb] = False
    k, v = np.empty(n + m, dtype=a.dtype), np.empty(n + m, dtype=av.dtype)
    k[pb], v[pb] = b, bv
    k[rest], v[rest] = a, av
    return torch.from_numpy(k), torch.from_numpy(v)


def lowest(sc, n):
    """Ascending positions of the ``n`` lowest of ``sc`` (CPU float64 tensor or array), ties to the lower position (the first
    ``n`` of a stable argsort) in O(len(sc)): the n-th lowest value by selection (NumPy's introselect,
    ``partition``: a third of ``torch.topk``'s time over 1M scores), then masks; no sort."""
    a = sc if isinstance(sc, np.ndarray) else sc.contiguous().numpy()
    if n >= a.size:
        return torch.arange(a.size)
    if n <= 0:
        return torch.zeros(0, dtype=_L)
    v = np.partition(a, n - 1)[n - 1]
    pos = np.flatnonzero(a <= v)  # ascending; those equal to v beyond the first n - (# below v) are cut
    eq = a[pos] == v
    ne = int(np.count_nonzero(eq))
    need = n - (pos.size - ne)
    if need < ne:
        pos = pos[~eq | (np.cumsum(eq) <= need)]
    return torch.from_numpy(pos.astype(np.int64, copy=False))


class SortedMap:
    """int64 keys -> int64 values >= 0 (-1 = absent, a tombstone) as a sorted main array plus a sorted delta."""

    MIN_DELTA, SQRT_DELTA = 4096, 32  # the delta merges into the main array beyond max(MIN, SQRT * sqrt(main size))

    def __init__(self, k=None, v=None):
        self.k = k if k is not None else torch.zeros(0, dtype=_L)
        self.v = v if v is not None else torch.zeros(0, dtype=_L)
        self.dk, self.dv = torch.zeros(0, dtype=_L), torch.zeros(0, dtype=_L)
        self.dead = False  # whether some value is a tombstone

    def find(self, q):
        """(values of keys ``q`` [n], -1 where absent; their locations, for :meth:`put`). In NumPy on views:
        a few small-array ops, each several times cheaper to call than torch's."""
        qn = q.numpy()
        out, loc = np.full(qn.shape, -1, dtype=np.int64), []
        for k, v in ((self.k, self.v), (self.dk, self.dv)):
            if k.numel():
                kn, vn = k.numpy(), v.numpy()
                pos = np.searchsorted(kn, qn)
                np.minimum(pos, kn.size - 1, out=pos)
                hit = kn[pos] == qn
                np.copyto(out, vn[pos], where=hit)
                loc.append((vn, pos, hit))
        return torch.from_numpy(out), loc

    def get(self, q):
        return self.find(q)[0]

    def put(self, q, vals, loc=None, sel=None):
        """Upsert unique sorted keys ``q`` with ``vals`` (-1 removes), only where ``sel`` (default all);
        ``loc`` from a :meth:`find` of the same ``q`` with no change in between saves the search."""
        qn, vn = q.numpy(), vals.numpy()
        new = np.ones(qn.shape, dtype=bool) if sel is None else sel.numpy().copy()
        for v, pos, hit in loc if loc is not None else self.find(q)[1]:
            h = hit & new
            v[pos[h]] = vn[h]
            new &= ~hit
        self.dead = self.dead or bool((vn < 0).any())
        new &= vn >= 0
        if new.any():
            self.insert(torch.from_numpy(qn[new]), torch.from_numpy(vn[new]))

    def insert(self, q, vals):
        """Add sorted keys ``q`` that are known to be absent."""
        self.dk, self.dv = merge(self.dk, self.dv, q, vals)
        if self.dk.numel() > max(self.MIN_DELTA, self.SQRT_DELTA * math.isqrt(self.k.numel())):
            self.flush()

    def flush(self):
        """Merge the delta into the main array and drop tombstones."""
        k, v, dk, dv = self.k, self.v, self.dk, self.dv
        if self.dead:  # boolean indexing in NumPy: several times faster than torch's masked_select
            a, b = v.numpy() >= 0, dv.numpy() >= 0
            k, v = torch.from_numpy(k.numpy()[a]), torch.from_numpy(v.numpy()[a])
            dk, dv = torch.from_numpy(dk.numpy()[b]), torch.from_numpy(dv.numpy()[b])
        self.k, self.v = merge(k, v, dk, dv)
        self.dk, self.dv = torch.zeros(0, dtype=_L), torch.zeros(0, dtype=_L)
        self.dead = False

    def items(self):
        self.flush()
        return self.k, self.v
