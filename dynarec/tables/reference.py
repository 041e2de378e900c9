"""Plain-Python (dict-based) reference of DynamicTable's policy in count-threshold mode; used by tests only."""
import math
from collections import Counter

from dynarec.tables.scores import score_py


class ReferenceTable:
    def __init__(self, capacity, caps, score="lfu", threshold=1, expiry_passes=None, min_updates=1,
                 headroom=0.1, decay=1.0, ttl_steps=1000, gamma=0.5):
        self.capacity, self.caps, self.score = capacity, list(caps), score
        self.threshold, self.E, self.min_updates = threshold, expiry_passes, min_updates
        self.headroom, self.decay, self.ttl_steps, self.gamma = headroom, decay, ttl_steps, gamma
        self.slots, self.index, self.pend = {}, {}, [dict() for _ in caps]
        self.step_no = self.pass_no = 0
        self.evicted = []

    def used_f(self, f):
        return sum(1 for s in self.slots.values() if s["feat"] == f)

    def observe(self, ids, f):
        for i, c in sorted(Counter(x for x in ids if x >= 0).items()):
            key = (f, i)
            if key in self.index:
                s = self.slots[self.index[key]]
                s["count"] += c
                s["pcount"] += c
                s["last"] = self.step_no
                continue
            tot = c + self.pend[f].get(i, 0)
            room = min(self.caps[f] - self.used_f(f), self.capacity - len(self.slots))
            if tot >= self.threshold and room > 0:
                slot = min(set(range(1, self.capacity + 1)) - set(self.slots))
                self.slots[slot] = dict(id=i, feat=f, count=c, pcount=c, last=self.step_no, dcount=0.0, age=0,
                                        ring=[0] * (self.E or 1))
                self.index[key] = slot
                self.pend[f].pop(i, None)
            else:
                self.pend[f][i] = tot

    def step(self):
        self.step_no += 1

    def _free(self, slot):
        s = self.slots.pop(slot)
        del self.index[(s["feat"], s["id"])]
        self.evicted.append((s["feat"], s["id"]))

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
        sc = {k: score_py(self.score, s["count"], s["last"], s["dcount"], self.step_no, self.decay, self.ttl_steps)
              for k, s in self.slots.items()}
        groups = [(lambda s, f=f: s["feat"] == f, cap) for f, cap in enumerate(self.caps)]
        groups.append((lambda s: True, self.capacity))
        for pred, cap in groups:
            mine = sorted((k for k, s in self.slots.items() if pred(s)), key=lambda k: (sc[k], k))
            for k in mine[:max(len(mine) - math.floor(cap * (1 - self.headroom)), 0)]:
                self._free(k)
        for s in self.slots.values():
            s["pcount"] = 0
        self.pend = [dict() for _ in self.caps]
        self.pass_no += 1
