"""A dynamic embedding table: raw ids -> slots of one fixed parameter, with admission, eviction and expiry.

PEPNet's global shared embedding table (Chang et al., KDD 2023, section 2.3): several features share one
table under one memory budget, each with its own id cap; ids with too few updates expire. Admission follows
Monolith (count threshold, or per-occurrence probability p: admit with ``1 - (1 - p)^count``); scores follow
TorchRec MCH (see ``dynarec.tables.scores``).

``weight [capacity + 1, dim]`` is one parameter. Row 0 is the shared default row read by ids not admitted
(and by padding ids < 0); it owns no slot, stays zero and gets no gradient. Gradients are dense by default,
sparse with ``sparse=True`` (then use Adagrad or SparseAdam). At ``end_pass()`` ids expire, then the lowest
scores are evicted until each feature holds at most ``floor(cap * (1 - headroom))`` and the table at most
``floor(capacity * (1 - headroom))`` slots (the headroom lets new ids in during the next pass); mid-pass,
admission only fills free slots under the caps. Evicted rows and their optimizer state (``reset_slots``) are
reset, and a re-admitted id draws a fresh row. Pending (not admitted) counts are cleared at each pass end.
Ties in score evict the lower slot first; free slots are taken lowest first, candidates in id order.
"""
import math

import torch
from torch import nn

from dynarec.tables.scores import SCORES, score


def reset_slots(optimizer, weight, slots, value=0.0):
    """Reset the per-row optimizer state of ``weight`` at ``slots`` (Adagrad ``state_sum`` to its initial
    accumulator value; Adam ``exp_avg`` / ``exp_avg_sq`` and any other row-shaped state to 0). Adam's scalar
    ``step`` is shared by all rows and is left as is."""
    st = optimizer.state.get(weight, {})
    init = next((g.get("initial_accumulator_value", 0.0) for g in optimizer.param_groups
                 if any(p is weight for p in g["params"])), 0.0)
    for k, v in st.items():
        if torch.is_tensor(v) and v.shape == weight.shape:
            v[slots] = init if k == "sum" or k == "state_sum" else 0.0


