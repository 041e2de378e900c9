"""DynamicIndex: the id -> slot policy alone (equal to the plain-Python reference in every mode), its
callbacks, change tracking, checkpoints, and ``reset_slots`` on a fused parameter with a row offset."""
import copy

import pytest
import torch

from dynamic_reference import ReferenceTable, make_index, make_table

from dynarec.tables.eviction import POLICIES
from dynarec.tables.row_state import reset_slots
from dynarec.tables.sorted_map import SortedMap, lowest, merge


def _stream(seed, passes=6, steps=6, feats=2, hi=80, b=16, drift=8):
    g = torch.Generator().manual_seed(seed)
    for p in range(passes):
        yield [[torch.randint(p * drift, p * drift + hi, (b,), generator=g) for _ in range(feats)]
               for _ in range(steps)]


def _mine(ix):
    return {(int(ix.sfeat[s]), int(ix.sid[s])): s for s in torch.nonzero(ix.used).flatten().tolist()}


def _compare(ix, ref, kw, stream):
    caps = kw["caps"]
    for batches in stream:
        for step in batches:
            for f, ids in enumerate(step):
                slots = ix.map(ids, f)
                ref.observe(ids.tolist(), f)
                want = [ref.index.get((f, i), 0) for i in ids.tolist()]
                assert slots.tolist() == want  # same slot for every id, right after admission
            ix.step()
            ref.step()
        ix.end_pass()
        ref.end_pass()
        assert _mine(ix) == ref.index  # same ids in the same slots
        assert ix.slots_in_use <= ix.capacity and all(n <= c for n, c in zip(ix.feature_counts(), caps))
        assert ix.feature_counts() == [int((ix.used & (ix.sfeat == f)).sum()) for f in range(len(caps))]
        _, (ef, ei) = ix.changed_slots(clear=False)
        assert sorted(zip(ef.tolist(), ei.tolist())) == sorted(ref.evicted)


@pytest.mark.parametrize("score", POLICIES)
@pytest.mark.parametrize("mode", ["threshold", "prob", "interval"])
def test_index_equals_reference(score, mode):
    kw = dict(caps=[16, 14], score=score, expiry_passes=2, min_updates=2, ttl_steps=8, seed=4)
    kw.update({"threshold": dict(threshold=2), "prob": dict(admit_prob=0.4),
               "interval": dict(threshold=1, interval=4, headroom=0.25)}[mode])
    ix, ref = make_index(24, **kw), ReferenceTable(24, **kw)
    _compare(ix, ref, kw, _stream(2, hi=90))
    assert ref.evicted and ref.pass_no == 6


@pytest.mark.parametrize("score,threshold", [("lfu", 1), ("feature", 2)])
def test_index_equals_reference_past_the_deltamerge(score, threshold, monkeypatch):
    # a small delta limit, so that each feature map merges its delta into the main array mid-pass
    monkeypatch.setattr(SortedMap, "MIN_DELTA", 16)
    monkeypatch.setattr(SortedMap, "SQRT_DELTA", 1)
    flushes = []
    flush = SortedMap.flush
    monkeypatch.setattr(SortedMap, "flush", lambda self: (flushes.append(1), flush(self)))
    kw = dict(caps=[500, 400], score=score, threshold=threshold, expiry_passes=1, headroom=0.2)
    ix, ref = make_index(700, **kw), ReferenceTable(700, **kw)
    _compare(ix, ref, kw, _stream(3, passes=3, steps=4, hi=2000, b=150, drift=400))
    assert len(flushes) > 2 * 3 + 5  # beyond the one flush per slot map at each of the 3 pass ends


def test_lowest_is_the_head_of_a_stable_argsort():
    g = torch.Generator().manual_seed(2)
    for n in (1, 7, 50, 199, 200, 250):
        sc = torch.randint(0, 6, (200,), generator=g).double()  # many ties
        want = torch.sort(torch.argsort(sc, stable=True)[:n]).values
        assert torch.equal(lowest(sc, n), want)


