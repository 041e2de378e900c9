"""MC-dropout prediction, ECE and the report behind `dynarec evaluate --mc-dropout N` (SPEC §2.16)."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from dynarec.data.prepare import prepare_table
from dynarec.data.schema import Feature, Schema, Task
from dynarec.errors import ConfigError
from dynarec.models import build_model
from dynarec.uncertainty import ece, mc_dropout_predict, mc_dropout_report


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(0, 1, n)
    t = pa.table({"domain": rng.choice(["a", "b", "c"], n).tolist(), "item_id": rng.integers(0, 30, n),
                  "x": x, "click": (rng.random(n) < 1 / (1 + np.exp(-x))).astype(np.int8),
                  "watch": (2 * x + rng.normal(0, 1, n)).astype(np.float32)})
    s = Schema(features=[Feature("domain", "sparse", "domain"), Feature("item_id", "sparse", "item"),
                         Feature("x", "dense", "context")],
               tasks=[Task("click"), Task("watch", "regression")], domain="domain")
    return s, prepare_table(t, s)


def test_ece_exact_values():
    assert ece(torch.full((100,), 0.3), torch.cat([torch.ones(50), torch.zeros(50)])) == pytest.approx(0.2)
    # two bins: 0.1 (labels mean 0.0) and 0.9 (labels mean 0.5): (|0.1-0| + |0.9-0.5|) / 2
    p = torch.tensor([0.1, 0.1, 0.9, 0.9])
    y = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert ece(p, y) == pytest.approx(0.25)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50000, generator=g)
    y = (torch.rand(50000, generator=g) < p).float()
    assert ece(p, y) < 0.02  # calibrated
    assert ece(p.clamp(0.5, 1.0), y) > 0.1  # over-confident on the low end


def test_variance_zero_without_dropout_positive_with_it(data):
    s, tabs = data
    small = {"embed_dim": 4, "hidden": [16], "tower_hidden": [8]}
    off = build_model("mmoe", s, dict(small, dropout=0.0, expert_dropout=0.0))
    with pytest.raises(ConfigError, match="--mc-dropout: the mmoe model has no dropout"):
        mc_dropout_predict(off, tabs["valid"], n_passes=5)  # variance 0 for every row: refused by default
    assert off.training  # the model's mode is restored after the refusal too
    mean, var = mc_dropout_predict(off, tabs["valid"], n_passes=5, strict=False)
    for t in ("click", "watch"):
        assert torch.equal(var[t], torch.zeros(len(tabs["valid"])))
    pred = off.predict(tabs["valid"].full())
    torch.testing.assert_close(mean["click"], pred["click"])
    torch.testing.assert_close(mean["watch"], pred["watch"])  # regression: values, not probabilities
    assert off.training  # the model's mode is restored
    on = build_model("mmoe", s, dict(small, dropout=0.3, expert_dropout=0.0))
    _, v = mc_dropout_predict(on, tabs["valid"], n_passes=8)
    assert (v["click"] > 0).float().mean() > 0.95 and (v["watch"] > 0).float().mean() > 0.95
    # expert dropout alone is a dropout too
    ex = build_model("mmoe", s, dict(small, dropout=0.0, expert_dropout=0.3))
    _, v = mc_dropout_predict(ex, tabs["valid"], n_passes=8)
    assert (v["click"] > 0).float().mean() > 0.9


def test_variance_is_the_variance_of_the_passes(data):
    s, tabs = data
    m = build_model("mmoe", s, {"embed_dim": 4, "hidden": [16], "tower_hidden": [8], "dropout": 0.3,
                                "expert_dropout": 0.0})
    mean, var = mc_dropout_predict(m, tabs["valid"], n_passes=6, batch_size=10_000, seed=7)
    torch.manual_seed(7)
    m.eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.train()
    b = tabs["valid"].full()
    with torch.no_grad():
        ps = torch.stack([torch.sigmoid(m(b)["click"]) for _ in range(6)]).double()
    torch.testing.assert_close(mean["click"], ps.mean(0).float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(var["click"], ps.var(0, unbiased=False).float(), atol=1e-7, rtol=1e-4)
    # batch norm stays in eval mode: a row's MC passes do not depend on its batch
    m2 = build_model("mmoe", s, {"embed_dim": 4, "hidden": [16], "batch_norm": True, "expert_dropout": 0.0})
    a, _ = mc_dropout_predict(m2, tabs["valid"], 2, batch_size=7, strict=False)
    b2, _ = mc_dropout_predict(m2, tabs["valid"], 2, batch_size=10_000, strict=False)
    torch.testing.assert_close(a["click"], b2["click"])


def test_aleatoric_variance_is_added_for_regression(data):
    s, tabs = data
    m = build_model("mmoe", s, {"embed_dim": 4, "hidden": [16], "expert_dropout": 0.0, "aleatoric": True})
    _, var = mc_dropout_predict(m, tabs["valid"], n_passes=3)
    m.eval()
    with torch.no_grad():
        m(tabs["valid"].full())
    torch.testing.assert_close(var["watch"], torch.exp(m.last_log_var["watch"]))  # no dropout: σ̂² only
    assert torch.equal(var["click"], torch.zeros_like(var["click"]))


def test_report(data):
    s, tabs = data
    m = build_model("mmoe", s, {"embed_dim": 4, "hidden": [16], "dropout": 0.2})
    rep = mc_dropout_report(m, tabs["test"], n_passes=4)
    assert rep["n_passes"] == 4
    assert set(rep["ece"]) == {"click"} and set(rep["rmse"]) == {"watch"}
    assert {"all", "domain=a", "domain=b", "domain=c"} <= set(rep["ece"]["click"])
    assert rep["mc_variance"]["click"]["all"] > 0
    mean, _ = mc_dropout_predict(m, tabs["test"], 4)
    assert rep["ece"]["click"]["all"] == pytest.approx(ece(mean["click"], tabs["test"].labels["click"]))
