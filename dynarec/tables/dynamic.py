"""Dynamic embedding tables: raw ids -> slots of a fixed-size parameter, with admission, eviction and expiry.

PEPNet's global shared embedding table (Chang et al., KDD 2023, section 2.3): several features share one
table under one memory budget, each with its own id cap; ids with too few updates expire. Admission follows
Monolith (count threshold, or per-occurrence probability p: admit with ``1 - (1 - p)^count``); scores are
policy objects (:mod:`dynarec.tables.eviction`), all of it set by ONE :class:`EvictionConfig`.

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
(:class:`SortedMap`): a step costs one ``unique`` of its ids, ``searchsorted`` lookups and a merge of its new
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

from dynarec.tables.eviction import EvictionConfig
from dynarec.tables.sorted_map import SortedMap, lowest

_L = torch.long


class DynamicIndex(nn.Module):
    """Raw int64 ids -> slots ``1..capacity`` (0 = not admitted), no parameter; checkpointed as extra state.

    Args: capacity (global budget in slots), caps (per-feature slot caps, one entry per feature; default
    ``[capacity]``), eviction (:class:`EvictionConfig`: policy, admission, expiry, headroom, interval), seed.

    Example::

        >>> import torch
        >>> from dynarec.tables.eviction import EvictionConfig
        >>> ix = DynamicIndex(4, eviction=EvictionConfig.build("lfu", headroom=0.5))
        >>> ix.map(torch.tensor([7, 9, 7])).tolist()
        [1, 2, 1]
        >>> ix.end_pass(), ix.lookup(torch.tensor([7, 9])).tolist()  # keeps floor(4 * 0.5) = 2 slots
        ({'admitted': 2, 'evicted': 0, 'expired': 0}, [1, 2])
    """

    def __init__(self, capacity, caps=None, eviction: EvictionConfig | None = None, seed=0):
        super().__init__()
        self.capacity, self.eviction = capacity, eviction if eviction is not None else EvictionConfig()
        self.policy = self.eviction.policy
        self.caps = list(caps) if caps is not None else [capacity]
        e = self.eviction
        self.threshold, self.admit_prob, self.expiry_passes, self.min_updates = e.threshold, e.admit_prob, e.expiry_passes, e.min_updates
        self.headroom, self.eviction_interval = e.headroom, e.interval
        # per-slot state that nothing reads under this configuration is not kept up to date (it stays 0): the
        # policy declares what it reads (EvictionPolicy.state), expiry reads the per-pass count
        st = e.state
        self._track_count, self._track_pcount = "count" in st, "pcount" in st
        self._track_last, self._track_dcount = "last" in st, "dcount" in st
        self.gen = torch.Generator().manual_seed(seed)
        self._on_admit, self._on_free = [], []
        n, E = capacity + 1, max(e.expiry_passes or 1, 1)
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
        self._pend = [SortedMap() for _ in self.caps]
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
            self._maps.append(SortedMap(k, s[o]))
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
        if self._track_count:
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
            if self._track_count:
                self.count.numpy()[fn] = ccn
            if self._track_pcount:
                self.pcount.numpy()[fn] = ccn
            if self._track_last:
                self.last.numpy()[fn] = self.step_no
            if self._track_dcount:
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
        sc = self.policy.scores(self, self.step_no).numpy()
        used, sfeat = self.used.numpy(), self.sfeat.numpy()
        for f in over:  # over the feature's slots only (ascending, so ties still go to the lower slot)
            mine = np.flatnonzero(used & (sfeat == f))
            self._free(torch.from_numpy(mine[lowest(sc[mine], self._n[f] - keep[f]).numpy()]), "evicted")
        extra = sum(self._n) - glimit
        if extra > 0:
            self._free(lowest(np.where(used, sc, np.inf), extra), "evicted")

    @torch.no_grad()
    def end_pass(self):
        """Close a pass: update the decayed counts, expire, evict to the caps; returns this pass's
        ``dict(admitted, evicted, expired)``."""
        self.policy.end_pass(self)
        if self.expiry_passes:
            self.ring[:, self.pass_no % self.expiry_passes] = self.pcount
            self.age += self.used.long()
            dead = self.used & (self.age > self.expiry_passes) & (self.ring.sum(1) < self.min_updates)
            own = self.policy.expired(self, self.step_no)
            if own is not None:
                dead |= self.used & own
            self._free(torch.nonzero(dead).flatten(), "expired")
        self._evict_to_caps()
        self._after_free()
        if self._track_pcount:
            self.pcount.zero_()
        self._pend = [SortedMap() for _ in self.caps]
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
        self._pend = [SortedMap(a.clone(), b.clone()) for a, b in d["pend"]]
        ev = d.get("evicted")
        self.evicted_ids = [(ev[0].clone(), ev[1].clone())] if ev is not None and ev[0].numel() else []
        self.step_no, self.pass_no = d["step_no"], d["pass_no"]
        self.stats, self.last_pass_stats = dict(d["stats"]), dict(d["last_pass_stats"])
        self.gen.set_state(d["gen"])
        self._rebuild()
