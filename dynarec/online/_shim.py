"""TEMPORARY stand-in for dynarec.tables.dynamic.DynamicIndex until it lands (wraps DynamicTable, dim 1)."""
import torch

from dynarec.tables.dynamic import DynamicTable


class DynamicIndex:
    def __init__(self, capacity, caps=None, seed=0, **kw):
        self.t = DynamicTable(capacity, 1, caps=caps, seed=seed, **kw)
        self.t.optimizers = []
        self.capacity = capacity
        self._admit, self._free = [], []
        orig_free = self.t._free

        def free(slots, key):
            if slots.numel():
                orig_free(slots, key)
                for f in self._free:
                    f(slots.clone())
        self.t._free = free

    def lookup(self, ids, feature=0):
        return self.t.lookup(ids, feature)

    def observe(self, ids, feature=0):
        before = self.t.used.clone()
        self.t.observe(ids, feature)
        new = torch.nonzero(self.t.used & ~before).flatten()
        if new.numel():
            for f in self._admit:
                f(new)

    def map(self, ids, feature=0, train=True):
        if train:
            self.observe(ids, feature)
        return self.lookup(ids, feature)

    def step(self):
        self.t.step()

    def end_pass(self):
        return dict(self.t.end_pass())

    @property
    def slots_in_use(self):
        return self.t.slots_in_use

    def feature_counts(self):
        return self.t.feature_counts()

    def subscribe(self, on_admit=None, on_free=None):
        if on_admit:
            self._admit.append(on_admit)
        if on_free:
            self._free.append(on_free)

    def ids_of(self, slots):
        used = self.t.used[slots]
        return (torch.where(used, self.t.sfeat[slots], -1), torch.where(used, self.t.sid[slots], -1))

    def state_dict(self):
        return self.t.get_extra_state()

    def load_state_dict(self, d):
        self.t.set_extra_state(d)


def reset_slots(optimizer, weight, slots, rows_offset=0):
    st = optimizer.state.get(weight, {})
    init = next((g.get("initial_accumulator_value", 0.0) for g in optimizer.param_groups
                 if any(p is weight for p in g["params"])), 0.0)
    rows = slots + rows_offset
    for k, v in st.items():
        if torch.is_tensor(v) and v.shape == weight.shape:
            v[rows] = init if k in ("sum", "state_sum") else 0.0
