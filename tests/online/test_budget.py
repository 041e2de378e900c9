"""Through the runner: the slots in use never exceed the per-feature caps nor the global budget after any
pass; ids unseen for ``expiry_passes`` passes read the default row; an evicted id that comes back starts from a
fresh row and a fresh optimizer state in the MODEL's tables."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.data.schema import Schema
from dynarec.online import rows as rows_mod
from dynarec.online.config import load_online_config
from dynarec.online.marker import pass_dir
from dynarec.online.rows import dynamic_targets
from dynarec.online.state import restore_state
from dynarec.train.checkpoint import read_checkpoint

from tests.online.conftest import SMALL, online


def test_slots_never_exceed_the_caps_per_feature_and_global(stream, tmp_path):
    caps = {"user_id": 40, "item_id": 30}
    rows = online(stream, tmp_path / "run", "online.max_rows=90", "online.caps={user_id: 40, item_id: 30}",
                  "online.score=lru")
    assert len(rows) == 4
    for r in rows:
        assert r["table_rows"] <= 90 and sum(r["feature_rows"].values()) == r["table_rows"]
        for f, cap in caps.items():
            assert r["feature_rows"][f] <= cap
    assert sum(r["evicted"] for r in rows) > 0  # the budget really binds
    assert all(r["admitted"] > 0 for r in rows)


def _tiny_stream(d, passes):
    """Pass files where user 'u7' appears only in the passes listed in ``passes`` (others: fresh users)."""
    schema = Schema.from_dict({"features": [{"name": "domain", "group": "domain"},
                                            {"name": "user_id", "group": "user", "dynamic": True},
                                            {"name": "item", "group": "item"}],
                               "tasks": [{"name": "click"}], "domain": "domain"})
    for k in range(4):
        users = [f"u{k}_{i}" for i in range(60)] + (["u7"] * 40 if k in passes else [])
        n = len(users)
        pq.write_table(pa.table({"domain": ["a", "b"] * (n // 2), "user_id": users,
                                 "item": [f"i{i % 5}" for i in range(n)], "click": [i % 3 == 0 for i in range(n)]}),
                       d / f"pass-{k:04d}.parquet")
    return schema


def _state(run, k, sets=()):
    cfg = load_online_config(None, SMALL + list(sets), "pepnet")
    f = run / pass_dir(k) / "model.pt"
    return restore_state(cfg, read_checkpoint(f), str(f))


def test_an_id_unseen_for_expiry_passes_reads_the_default_row(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    schema = _tiny_stream(d, passes={0})
    sets = ["online.expiry_passes=1", "online.max_rows=500"]
    online(d, tmp_path / "run", *sets, schema=schema)
    u7 = torch.tensor([__import__("dynarec.online.ids", fromlist=["x"])._ids(pa.array(["u7"]))[0]])
    assert _state(tmp_path / "run", 0, sets).index.lookup(u7, 0).item() > 0  # admitted in pass 0
    st = _state(tmp_path / "run", 1, sets)
    assert st.index.lookup(u7, 0).item() == 0  # no update in the last pass: expired, reads the default row
    # the model reads row 0 of the shared table for it: the same prediction as an id never seen
    from dynarec.online.schema import encode_pass
    table, raw, _ = encode_pass(d / "pass-0000.parquet", st.schema, st.encoders, st.dynamic)
    slots = st.index.lookup(raw["user_id"], 0)
    assert (slots[raw["user_id"] == u7.item()] == 0).all()


def test_an_evicted_then_readmitted_id_starts_from_a_fresh_row_and_optimizer_state(tmp_path, monkeypatch):
    d = tmp_path / "s"
    d.mkdir()
    schema = _tiny_stream(d, passes={0, 2})  # u7: pass 0, gone in pass 1 (expires), back in pass 2
    sets = ["online.expiry_passes=1", "online.max_rows=500"]
    seen = []
    real = rows_mod.RowKeeper.on_admit

    def spy(self, slots):
        real(self, slots)
        for name, off in self.targets:
            w = self.model.tables[name].weight
            state = [v[slots + off].clone() for o in self.optimizers for k, v in o.state.get(w, {}).items()
                     if torch.is_tensor(v) and v.shape == w.shape]
            seen.append((name, slots.clone(), w[slots + off].detach().clone(), state, w[off].detach().clone()))
    monkeypatch.setattr(rows_mod.RowKeeper, "on_admit", spy)
    online(d, tmp_path / "run", *sets, schema=schema)
    from dynarec.online.ids import _ids
    u7 = torch.tensor(_ids(pa.array(["u7"])))
    st0, st1, st2 = (_state(tmp_path / "run", k, sets) for k in range(3))
    s0 = st0.index.lookup(u7, 0).item()
    s2 = st2.index.lookup(u7, 0).item()
    assert s0 > 0 and st1.index.lookup(u7, 0).item() == 0 and s2 > 0
    targets = dynamic_targets(st0.model, st0.dynamic)
    assert {n for n, _ in targets} == {"features", "prior"}  # the fused table and PEPNet's gate-only table
    for name, off in targets:
        w1 = st1.model.tables[name].weight
        assert torch.all(w1[s0 + off] == 0)  # freed: zero row
        for o in st1.step.optimizers:  # ... and zero optimizer state (Adagrad sum, Adam moments)
            for v in o.state.get(w1, {}).values():
                if torch.is_tensor(v) and v.shape == w1.shape:
                    assert torch.all(v[s0 + off] == 0)
    # at its re-admission in pass 2: a freshly drawn row, not its old trained one, and zero optimizer state
    trained = {n: st0.model.tables[n].weight[s0 + off].detach() for n, off in targets}
    hits = [(n, r[(s == s2).nonzero().flatten()[0]], [x[(s == s2).nonzero().flatten()[0]] for x in state], d)
            for n, s, r, state, d in seen if (s == s2).any()]
    assert {h[0] for h in hits} >= {"features", "prior"}
    for n, row, state, default in hits[-2:]:  # fresh_row: default = a copy of the region's default row
        assert not torch.allclose(row, trained[n]) and torch.equal(row, default) and row.abs().sum() > 0
        assert state and all(torch.all(x == 0) for x in state)


def test_fresh_row_random_draws_from_the_tables_initialisation(tmp_path, monkeypatch):
    d = tmp_path / "s"
    d.mkdir()
    schema = _tiny_stream(d, passes={0})
    seen = []
    real = rows_mod.RowKeeper.on_admit

    def spy(self, slots):
        real(self, slots)
        w = self.model.tables["features"].weight
        seen.append((w[slots + dict(self.targets)["features"]].detach().clone(), self.std["features"]))
    monkeypatch.setattr(rows_mod.RowKeeper, "on_admit", spy)
    online(d, tmp_path / "run", "online.fresh_row=random", schema=schema)
    rows = torch.cat([r for r, _ in seen])
    assert len(rows) > 100 and rows.std().item() == pytest.approx(seen[0][1], rel=0.2)
    assert len({tuple(r.tolist()) for r in rows}) == len(rows)  # every admitted id drew its own row


def test_the_baselines_static_vocabulary_and_hashing_trick(stream, tmp_path):
    """``online.table: hash`` keeps every id in ``max_rows`` buckets (no admission, no eviction);
    ``static`` has no dynamic table at all (a vocabulary fitted on pass 0)."""
    h = online(stream, tmp_path / "hash", "online.table=hash", "online.max_rows=64")
    assert all(0 < r["table_rows"] <= 64 and r["evicted"] == r["admitted"] == 0 for r in h)
    s = online(stream, tmp_path / "static", "online.table=static")
    assert all(r["table_rows"] == 0 for r in s)
    blob = read_checkpoint(tmp_path / "static" / pass_dir(3) / "model.pt")
    assert not any(f["dynamic"] for f in blob["schema"]["features"])
    assert blob["schema"]["features"][1]["vocab_size"] < 400  # user_id: the first pass's vocabulary + unknown


def test_both_indexes_speak_one_protocol_and_report_the_slots_they_trained():
    """The runner treats the dynamic index and the hashing trick alike (``SlotIndex``, no hasattr); each
    reports exactly the slots its training touched since the last clear, so a hash baseline's delta log is
    right too."""
    from dynarec.online.ids import HashIndex, SlotIndex
    from dynarec.tables.dynamic import DynamicIndex

    ids = torch.tensor([3, 5, 3, 900, -1])
    for ix in (HashIndex(50, 2), DynamicIndex(50, caps=[30, 30])):
        assert isinstance(ix, SlotIndex)
        ix.changed_slots(clear=True)
        slots = ix.map(ids, 1)
        ix.lookup(torch.tensor([77, 78]), 0)  # a lookup alone trains nothing
        got, (f, i) = ix.changed_slots(clear=True)
        assert got.tolist() == sorted(set(slots[slots > 0].tolist())) and f.numel() == i.numel() == 0
        assert ix.changed_slots(clear=True)[0].numel() == 0
        assert isinstance(ix.feature_counts(), list)


def test_dnn_latent_cross_trains_online_with_a_dynamic_context_id(tmp_path):
    """The Latent Cross table declares its context features (TableSpec.features / offsets), so a dynamic
    context id maps into it: its rows get admitted, trained and counted like any dynamic table's."""
    import random

    from dynarec.online.rows import dynamic_targets
    from dynarec.online.runner import run_online

    schema = Schema.from_dict({"features": [{"name": "domain", "group": "domain"},
                                            {"name": "ctx", "group": "context", "dynamic": True},
                                            {"name": "item", "group": "item"}],
                               "tasks": [{"name": "click"}], "domain": "domain"})
    d = tmp_path / "passes"
    d.mkdir()
    rng = random.Random(0)
    for k in range(3):
        n = 600
        ctx = [f"c{k}_{rng.randrange(20)}" for _ in range(n)]
        pq.write_table(pa.table({"domain": [rng.choice("ab") for _ in range(n)], "ctx": ctx,
                                 "item": [f"i{rng.randrange(30)}" for _ in range(n)],
                                 "click": [int(c.endswith(("1", "3"))) for c in ctx]}), d / f"pass-{k:04d}.parquet")
    sets = [s for s in SMALL if not s.startswith(("model.gate_emb_dim", "model.tower_hidden"))] + \
        ["model.latent_cross=true", "online.max_rows=50"]
    cfg = load_online_config(None, sets, "dnn")
    rows = list(run_online(schema, d, tmp_path / "run", cfg))
    assert len(rows) == 3 and all(0 < r["table_rows"] <= 50 and r["admitted"] > 0 for r in rows)
    st = restore_state(cfg, read_checkpoint(tmp_path / "run" / pass_dir(2) / "model.pt"), "x")
    assert any(name == "latent_cross" for name, _ in dynamic_targets(st.model, ["ctx"]))
    w = st.model.tables["latent_cross"].weight.detach()
    assert w[1:].abs().sum() > 0  # admitted context rows trained away from their zero init