@pytest.mark.parametrize("n,m", [(0, 5), (5, 0), (900, 300), (60000, 9000), (300000, 17000)])
def test_merge_equals_a_sort_of_both(n, m):
    # both merge paths: a stable argsort of the two runs (small) and insertion points (beyond 65,536 keys)
    g = torch.Generator().manual_seed(n + m)
    keys = torch.randperm(4 * (n + m) + 1, generator=g)[:n + m] - 2 * (n + m)  # distinct, some negative
    a, b = torch.sort(keys[:n]).values, torch.sort(keys[n:]).values
    k, v = merge(a, a * 3, b, b * 3)
    assert torch.equal(k, torch.sort(keys).values) and torch.equal(v, k * 3)


def test_lowest_takes_a_numpy_array_like_a_tensor():
    sc = torch.randint(0, 4, (50_000,), generator=torch.Generator().manual_seed(5)).double()
    assert torch.equal(lowest(sc.numpy(), 777), lowest(sc, 777))
    assert torch.equal(lowest(sc, 777), torch.sort(torch.argsort(sc, stable=True)[:777]).values)


def test_sorted_map_matches_a_dict():
    g = torch.Generator().manual_seed(0)
    m, d = SortedMap(), {}
    for it in range(60):
        q = torch.unique(torch.randint(0, 30000, (700,), generator=g))
        v = torch.randint(-1, 50, q.shape, generator=g)
        m.put(q, v)
        for k, x in zip(q.tolist(), v.tolist()):
            if x >= 0:
                d[k] = x
            else:
                d.pop(k, None)
        if it % 17 == 0:
            m.flush()
        probe = torch.randint(0, 30000, (2000,), generator=g)
        assert m.get(probe).tolist() == [d.get(k, -1) for k in probe.tolist()]
    k, v = m.items()
    assert dict(zip(k.tolist(), v.tolist())) == d and bool((k[1:] > k[:-1]).all())


def test_callbacks_report_exactly_the_admitted_and_freed_slots():
    ix = make_index(6, headroom=0.5)
    got = {"admit": [], "free": []}
    ix.subscribe(lambda s: got["admit"].append(s.tolist()), lambda s: got["free"].append(s.tolist()))
    slots = ix.map(torch.tensor([10, 11, 10, 12, -1]))
    assert slots.tolist()[:4] == [1, 2, 1, 3] and slots[4] == 0 and got["admit"] == [[1, 2, 3]]
    ix.map(torch.tensor([10, 10, 13]))
    assert got["admit"][-1] == [4]
    assert ix.end_pass() == {"admitted": 4, "evicted": 1, "expired": 0}  # 4 -> floor(6 * 0.5) = 3
    assert len(got["free"]) == 1 and len(got["free"][0]) == 1
    freed = got["free"][0][0]
    assert ix.ids_of(torch.tensor([freed]))[1].item() == -1 and ix.lookup(torch.tensor([10])).item() == 1


def test_changed_slots_tracks_training_lookups_admissions_and_evictions():
    ix = make_index(4, headroom=0.5)
    ix.map(torch.tensor([1, 2, 3]))
    s, (ef, ei) = ix.changed_slots()
    assert s.tolist() == [1, 2, 3] and ef.numel() == 0
    ix.map(torch.tensor([2]), train=False)  # an eval lookup changes no row
    assert ix.changed_slots()[0].numel() == 0
    ix.map(torch.tensor([2, 2, 3]))
    ix.end_pass()  # keeps floor(4 * 0.5) = 2: id 1 (count 1) is evicted
    s, (ef, ei) = ix.changed_slots()
    assert s.tolist() == [2, 3] and ei.tolist() == [1] and ef.tolist() == [0]
    f, i = ix.ids_of(s)
    assert i.tolist() == [2, 3] and f.tolist() == [0, 0]


def test_map_is_observe_then_lookup():
    a, b = make_index(50, threshold=2), make_index(50, threshold=2)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        ids = torch.randint(-2, 40, (8, 3), generator=g)
        b.observe(ids)
        assert torch.equal(a.map(ids), b.lookup(ids))


def test_int32_ids_map_like_int64():
    a, b = make_index(30), make_index(30)
    ids = torch.tensor([[5, 9, -1], [9, 12, 5]])
    assert torch.equal(a.map(ids.int()), b.map(ids)) and torch.equal(a.lookup(ids.int()), b.lookup(ids))
    assert a.lookup(ids.int()).dtype == torch.long


