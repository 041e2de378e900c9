import copy

import pytest
import torch

from dynamic_reference import ReferenceTable, make_table

from dynarec.tables.eviction import POLICIES
from dynarec.tables.hashing import hash_string


def _stream(seed, passes=6, steps=6, feats=2, hi=60, b=16):
    g = torch.Generator().manual_seed(seed)
    for p in range(passes):
        # ids drift: the id range moves with the pass, so old ids die out
        yield [[torch.randint(p * 8, p * 8 + hi, (b,), generator=g) ** 1 for _ in range(feats)] for _ in range(steps)]


def _run(t, stream, ref=None, check=None):
    for batches in stream:
        for step in batches:
            for f, ids in enumerate(step):
                t(ids, f)
                if ref is not None:
                    ref.observe(ids.tolist(), f)
            t.index.step()
            if ref is not None:
                ref.step()
        t.index.end_pass()
        if ref is not None:
            ref.end_pass()
        if check:
            check(t, ref)


@pytest.mark.parametrize("score", POLICIES)
def test_equals_plain_python_reference_and_respects_caps(score):
    kw = dict(score=score, threshold=2, expiry_passes=2, min_updates=2, ttl_steps=8)
    t = make_table(24, 4, caps=[16, 14], **kw)
    ref = ReferenceTable(24, [16, 14], **kw)

    def check(t, ref):
        assert t.index.slots_in_use <= 24 and all(n <= c for n, c in zip(t.index.feature_counts(), [16, 14]))
        mine = {(int(f), int(i)): s for s, (f, i) in enumerate(zip(t.index.sfeat, t.index.sid)) if t.index.used[s]}
        assert mine == {k: s for k, s in ref.index.items()}  # same ids in the same slots
        got = sorted((int(f), int(i)) for a, b in t.index.evicted_ids for f, i in zip(a, b))
        assert got == sorted(ref.evicted)

    _run(t, _stream(1, hi=80), ref, check)
    assert ref.evicted  # the stream really evicts


def test_unseen_for_expiry_passes_reads_default_row():
    t = make_table(10, 3, expiry_passes=2)
    t(torch.tensor([5]))
    t.index.end_pass()
    assert t.index.lookup(torch.tensor([5])).item() > 0
    t.index.end_pass()
    assert t.index.lookup(torch.tensor([5])).item() > 0  # seen within the last 2 passes
    t.index.end_pass()
    t.eval()
    assert t.index.lookup(torch.tensor([5])).item() == 0
    assert torch.equal(t(torch.tensor([5])), torch.zeros(1, 3))


def test_threshold_holds():
    t = make_table(10, 3, threshold=3)
    t(torch.tensor([7, 7]))
    assert t.index.lookup(torch.tensor([7])).item() == 0
    t(torch.tensor([7, 9]))
    assert t.index.lookup(torch.tensor([7])).item() > 0 and t.index.lookup(torch.tensor([9])).item() == 0


def test_probabilistic_admission_rate():
    t = make_table(100000, 1, admit_prob=0.3, seed=3)
    t(torch.arange(20000))
    assert abs(t.index.slots_in_use / 20000 - 0.3) < 0.02


@pytest.mark.parametrize("opt_cls", [torch.optim.Adagrad, torch.optim.Adam])
def test_evicted_then_readmitted_starts_fresh(opt_cls):
    t = make_table(2, 3, headroom=0.5, score="lfu", expiry_passes=1)
    opt = opt_cls(t.parameters(), lr=0.1)
    t.attach(opt)
    for _ in range(3):
        opt.zero_grad()
        t(torch.tensor([1, 1, 2])).sum().backward()
        opt.step()
    s1 = t.index.lookup(torch.tensor([1])).item()
    st = opt.state[t.weight]
    assert any(v[s1].abs().sum() > 0 for v in st.values() if v.shape == t.weight.shape)
    t.index.end_pass()
    t.index.end_pass()  # unseen for a pass: both expire
    assert t.index.slots_in_use == 0
    assert all(v[1:].abs().sum() == 0 for v in st.values() if v.shape == t.weight.shape)
    t(torch.tensor([1]))
    s = t.index.lookup(torch.tensor([1])).item()
    assert s > 0 and t.index.count[s].item() == 1
    assert t.weight[s].abs().max() < 0.1  # a fresh init row, not the trained one
    assert all(v[s].abs().sum() == 0 for v in st.values() if v.shape == t.weight.shape)


def test_sparse_gradients_train_only_used_rows():
    t = make_table(8, 2, sparse=True)
    out = t(torch.tensor([[3, 4], [3, -1]]))
    out.sum().backward()
    g = t.weight.grad
    assert g.is_sparse
    rows = set(torch.nonzero(g.to_dense().abs().sum(1)).flatten().tolist())
    assert rows == {t.index.lookup(torch.tensor([3])).item(), t.index.lookup(torch.tensor([4])).item()}


def test_state_dict_round_trip_continues_identically():
    stream = list(_stream(5, passes=6, hi=80))
    a = make_table(20, 2, caps=[12, 12], admit_prob=0.5, expiry_passes=2, score="distance_lfu", seed=1)
    _run(a, stream[:3])
    b = make_table(20, 2, caps=[12, 12], admit_prob=0.5, expiry_passes=2, score="distance_lfu", seed=99)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    _run(a, stream[3:])
    _run(b, stream[3:])
    assert torch.equal(a.index.sid * a.index.used, b.index.sid * b.index.used) and torch.equal(a.weight, b.weight)
    assert a.index.last_pass_stats == b.index.last_pass_stats


def test_string_hash_is_stable_and_spread():
    assert hash_string("user_1") == hash_string("user_1")
    assert len({hash_string(f"u{i}") for i in range(10000)}) == 10000


def test_string_hash_is_never_a_padding_id():
    hs = [hash_string(f"u{i}") for i in range(10000)]
    assert min(hs) >= 0 and max(hs) > 2 ** 62  # ids < 0 are padding; the 63 bits are used


def test_hashed_string_ids_are_admitted():
    t = make_table(10, 2)
    ids = torch.tensor([hash_string(s) for s in ("a", "b", "c", "d")])
    t(ids)
    assert t.index.slots_in_use == 4 and bool((t.index.lookup(ids) > 0).all())