class DynamicTable(nn.Module):
    """Args: capacity (global budget in slots), dim, caps (per-feature slot caps, one entry per feature),
    score (one of SCORES), threshold (occurrences before admission), admit_prob (Monolith probability per
    occurrence; None = count threshold), expiry_passes / min_updates (expire ids with fewer than min_updates
    updates in the last expiry_passes passes; None = never), headroom, decay (distance_lfu), ttl_steps,
    gamma (feature score decay per pass), eviction_interval (also evict every N steps), init_std, sparse, seed.
    """

    def __init__(self, capacity, dim, caps=None, score="lfu", threshold=1, admit_prob=None, expiry_passes=None,
                 min_updates=1, headroom=0.1, decay=1.0, ttl_steps=1000, gamma=0.5, eviction_interval=None,
                 init_std=0.01, sparse=False, seed=0):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
        self.capacity, self.dim, self.score_name = capacity, dim, score
        self.caps = list(caps) if caps is not None else [capacity]
        self.threshold, self.admit_prob, self.expiry_passes, self.min_updates = threshold, admit_prob, expiry_passes, min_updates
        self.headroom, self.decay, self.ttl_steps, self.gamma = headroom, decay, ttl_steps, gamma
        self.eviction_interval, self.init_std, self.sparse = eviction_interval, init_std, sparse
        self.weight = nn.Parameter(torch.zeros(capacity + 1, dim))
        self.gen = torch.Generator().manual_seed(seed)
        self.optimizers = []
        n, E = capacity + 1, max(expiry_passes or 1, 1)
        self.used = torch.zeros(n, dtype=torch.bool)
        self.sid = torch.zeros(n, dtype=torch.long)
        self.sfeat = torch.zeros(n, dtype=torch.long)
        self.count = torch.zeros(n, dtype=torch.long)
        self.last = torch.zeros(n, dtype=torch.long)
        self.pcount = torch.zeros(n, dtype=torch.long)
        self.dcount = torch.zeros(n, dtype=torch.float64)
        self.age = torch.zeros(n, dtype=torch.long)
        self.ring = torch.zeros(n, E, dtype=torch.long)
        self.changed = torch.zeros(n, dtype=torch.bool)
        self.pend = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)) for _ in self.caps]
        self.step_no, self.pass_no = 0, 0
        self.evicted_ids = []
        self.stats = {"admitted": 0, "evicted": 0, "expired": 0}
        self.last_pass_stats = dict(self.stats)
        self._index()

    # ---- id -> slot ----------------------------------------------------------------------------------
    def _index(self):
        self._keys = []
        for f in range(len(self.caps)):
            s = torch.nonzero(self.used & (self.sfeat == f)).flatten()
            k, o = torch.sort(self.sid[s])
            self._keys.append((k, s[o]))

    def lookup(self, ids, feature=0):
        """Slots of ``ids`` (any shape, int64) for ``feature``; 0 for ids not admitted."""
        k, s = self._keys[feature]
        flat = ids.reshape(-1)
        if k.numel() == 0:
            return torch.zeros_like(ids)
        pos = torch.searchsorted(k, flat).clamp(max=k.numel() - 1)
        hit = (k[pos] == flat) & (flat >= 0)
        return torch.where(hit, s[pos], torch.zeros_like(flat)).reshape(ids.shape)

    def forward(self, ids, feature=0):
        """Embeddings [..., dim] of ``ids`` Long [B] or [B, L]; in training mode the ids are counted first."""
        if self.training:
            self.observe(ids, feature)
        slots = self.lookup(ids, feature)
        e = nn.functional.embedding(slots, self.weight, sparse=self.sparse)
        return e * (slots > 0).unsqueeze(-1).to(e.dtype)

    # ---- statistics and admission ------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, ids, feature=0):
        """Count one step's ids: update admitted slots, admit pending ids that qualify."""
        flat = ids.reshape(-1)
        flat = flat[flat >= 0]
        u, c = torch.unique(flat, return_counts=True)
        slots = self.lookup(u, feature)
        hit = slots > 0
        hs = slots[hit]
        self.count[hs] += c[hit]
        self.pcount[hs] += c[hit]
        self.last[hs] = self.step_no
        self.changed[hs] = True
        self._admit(u[~hit], c[~hit], feature)

    def _admit(self, u, c, f):
        pk, pc = self.pend[f]
        pos = torch.searchsorted(pk, u).clamp(max=max(pk.numel() - 1, 0))
        known = (pk[pos] == u) if pk.numel() else torch.zeros_like(u, dtype=torch.bool)
        if self.admit_prob is not None:
            ok = torch.rand(u.numel(), generator=self.gen, dtype=torch.float64) < 1 - (1 - self.admit_prob) ** c.double()
            tot = c
        else:
            tot = c + torch.where(known, pc[pos] if pk.numel() else c, torch.zeros_like(c))
            ok = tot >= self.threshold
        room = min(self.caps[f] - int((self.used & (self.sfeat == f)).sum()), self.capacity - int(self.used[1:].sum()))
        cand = torch.nonzero(ok).flatten()[:max(room, 0)]
        free = torch.nonzero(~self.used[1:]).flatten()[:cand.numel()] + 1
        if cand.numel():
            self.used[free], self.sid[free], self.sfeat[free] = True, u[cand], f
            self.count[free] = c[cand]
            self.pcount[free] = c[cand]
            self.last[free] = self.step_no
            self.dcount[free], self.age[free], self.ring[free] = 0.0, 0, 0
            self.changed[free] = True
            with torch.no_grad():
                self.weight[free] = torch.randn(cand.numel(), self.dim, generator=self.gen) * self.init_std
            self.stats["admitted"] += cand.numel()
            self._index()
        admitted = torch.zeros_like(ok)
        admitted[cand] = True
        # pending counts: merge the still-pending ids of this step (threshold mode only keeps counts)
        keep_known = torch.ones(pk.numel(), dtype=torch.bool)
        if pk.numel():
            keep_known[pos[known]] = False
        rest = ~admitted
        nk = torch.cat([pk[keep_known], u[rest]])
        nc = torch.cat([pc[keep_known], tot[rest]])
        o = torch.argsort(nk)
        self.pend[f] = (nk[o], nc[o])

    # ---- eviction ------------------------------------------------------------------------------------
    def attach(self, optimizer):
        """Reset this optimizer's row state whenever slots are evicted."""
        self.optimizers.append(optimizer)

    def step(self):
        """Advance the step counter (once per batch); evicts every ``eviction_interval`` steps."""
        self.step_no += 1
        if self.eviction_interval and self.step_no % self.eviction_interval == 0:
            self._evict_to_caps()

    def _free(self, slots, key):
        if slots.numel() == 0:
            return
        self.used[slots] = False
        self.changed[slots] = True
        self.evicted_ids.append((self.sfeat[slots].clone(), self.sid[slots].clone()))
        with torch.no_grad():
            self.weight[slots] = 0.0
        for opt in self.optimizers:
            reset_slots(opt, self.weight, slots)
        self.stats[key] += slots.numel()

    def _evict_to_caps(self):
        sc = score(self.score_name, self.count, self.last, self.dcount, self.step_no,
                   self.decay, self.ttl_steps)
        groups = [(self.used & (self.sfeat == f), cap) for f, cap in enumerate(self.caps)]
        groups.append((self.used.clone(), self.capacity))
        for mask, cap in groups:
            mask &= self.used
            s = torch.nonzero(mask).flatten()
            extra = s.numel() - math.floor(cap * (1 - self.headroom))
            if extra > 0:
                o = torch.argsort(sc[s], stable=True)
                self._free(s[o[:extra]], "evicted")
        self._index()

    def end_pass(self):
        """Close a pass: update the decayed counts, expire, evict to the caps; returns this pass's counters."""
        self.dcount = self.dcount * self.gamma + self.pcount.double()
        if self.expiry_passes:
            self.ring[:, self.pass_no % self.expiry_passes] = self.pcount
            self.age += self.used.long()
            dead = self.used & (self.age > self.expiry_passes) & (self.ring.sum(1) < self.min_updates)
            if self.score_name == "ttl":
                dead |= self.used & (self.last + self.ttl_steps < self.step_no)
            self._free(torch.nonzero(dead).flatten(), "expired")
        self._evict_to_caps()
        self.pcount.zero_()
        self.pend = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)) for _ in self.caps]
        self.pass_no += 1
        self.last_pass_stats, self.stats = self.stats, {"admitted": 0, "evicted": 0, "expired": 0}
        return self.last_pass_stats

    # ---- reporting and checkpoints -----------------------------------------------------------------
    @property
    def slots_in_use(self):
        return int(self.used[1:].sum())

    def feature_counts(self):
        return [int((self.used & (self.sfeat == f)).sum()) for f in range(len(self.caps))]

    def changed_rows(self, clear=True):
        """(feature, id, row) of slots in use whose rows changed since the last call, and evicted (feature, id)."""
        s = torch.nonzero(self.changed & self.used).flatten()
        out = (self.sfeat[s].clone(), self.sid[s].clone(), self.weight.detach()[s].clone())
        ev = self.evicted_ids
        if clear:
            self.changed.zero_()
            self.evicted_ids = []
        return out, ev

    _STATE = ("used", "sid", "sfeat", "count", "last", "pcount", "dcount", "age", "ring", "changed")

    def get_extra_state(self):
        d = {k: getattr(self, k).clone() for k in self._STATE}
        d.update(pend=[(a.clone(), b.clone()) for a, b in self.pend], step_no=self.step_no, pass_no=self.pass_no,
                 stats=dict(self.stats), last_pass_stats=dict(self.last_pass_stats), gen=self.gen.get_state())
        return d

    def set_extra_state(self, d):
        for k in self._STATE:
            setattr(self, k, d[k].clone())
        self.pend = [(a.clone(), b.clone()) for a, b in d["pend"]]
        self.step_no, self.pass_no = d["step_no"], d["pass_no"]
        self.stats, self.last_pass_stats = dict(d["stats"]), dict(d["last_pass_stats"])
        self.gen.set_state(d["gen"])
        self._index()
