"""Eviction policies as objects: each score equals its one-slot formula, the index keeps exactly the per-slot
state its policy declares, a policy registered from outside drives eviction by name, and the one eviction config
rides on the table specs."""
import dataclasses

import pytest
import torch
from dynamic_reference import score_py

from dynarec.tables import TableCollection, TableSpec
from dynarec.tables.dynamic import DynamicIndex
from dynarec.tables.eviction import POLICIES, EvictionConfig, EvictionPolicy, register

PARAMS = {"distance_lfu": {"decay": 1.7}, "ttl": {"ttl_steps": 9}, "feature": {"gamma": 0.3}}


@pytest.mark.parametrize("name", POLICIES)
def test_each_score_equals_its_one_slot_formula(name):
    g = torch.Generator().manual_seed(1)
    t = 50

    class M:  # the slot state a policy reads
        count = torch.randint(0, 40, (64,), generator=g)
        last = torch.randint(0, t + 1, (64,), generator=g)
        pcount = torch.randint(0, 5, (64,), generator=g)
        dcount = torch.rand(64, generator=g, dtype=torch.float64) * 10

    p = EvictionConfig.build(name, **PARAMS.get(name, {})).policy
    kw = {"decay": p.decay} if name == "distance_lfu" else {"ttl_steps": p.ttl_steps} if name == "ttl" else {}
    want = [score_py(name, c, la, d, t, **kw) for c, la, d in zip(M.count.tolist(), M.last.tolist(), M.dcount.tolist())]
    got = p.scores(M, t)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(want, rel=1e-12)  # the same formula; float64 rounding only


@pytest.mark.parametrize("name", POLICIES)
def test_the_index_keeps_exactly_the_state_its_policy_declares(name):
    ix = DynamicIndex(10, eviction=EvictionConfig.build(name))
    for _ in range(3):
        ix.map(torch.tensor([3, 4, 3]))
        ix.step()
    ix.end_pass()
    ix.map(torch.tensor([3]))
    ix.step()
    ix.map(torch.tensor([3]))
    s = int(ix.lookup(torch.tensor([3])))
    kept = {"count": int(ix.count[s]) == 8, "last": int(ix.last[s]) == 4, "pcount": int(ix.pcount[s]) == 2,
            "dcount": float(ix.dcount[s]) == 6.0}
    zero = {"count": int(ix.count[s]) == 0, "last": int(ix.last[s]) == 0, "pcount": int(ix.pcount[s]) == 0,
            "dcount": float(ix.dcount[s]) == 0.0}
    declared = POLICIES[name].state
    assert all(kept[k] for k in declared), (name, kept)
    assert all(zero[k] for k in set(kept) - declared), (name, zero)


def test_a_policy_registered_from_outside_evicts_by_name(monkeypatch):
    monkeypatch.setattr("dynarec.tables.eviction.POLICIES", dict(POLICIES))

    @register
    @dataclasses.dataclass(frozen=True)
    class LargestIdFirst(EvictionPolicy):  # needs no per-slot counter: reads only the ids
        name = "largest_id_first"

        def scores(self, m, t):
            return -m.sid.double()

    ix = DynamicIndex(4, eviction=EvictionConfig.build("largest_id_first", headroom=0.5))
    assert not (ix._track_count or ix._track_last or ix._track_pcount or ix._track_dcount)
    ix.map(torch.tensor([40, 10, 30, 20]))
    ix.end_pass()  # keeps floor(4 * 0.5) = 2: the two smallest ids
    assert (ix.lookup(torch.tensor([10, 20, 30, 40])) > 0).tolist() == [True, True, False, False]


def test_build_refuses_unknown_scores_and_keys():
    with pytest.raises(ValueError, match="score"):
        EvictionConfig.build("mru")
    with pytest.raises(TypeError, match="gamma"):
        EvictionConfig.build("lfu", gamma=0.5)
    assert EvictionConfig.build("lfu", strict=False, gamma=0.5) == EvictionConfig.build("lfu")


def test_the_eviction_config_rides_on_the_specs_of_the_tables_serving_the_features():
    c = TableCollection()
    c.add(TableSpec("fused", 20, 4, features=("user", "item", "city"), offsets=(0, 8, 16)))
    c.add(TableSpec("prior", 9, 2, features=("user",), offsets=(0,)))
    c.add(TableSpec("pos", 5, 2))
    cfg = EvictionConfig.build("feature", gamma=0.25, expiry_passes=2)
    assert c.eviction() is None
    assert c.set_eviction(["user"], cfg) == ["fused", "prior"]
    assert c.specs["fused"].eviction == cfg and c.specs["prior"].eviction == cfg and c.specs["pos"].eviction is None
    assert c.eviction() == cfg
    c.specs["prior"] = dataclasses.replace(c.specs["prior"], eviction=EvictionConfig.build("lfu"))
    with pytest.raises(ValueError, match="different eviction"):
        c.eviction()
