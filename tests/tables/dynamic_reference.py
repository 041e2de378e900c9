"""Plain-Python (dict-based) reference of DynamicIndex's policy, one id at a time, with each score written
out by hand for one slot (:func:`score_py`); the keyword arguments are those of ``EvictionConfig.build``.

Probabilistic admission draws, like the vectorised index, one ``torch.rand`` (float64, from a generator seeded
with ``seed``) per observe call over the not-yet-admitted ids in id order."""
import math
from collections import Counter

import torch



def score_py(name, count, last, dcount, t, decay=1.0, ttl_steps=0):
    """The score of one slot (higher = kept), in plain Python."""
    if name == "lfu":
        return float(count)
    if name == "lru":
        return float(last)
    if name == "distance_lfu":
        return float(count) / float(t - last + 1) ** decay
    if name == "ttl":
        return float(last + ttl_steps - t)
    if name == "feature":
        return float(dcount)
    raise ValueError(name)


class ReferenceTable:
    def __init__(self, capacity, caps, score="lfu", threshold=1, admit_prob=None, expiry_passes=None,
                 min_updates=1, headroom=0.1, decay=1.0, ttl_steps=1000, gamma=0.5, interval=None, seed=0):
        self.capacity, self.caps, self.score = capacity, list(caps), score
        self.threshold, self.p, self.E, self.min_updates = threshold, admit_prob, expiry_passes, min_updates
        self.headroom, self.decay, self.ttl_steps, self.gamma = headroom, decay, ttl_steps, gamma
        self.interval, self.gen = interval, torch.Generator().manual_seed(seed)
        self.slots, self.index, self.pend = {}, {}, [dict() for _ in caps]
        self.step_no = self.pass_no = 0
        self.evicted = []

    def used_f(self, f):
        return sum(1 for s in self.slots.values() if s["feat"] == f)

    def observe(self, ids, f):
        counts = sorted(Counter(x for x in ids if x >= 0).items())
        unseen = sum(1 for i, _ in counts if (f, i) not in self.index)
        draws = iter(torch.rand(unseen, generator=self.gen, dtype=torch.float64).tolist()) if self.p else None
        for i, c in counts:
            key = (f, i)
            if key in self.index:
                s = self.slots[self.index[key]]
                s["count"] += c
                s["pcount"] += c
                s["last"] = self.step_no
                continue
            if self.p:
                tot, ok = c, next(draws) < 1 - (1 - self.p) ** c
            else:
                tot = c + self.pend[f].get(i, 0)
                ok = tot >= self.threshold
            room = min(self.caps[f] - self.used_f(f), self.capacity - len(self.slots))
            if ok and room > 0:
                slot = min(set(range(1, self.capacity + 1)) - set(self.slots))
                self.slots[slot] = dict(id=i, feat=f, count=c, pcount=c, last=self.step_no, dcount=0.0, age=0,
                                        ring=[0] * (self.E or 1))
                self.index[key] = slot
                self.pend[f].pop(i, None)
            elif not self.p:
                self.pend[f][i] = tot

    def step(self):
        self.step_no += 1
        if self.interval and self.step_no % self.interval == 0:
            self._evict()

    def _free(self, slot):
        s = self.slots.pop(slot)
        del self.index[(s["feat"], s["id"])]
        self.evicted.append((s["feat"], s["id"]))

    def _evict(self):
        sc = {k: score_py(self.score, s["count"], s["last"], s["dcount"], self.step_no, self.decay, self.ttl_steps)
              for k, s in self.slots.items()}
        groups = [(lambda s, f=f: s["feat"] == f, cap) for f, cap in enumerate(self.caps)]
        groups.append((lambda s: True, self.capacity))
        for pred, cap in groups:
            mine = sorted((k for k, s in self.slots.items() if pred(s)), key=lambda k: (sc[k], k))
            for k in mine[:max(len(mine) - math.floor(cap * (1 - self.headroom)), 0)]:
                self._free(k)

    def end_pass(self):
        for s in self.slots.values():
            s["dcount"] = s["dcount"] * self.gamma + s["pcount"]
        if self.E:
            for slot, s in list(self.slots.items()):
                s["ring"][self.pass_no % self.E] = s["pcount"]
                s["age"] += 1
                dead = s["age"] > self.E and sum(s["ring"]) < self.min_updates
                if self.score == "ttl":
                    dead = dead or s["last"] + self.ttl_steps < self.step_no
                if dead:
                    self._free(slot)
        self._evict()
        for s in self.slots.values():
            s["pcount"] = 0
        self.pend = [dict() for _ in self.caps]
        self.pass_no += 1


def make_index(capacity, caps=None, seed=0, **kw):
    """A DynamicIndex from the flat keywords of the reference (those of ``EvictionConfig.build``)."""
    from dynarec.tables.dynamic import DynamicIndex
    from dynarec.tables.eviction import EvictionConfig

    return DynamicIndex(capacity, caps, EvictionConfig.build(strict=False, **kw), seed)


def make_table(capacity, dim, caps=None, seed=0, init_std=0.01, sparse=False, **kw):
    """A DynamicTable from the same flat keywords."""
    from dynarec.tables.dynamic_table import DynamicTable
    from dynarec.tables.eviction import EvictionConfig

    return DynamicTable(capacity, dim, caps, EvictionConfig.build(strict=False, **kw), init_std, sparse, seed)
