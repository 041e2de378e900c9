"""Shallow position-bias tower (SPEC §2.12): dropout of positions, eval ignores the position, a zero tower
gives the plain model, and — its purpose — the main tower ranks better at a fixed position when the
logged clicks depend on position. Real-data checks on the Open Bandit sample (positions 1-3)."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dynarec.data.encode import Encoders
from dynarec.data.prepare import prepare_table, to_tensor_table
from dynarec.data.schema import Feature, Schema, Task
from dynarec.data.synthetic import position_biased
from dynarec.errors import ConfigError
from dynarec.losses import model_task_losses
from dynarec.metrics import auc
from dynarec.models import build_model
from dynarec.nn.position import PositionBiasTower, drop_positions

OBD = Path(os.environ.get("DYNAREC_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "obd"
SMALL = {"embed_dim": 8, "hidden": [16], "tower_hidden": [], "expert_dropout": 0.0}


def fit(model, table, epochs=3, bs=256, lr=1e-2, seed=0):
    torch.manual_seed(seed)
    emb = [model.embedding.weight.weight]
    dense = [p for p in model.parameters() if p is not emb[0]]
    opts = [torch.optim.Adagrad(emb, lr=0.1), torch.optim.Adam(dense, lr=lr)]
    types = model.schema.task_types
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for b in table.batches(bs, shuffle=True, generator=g):
            for o in opts:
                o.zero_grad()
            out = model(b)
            loss = sum(model_task_losses(model, out, b.labels, types).values())
            if model.extra_loss() is not None:
                loss = loss + model.extra_loss()
            loss.backward()
            for o in opts:
                o.step()
    model.eval()
    return model


def test_position_dropout_rate_and_eval_missing():
    torch.manual_seed(0)
    pos = torch.randint(1, 4, (40000,))
    out = drop_positions(pos, 0.1, training=True)
    frac = (out == 0).float().mean().item()
    assert abs(frac - 0.1) < 4 * (0.1 * 0.9 / 40000) ** 0.5  # binomial test, 4 sd
    assert torch.equal(out[out != 0], pos[out != 0])  # the others are untouched
    assert (drop_positions(pos, 0.1, training=False) == 0).all()


def test_tower_eval_ignores_position_but_not_the_cross_feature():
    torch.manual_seed(0)
    tower = PositionBiasTower(4, 2, extra_sizes=[3]).eval()  # linear shallow tower
    pos = torch.randint(1, 4, (50,))
    dev = torch.randint(0, 3, (50, 1))
    a = tower(pos, dev)
    b = tower(torch.randint(1, 4, (50,)), dev)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    c = tower(pos, (dev + 1) % 3)
    assert (a - c).abs().max() > 1e-4  # still a per-device bias with position missing
    tower.train()
    tower.p = 0.0
    assert (tower(pos, dev) - tower(torch.where(pos == 1, 2, 1), dev)).abs().max() > 1e-4  # training uses it


def _schema(with_position):
    feats = [Feature("domain", "sparse", "domain"), Feature("item_id", "sparse", "item")]
    if with_position:
        feats.append(Feature("position", "sparse", "position"))
    return Schema(features=feats, tasks=[Task("click")], domain="domain")


def test_position_tower_debiases_the_main_tower():
    train_raw, _ = position_biased(8000, 0)
    test_raw, p_test = position_biased(10000, 1, fixed_position=2)
    aucs = {}
    for name in ("mmoe", "ple"):
        for with_tower in (False, True):
            s = _schema(with_tower)
            enc = Encoders(s).fit(train_raw, "train")  # test rows encoded with the train encoders
            tr = to_tensor_table(s, enc.transform(train_raw, "train"))
            te = to_tensor_table(s, enc.transform(test_raw, "test"))
            params = dict(SMALL, position_tower=with_tower)
            if name == "ple":
                params.pop("expert_dropout")
                params.update(levels=1)
            torch.manual_seed(0)
            m = fit(build_model(name, s, params), tr)
            pred = m.predict(te.full())["click"].numpy()
            aucs[(name, with_tower)] = auc(te.labels["click"].numpy(), pred)
            # ranking quality against the truth at the fixed position
            aucs[(name, with_tower, "truth")] = np.corrcoef(np.argsort(np.argsort(pred)),
                                                            np.argsort(np.argsort(p_test)))[0, 1]
    for name in ("mmoe", "ple"):
        assert aucs[(name, True)] > aucs[(name, False)] + 0.02, aucs
        assert aucs[(name, True, "truth")] > aucs[(name, False, "truth")] + 0.1, aucs


def test_zero_shallow_tower_gives_the_plain_model():
    raw, _ = position_biased(500, 0)
    s = _schema(True)
    tr = prepare_table(raw, s)["train"]
    m = build_model("mmoe", s, dict(SMALL, position_tower=True)).train()
    with torch.no_grad():
        for p in m.position_tower.parameters():
            p.zero_()
    b = tr.take(torch.arange(64))
    torch.manual_seed(3)
    out = m(b)["click"]
    torch.manual_seed(3)
    hs = m.mmoe(m.main_input(b))
    torch.testing.assert_close(out, m.towers["click"](hs[0])[:, 0], atol=1e-6, rtol=1e-6)
    assert m.input_dim == 2 * 8  # domain + item embeddings: the position is not a main-tower input


def test_position_tower_config_errors():
    s = _schema(False)
    prepare_table(position_biased(200, 0)[0].drop(["position"]), s)
    with pytest.raises(ConfigError, match="group: position"):
        build_model("mmoe", s, {"position_tower": True})
    s2 = _schema(True)
    prepare_table(position_biased(200, 0)[0], s2)
    with pytest.raises(ConfigError, match="position_cross"):
        build_model("mmoe", s2, {"position_tower": True, "position_cross": ["nope"]})
    with pytest.raises(ConfigError, match="position_tasks"):
        build_model("mmoe", s2, {"position_tower": True, "position_tasks": ["nope"]})


@pytest.mark.skipif(not OBD.exists(), reason="Open Bandit sample not available (../shared/data/obd)")
def test_open_bandit_real_positions():
    from dynarec.datasets import load_dataset

    raw, schema = load_dataset("obd", OBD, policies="random", campaigns="all")
    pos = np.asarray(raw.column("position"))
    assert set(np.unique(pos)) == {1, 2, 3}
    tabs = prepare_table(raw, schema, seed=0)
    tr, te = tabs["train"], tabs["test"]
    pcol = [f.name for f in schema.sparse].index("position")
    with_t = fit(build_model("mmoe", schema, dict(SMALL, position_tower=True)), tr, epochs=1)
    without = fit(build_model("mmoe", schema, dict(SMALL)), tr, epochs=1)
    b = te.full()
    b2 = te.full()
    b2.sparse[:, pcol] = b2.sparse[:, pcol] % 3 + 1  # every row moved to another slot (ids 1..3)
    assert not torch.equal(b.sparse, b2.sparse)
    # with the tower: inference never sees the position (it is "missing")
    torch.testing.assert_close(with_t.predict(b)["click"], with_t.predict(b2)["click"], atol=0, rtol=0)
    # without it the position is an ordinary input and moves the predictions
    assert (without.predict(b)["click"] - without.predict(b2)["click"]).abs().max() > 0
    # in training the real positions reach the shallow tower (~10 % replaced by 'missing')
    with_t.train()
    ids = b.sparse[:, pcol]
    with_t.position_tower.pos_emb.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    seen = []
    with_t(b)
    frac_missing = (seen[0] == 0).float().mean().item()
    n = len(ids)
    assert abs(frac_missing - 0.1) < 4 * (0.09 / n) ** 0.5
    assert torch.equal(seen[0][seen[0] != 0], ids[seen[0] != 0])
