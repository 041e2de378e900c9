"""Dynamic embedding tables: raw ids -> slots of a fixed-size parameter, with admission, eviction and expiry.

PEPNet's global shared embedding table (Chang et al., KDD 2023, section 2.3): several features share one
table under one memory budget, each with its own id cap; ids with too few updates expire. Admission follows
Monolith (count threshold, or per-occurrence probability p: admit with ``1 - (1 - p)^count``); scores follow
TorchRec MCH (see ``dynarec.tables.scores``).

:class:`DynamicIndex` holds only the id -> slot policy (no parameter): slots are ``1..capacity``, slot 0 is the
shared default read by ids not admitted (and by padding ids < 0). Its owner keeps the rows: it subscribes to
admissions (initialise the rows) and frees (zero the rows, reset their optimizer state with
:func:`reset_slots`). :class:`DynamicTable` is such an owner: index + one ``weight [capacity + 1, dim]``.

At ``end_pass()`` ids expire, then the lowest scores are evicted until each feature holds at most
``floor(cap * (1 - headroom))`` and the table at most ``floor(capacity * (1 - headroom))`` slots (the headroom
lets new ids in during the next pass); mid-pass, admission only fills free slots under the caps. Pending (not
admitted) counts, kept only for a count threshold above 1, are cleared at each pass end. Ties in score evict
the lower slot first; free slots are taken lowest first, candidates in id order.

Speed: per feature, the id -> slot map (and the pending counts) is a sorted key array plus a small sorted delta
(:class:`_SortedMap`): a step costs one ``unique`` of its ids, ``searchsorted`` lookups and a merge of its new
keys into the delta, which merges into the main array when it outgrows ``32 * sqrt(n)`` (O(n), every few dozen
steps). Freed keys are tombstoned, then dropped by mask right after the eviction; the k lowest scores are found
by selection (NumPy's ``partition``), not a sort; per-feature counts and the free-slot list are kept up to date,
never recounted; per-slot state that nothing reads under the configuration is not kept. The maps, the slot
writes and the pass-end masks over the whole table run in NumPy on views of the CPU tensors (2-4x faster than
torch's single-thread kernels there). No step rebuilds a map and no step runs Python per id.
"""
import math

import numpy as np
import torch
from torch import nn

from dynarec.tables.scores import SCORES, score

_L = torch.long


def reset_slots(optimizer, weight, slots, rows_offset=0):
    """Reset the per-row optimizer state of ``weight`` at rows ``slots + rows_offset``: Adagrad's ``sum`` to
    its ``initial_accumulator_value``, every other row-shaped state (Adam / SparseAdam ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``) to 0. Scalar state (Adam's ``step``) is shared by all rows and kept.

    Args: optimizer; weight: any parameter [R, ...] (e.g. a fused table whose dynamic rows start at
    ``rows_offset``); slots: LongTensor [n]."""
    st = optimizer.state.get(weight)
    if not st:
        return
    init = next((g.get("initial_accumulator_value", 0.0) for g in optimizer.param_groups
                 if any(p is weight for p in g["params"])), 0.0)
    rows = (slots.reshape(-1) + rows_offset).to(weight.device)
    for k, v in st.items():
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == weight.shape[0]:
            v[rows] = init if k in ("sum", "state_sum") else 0.0


def _merge(a, av, b, bv):
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


def _lowest(sc, n):
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


class _SortedMap:
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
        self.dk, self.dv = _merge(self.dk, self.dv, q, vals)
        if self.dk.numel() > max(self.MIN_DELTA, self.SQRT_DELTA * math.isqrt(self.k.numel())):
            self.flush()

    def flush(self):
        """Merge the delta into the main array and drop tombstones."""
        k, v, dk, dv = self.k, self.v, self.dk, self.dv
        if self.dead:  # boolean indexing in NumPy: several times faster than torch's masked_select
            a, b = v.numpy() >= 0, dv.numpy() >= 0
            k, v = torch.from_numpy(k.numpy()[a]), torch.from_numpy(v.numpy()[a])
            dk, dv = torch.from_numpy(dk.numpy()[b]), torch.from_numpy(dv.numpy()[b])
        self.k, self.v = _merge(k, v, dk, dv)
        self.dk, self.dv = torch.zeros(0, dtype=_L), torch.zeros(0, dtype=_L)
        self.dead = False

    def items(self):
        self.flush()
        return self.k, self.v