def test_index_checkpoint_continues_identically():
    stream = list(_stream(7, passes=6, hi=90))
    kw = dict(caps=[12, 12], admit_prob=None, threshold=2, expiry_passes=2, score="feature")

    def run(ix, part):
        out = []
        for batches in part:
            for step in batches:
                out += [ix.map(ids, f).tolist() for f, ids in enumerate(step)]
                ix.step()
            out.append(ix.end_pass())
        return out

    a = make_index(20, **kw)
    run(a, stream[:2])
    for step in stream[2][:3]:  # stop mid-pass: pending counts and evictions not yet reported
        for f, ids in enumerate(step):
            a.map(ids, f)
    b = make_index(20, **kw)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    rest = [stream[2][3:]] + stream[3:]
    assert run(a, rest) == run(b, rest)
    assert torch.equal(a.changed_slots()[1][1], b.changed_slots()[1][1])


OPTS = {"adagrad": lambda p: torch.optim.Adagrad([p], lr=0.1, initial_accumulator_value=0.1),
        "adam": lambda p: torch.optim.Adam([p], lr=0.1),
        "sparse_adam": lambda p: torch.optim.SparseAdam([p], lr=0.1)}


@pytest.mark.parametrize("name", OPTS)
def test_reset_slots_with_offset_gives_fresh_optimizer_state(name):
    off, cap, dim = 5, 3, 2  # a fused table: 5 static rows, then the dynamic slots 0..cap
    w = torch.nn.Parameter(torch.randn(off + cap + 1, dim))
    opt = OPTS[name](w)
    ix = make_index(cap, headroom=0.0, expiry_passes=1)
    def init(s):  # runs under no_grad: an in-place write to the parameter is allowed
        w[s + off] = 0.5
    ix.subscribe(on_admit=init, on_free=lambda s: reset_slots(opt, w, s, rows_offset=off))
    fresh = {k: v.clone() for k, v in opt.state[w].items()} if name == "adagrad" else {}

    def train(dyn_ids):
        opt.zero_grad()
        rows = torch.cat([torch.tensor([0, 1]), ix.map(dyn_ids) + off])
        torch.nn.functional.embedding(rows, w, sparse=name == "sparse_adam").pow(2).sum().backward()
        opt.step()

    for _ in range(3):
        train(torch.tensor([7, 8]))
    s7 = ix.lookup(torch.tensor([7])).item()
    st = opt.state[w]
    rowwise = [k for k, v in st.items() if torch.is_tensor(v) and v.dim() and v.shape[0] == w.shape[0]]
    assert rowwise and all(st[k][off + s7].abs().sum() > 0 for k in rowwise)
    static_before = {k: st[k][:off].clone() for k in rowwise}
    ix.end_pass()
    ix.end_pass()  # unseen for a pass: 7 and 8 expire
    assert ix.slots_in_use == 0
    ix.observe(torch.tensor([7]))
    s = ix.lookup(torch.tensor([7])).item()
    for k in rowwise:
        want = fresh[k][off + s] if name == "adagrad" else torch.zeros(dim)
        assert torch.equal(st[k][off + s], want)  # re-admitted: fresh state (Adagrad: its initial value 0.1)
        assert torch.equal(st[k][:off], static_before[k])  # the static rows keep theirs
    assert torch.equal(w[off + s].detach(), torch.full((dim,), 0.5))  # and a fresh row from on_admit
    if name == "adagrad":
        assert torch.allclose(st["sum"][off + s], torch.full((dim,), 0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dynamic_table_on_cuda_matches_cpu():
    cpu = make_table(6, 3, headroom=0.5, expiry_passes=1, sparse=True)
    gpu = copy.deepcopy(cpu).cuda()
    opts = [torch.optim.Adagrad(t.parameters(), lr=0.1) for t in (cpu, gpu)]
    for t, o in zip((cpu, gpu), opts):
        t.attach(o)
    for ids in ([1, 2, 3, 1], [2, 4, 5, 6, 7], [8, 9]):
        for t, o in zip((cpu, gpu), opts):
            o.zero_grad()
            x = torch.tensor(ids, device=t.weight.device)
            t(x).pow(2).sum().backward()
            o.step()
            t.step()
        assert torch.allclose(cpu.weight, gpu.weight.cpu())
        assert cpu.index.end_pass() == gpu.index.end_pass()
    assert torch.allclose(opts[0].state[cpu.weight]["sum"], opts[1].state[gpu.weight]["sum"].cpu())