class DynamicIndex(nn.Module):
    """Raw int64 ids -> slots ``1..capacity`` (0 = not admitted), no parameter; checkpointed as extra state.

    Args: capacity (global budget in slots), caps (per-feature slot caps, one entry per feature; default
    ``[capacity]``), score (one of SCORES), threshold (occurrences before admission), admit_prob (Monolith
    probability per occurrence; None = count threshold), expiry_passes / min_updates (expire ids with fewer
    than min_updates updates in the last expiry_passes passes; None = never), headroom, decay (distance_lfu),
    ttl_steps, gamma (feature score decay per pass), eviction_interval (also evict every N steps), seed."""

    def __init__(self, capacity, caps=None, score="lfu", threshold=1, admit_prob=None, expiry_passes=None,
                 min_updates=1, headroom=0.1, decay=1.0, ttl_steps=1000, gamma=0.5, eviction_interval=None, seed=0):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
        self.capacity, self.score_name = capacity, score
        self.caps = list(caps) if caps is not None else [capacity]
        self.threshold, self.admit_prob, self.expiry_passes, self.min_updates = threshold, admit_prob, expiry_passes, min_updates
        self.headroom, self.decay, self.ttl_steps, self.gamma = headroom, decay, ttl_steps, gamma
        self.eviction_interval = eviction_interval
        # per-slot state that nothing reads under this configuration is not kept up to date (it stays 0):
        # the per-pass count feeds only the feature score and expiry, the last step only lru / distance_lfu / ttl
        self._track_pcount = score == "feature" or bool(expiry_passes)
        self._track_last = score in ("lru", "distance_lfu", "ttl")
        self.gen = torch.Generator().manual_seed(seed)
        self._on_admit, self._on_free = [], []
        n, E = capacity + 1, max(expiry_passes or 1, 1)
        self.used = torch.zeros(n, dtype=torch.bool)
        self.changed = torch.zeros(n, dtype=torch.bool)
        for k in ("sid", "sfeat", "count", "last", "pcount", "age"):
            setattr(self, k, torch.zeros(n, dtype=_L))
        self.dcount = torch.zeros(n, dtype=torch.float64)
        self.ring = torch.zeros(n, E, dtype=_L)
        self.step_no, self.pass_no = 0, 0
        self.evicted_ids = []
        self.stats = {"admitted": 0, "evicted": 0, "expired": 0}
        self.last_pass_stats = dict(self.stats)
        self._pend = [_SortedMap() for _ in self.caps]
        self._rebuild()

    def subscribe(self, on_admit=None, on_free=None):
        """Call ``on_admit(slots)`` right after slots are admitted (initialise their rows) and ``on_free(slots)``
        right after slots are freed by eviction or expiry (zero their rows, :func:`reset_slots`); both run under
        ``torch.no_grad()``, with ``slots`` a LongTensor [n] on the index's device (CPU)."""
        if on_admit is not None:
            self._on_admit.append(on_admit)
        if on_free is not None:
            self._on_free.append(on_free)

    def _rebuild(self):
        """Maps, per-feature counters and the free list from the slot arrays (construction and loading only)."""
        self._maps = []
        for f in range(len(self.caps)):
            s = torch.nonzero(self.used & (self.sfeat == f)).flatten()
            k, o = torch.sort(self.sid[s])
            self._maps.append(_SortedMap(k, s[o]))
        self._n = torch.bincount(self.sfeat[self.used], minlength=len(self.caps)).tolist()
        self._free_slots = torch.nonzero(~self.used[1:]).flatten() + 1

    # ---- id -> slot ----------------------------------------------------------------------------------
    def lookup(self, ids, feature=0):
        """Slots of ``ids`` (any shape, int64) for ``feature``; 0 for ids not admitted and ids < 0."""
        q = ids.reshape(-1).to(self.sid.device, _L).contiguous()
        return self._maps[feature].get(q).clamp_(min=0).reshape(ids.shape).to(ids.device)

    def map(self, ids, feature=0, train=True):
        """``observe`` (when ``train``) then ``lookup``, sharing one ``unique``: slots of ``ids``, same shape."""
        if not train:
            return self.lookup(ids, feature)
        flat = ids.reshape(-1).to(self.sid.device, _L)
        if flat.numel() == 0 or int(flat.numpy().min()) >= 0:  # no padding (NumPy: cheaper calls)
            su, inv = self._observe(flat, feature)
            out = torch.from_numpy(su.numpy()[inv.numpy()])
        else:
            valid = flat >= 0
            out = torch.zeros_like(flat)
            su, inv = self._observe(flat[valid], feature)
            out[valid] = su[inv]
        return out.reshape(ids.shape).to(ids.device)

    @torch.no_grad()
    def observe(self, ids, feature=0):
        """Count one step's ids: update admitted slots, admit pending ids that qualify."""
        flat = ids.reshape(-1).to(self.sid.device, _L)
        self._observe(flat[flat >= 0], feature)

    @torch.no_grad()
    def _observe(self, flat, f):
        u, inv, c = torch.unique(flat, return_inverse=True, return_counts=True)
        slots = self._maps[f].get(u)
        sn = slots.numpy()  # the slot writes below run in NumPy on views: about twice as fast as index_put_
        np.maximum(sn, 0, out=sn)
        # every id updates its slot's counters, the not-admitted ones the unused slot 0, reset after: cheaper
        # than selecting the hits by a mask first (the slots of distinct ids are distinct, but for 0)
        self.count.index_add_(0, slots, c)
        self.count.numpy()[0] = 0
        if self._track_pcount:
            self.pcount.index_add_(0, slots, c)
            self.pcount.numpy()[0] = 0
        if self._track_last:
            last = self.last.numpy()
            last[sn] = self.step_no
            last[0] = 0
        changed = self.changed.numpy()
        changed[sn] = True
        changed[0] = False
        miss = np.flatnonzero(sn == 0)
        if miss.size:
            cand, free = self._admit(torch.from_numpy(u.numpy()[miss]), torch.from_numpy(c.numpy()[miss]), f)
            sn[miss[cand.numpy()]] = free.numpy()
        return slots, inv

    def _counting(self):
        """Whether not-admitted ids keep pending counts (count threshold above 1)."""
        return self.admit_prob is None and self.threshold > 1

    def _admit(self, u, c, f):
        if self.admit_prob is not None:
            ok = torch.rand(u.numel(), generator=self.gen, dtype=torch.float64) < 1 - (1 - self.admit_prob) ** c.double()
        elif self._counting():
            prev, loc = self._pend[f].find(u)
            tot = c + prev.clamp(min=0)
            ok = tot >= self.threshold
        else:
            ok = None  # every id qualifies
        room = max(min(self.caps[f] - self._n[f], self.capacity - sum(self._n)), 0)
        cand = torch.arange(min(room, u.numel())) if ok is None else torch.nonzero(ok).flatten()[:room]
        m = cand.numel()
        free = self._free_slots[:m]
        if m:
            self._free_slots = self._free_slots[m:]
            uc, cc = (u, c) if m == u.numel() else (u[cand], c[cand])
            fn, ccn = free.numpy(), cc.numpy()  # NumPy on views, as in _observe
            self.used.numpy()[fn], self.sid.numpy()[fn], self.sfeat.numpy()[fn] = True, uc.numpy(), f
            self.count.numpy()[fn] = ccn
            if self._track_pcount:
                self.pcount.numpy()[fn] = ccn
            if self._track_last:
                self.last.numpy()[fn] = self.step_no
            if self.score_name == "feature":
                self.dcount.numpy()[fn] = 0.0
            if self.expiry_passes:
                self.age.numpy()[fn], self.ring.numpy()[fn] = 0, 0
            self.changed.numpy()[fn] = True
            self._maps[f].insert(uc, free)  # during a pass the maps hold no tombstones: these keys are new
            self._n[f] += m
            self.stats["admitted"] += m
            for cb in self._on_admit:
                cb(free)
        if self._counting():  # the rest accumulate; admitted ids keep a stale count that no lookup reads
            rest = torch.ones_like(u, dtype=torch.bool)
            rest[cand] = False
            self._pend[f].put(u, tot, loc, rest)
        return cand, free

    # ---- eviction ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self):
        """Advance the step counter (once per batch); evicts every ``eviction_interval`` steps."""
        self.step_no += 1
        if self.eviction_interval and self.step_no % self.eviction_interval == 0:
            self._evict_to_caps()
            self._after_free()

    def _free(self, slots, key):
        if slots.numel() == 0:
            return
        sn = slots.numpy()  # NumPy on views, as in _observe
        feats, ids = self.sfeat.numpy()[sn], self.sid.numpy()[sn]
        self.used.numpy()[sn] = False
        self.changed.numpy()[sn] = True
        self.evicted_ids.append((torch.from_numpy(feats), torch.from_numpy(ids)))
        for f, n in enumerate(np.bincount(feats, minlength=len(self.caps)).tolist()):
            if n:
                k = torch.from_numpy(np.sort(ids[feats == f]))
                self._maps[f].put(k, torch.full_like(k, -1))
                if self._counting():  # a freed id counts from zero again
                    self._pend[f].put(k, torch.full_like(k, -1))
                self._n[f] -= n
        for cb in self._on_free:
            cb(slots)
        self.stats[key] += slots.numel()

    def _after_free(self):
        for m in self._maps:
            m.flush()
        self._free_slots = torch.from_numpy(np.flatnonzero(~self.used.numpy()[1:]) + 1)

    def _evict_to_caps(self):
        keep = [math.floor(cap * (1 - self.headroom)) for cap in self.caps]
        over = [f for f, (n, k) in enumerate(zip(self._n, keep)) if n > k]
        glimit = math.floor(self.capacity * (1 - self.headroom))
        if not over and sum(self._n) <= glimit:
            return
        # over the whole table the masks run in NumPy (views of the same memory): 2-4x faster than torch's
        # single-thread kernels at 1M slots. Slots outside the group score +inf: positions are slots.
        sc = score(self.score_name, self.count, self.last, self.dcount, self.step_no, self.decay,
                   self.ttl_steps).numpy()
        used, sfeat = self.used.numpy(), self.sfeat.numpy()
        for f in over:  # over the feature's slots only (ascending, so ties still go to the lower slot)
            mine = np.flatnonzero(used & (sfeat == f))
            self._free(torch.from_numpy(mine[_lowest(sc[mine], self._n[f] - keep[f]).numpy()]), "evicted")
        extra = sum(self._n) - glimit
        if extra > 0:
            self._free(_lowest(np.where(used, sc, np.inf), extra), "evicted")

    @torch.no_grad()
    def end_pass(self):
        """Close a pass: update the decayed counts, expire, evict to the caps; returns this pass's
        ``dict(admitted, evicted, expired)``."""
        if self.score_name == "feature":  # the decayed count is that score's only use
            self.dcount.mul_(self.gamma).add_(self.pcount)
        if self.expiry_passes:
            self.ring[:, self.pass_no % self.expiry_passes] = self.pcount
            self.age += self.used.long()
            dead = self.used & (self.age > self.expiry_passes) & (self.ring.sum(1) < self.min_updates)
            if self.score_name == "ttl":
                dead |= self.used & (self.last + self.ttl_steps < self.step_no)
            self._free(torch.nonzero(dead).flatten(), "expired")
        self._evict_to_caps()
        self._after_free()
        if self._track_pcount:
            self.pcount.zero_()
        self._pend = [_SortedMap() for _ in self.caps]
        self.pass_no += 1
        self.last_pass_stats, self.stats = self.stats, {"admitted": 0, "evicted": 0, "expired": 0}
        return self.last_pass_stats

    # ---- reporting and checkpoints -----------------------------------------------------------------
    @property
    def slots_in_use(self):
        return sum(self._n)

    def feature_counts(self):
        """Slots in use per feature (list of ints)."""
        return list(self._n)

    def ids_of(self, slots):
        """(feature, id) LongTensors of ``slots``; -1 for both where a slot is not in use."""
        use = self.used[slots]
        return torch.where(use, self.sfeat[slots], -1), torch.where(use, self.sid[slots], -1)

    def changed_slots(self, clear=True):
        """(slots in use whose rows may have changed since the last call: looked up in training or admitted,
        (feature, id) LongTensors of the ids evicted or expired since then). An id evicted and re-admitted in
        between is in both: apply the evictions first."""
        s = torch.nonzero(self.changed & self.used).flatten()
        ev = self.evicted_ids
        pair = (torch.cat([a for a, _ in ev]), torch.cat([b for _, b in ev])) if ev else \
            (torch.zeros(0, dtype=_L), torch.zeros(0, dtype=_L))
        if clear:
            self.changed.zero_()
            self.evicted_ids = []
        return s, pair

    _STATE = ("used", "sid", "sfeat", "count", "last", "pcount", "dcount", "age", "ring", "changed")

    def get_extra_state(self):
        d = {k: getattr(self, k).clone() for k in self._STATE}
        ev = self.changed_slots(clear=False)[1]
        d.update(pend=[tuple(x.clone() for x in p.items()) for p in self._pend], evicted=ev,
                 step_no=self.step_no, pass_no=self.pass_no, stats=dict(self.stats),
                 last_pass_stats=dict(self.last_pass_stats), gen=self.gen.get_state())
        return d

    def set_extra_state(self, d):
        for k in self._STATE:
            setattr(self, k, d[k].clone())
        self._pend = [_SortedMap(a.clone(), b.clone()) for a, b in d["pend"]]
        ev = d.get("evicted")
        self.evicted_ids = [(ev[0].clone(), ev[1].clone())] if ev is not None and ev[0].numel() else []
        self.step_no, self.pass_no = d["step_no"], d["pass_no"]
        self.stats, self.last_pass_stats = dict(d["stats"]), dict(d["last_pass_stats"])
        self.gen.set_state(d["gen"])
        self._rebuild()


_DELEGATED = frozenset(DynamicIndex._STATE) | {
    "capacity", "caps", "score_name", "threshold", "admit_prob", "expiry_passes", "min_updates", "headroom",
    "decay", "ttl_steps", "gamma", "eviction_interval", "gen", "step_no", "pass_no", "evicted_ids", "stats",
    "last_pass_stats", "lookup", "observe", "map", "step", "end_pass", "slots_in_use", "feature_counts",
    "changed_slots", "ids_of", "subscribe"}


class DynamicTable(nn.Module):
    """A :class:`DynamicIndex` (``self.index``; its arguments and methods are readable on the table) plus one
    ``weight [capacity + 1, dim]``. Row 0 is the default row: it stays zero and gets no gradient. Admitted
    rows draw ``N(0, init_std^2)`` from the index's generator; freed rows are zeroed and their state in every
    :meth:`attach`-ed optimizer is reset. Gradients are dense by default, sparse with ``sparse=True`` (then
    use Adagrad or SparseAdam).

    Args: capacity, dim, init_std, sparse; the rest as :class:`DynamicIndex`."""

    def __init__(self, capacity, dim, caps=None, score="lfu", threshold=1, admit_prob=None, expiry_passes=None,
                 min_updates=1, headroom=0.1, decay=1.0, ttl_steps=1000, gamma=0.5, eviction_interval=None,
                 init_std=0.01, sparse=False, seed=0):
        super().__init__()
        self.index = DynamicIndex(capacity, caps, score, threshold, admit_prob, expiry_passes, min_updates,
                                  headroom, decay, ttl_steps, gamma, eviction_interval, seed)
        self.dim, self.init_std, self.sparse = dim, init_std, sparse
        self.weight = nn.Parameter(torch.zeros(capacity + 1, dim))
        self.optimizers = []
        self.index.subscribe(self._init_rows, self._clear_rows)

    def __getattr__(self, name):
        if name in _DELEGATED:
            return getattr(self._modules["index"], name)
        return super().__getattr__(name)

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

    def changed_rows(self, clear=True):
        """((feature, id, row) of slots in use whose rows changed since the last call, evicted ids as a list
        of (feature, id) tensor pairs)."""
        s, ev = self.index.changed_slots(clear)
        f, i = self.index.ids_of(s)
        return (f, i, self.weight.detach()[s].clone()), [ev] if ev[0].numel() else []
