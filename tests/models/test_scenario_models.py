"""Model-level properties of star, m2m and can (SPEC §2.8-2.10, §4) on small synthetic data."""
import pytest
import torch

from dynarec.data.prepare import synthetic_tables
from dynarec.errors import ConfigError
from dynarec.models import build_model, get_model_info

SMALL = {
    "star": {"embed_dim": 4, "hidden": [16, 8], "aux_hidden": [8]},
    "m2m": {"embed_dim": 4, "hidden": [16, 8], "num_experts": 3, "meta_widths": [8, 8], "scenario_hidden": [6],
            "task_hidden": [6]},
    "can": {"embed_dim": 4, "hidden": [16, 8], "weight_emb_w": [[4, 3], [3, 2]]},
}


@pytest.fixture(scope="module")
def data():
    schema, tables, _ = synthetic_tables(1500, seed=0)
    return schema, tables["train"]


def _model(name, schema, **kw):
    torch.manual_seed(0)
    return build_model(name, schema, {**SMALL[name], **kw})


def _trained(model, table, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i, b in zip(range(steps), table.batches(256, shuffle=True, generator=torch.Generator().manual_seed(0))):
        out = model(b)
        loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(v, b.labels[k]) for k, v in out.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_registered_as_multi_domain_multi_task():
    assert get_model_info("star").multi_domain and get_model_info("m2m").multi_domain
    for n in ("star", "m2m", "can"):
        assert get_model_info(n).multi_task


@pytest.mark.parametrize("name", ["star", "m2m", "can"])
def test_eval_batch_independence_and_both_tasks(name, data):
    schema, table = data
    m = _trained(_model(name, schema), table)
    b = table.take(torch.arange(64))
    with torch.no_grad():
        full = m(b)
        assert set(full) == {"click", "conversion"}
        perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
        permuted = m(table.take(perm))
        for r in (0, 13, 63):
            alone = m(table.take(torch.tensor([r])))
            for t in full:
                torch.testing.assert_close(alone[t], full[t][r:r + 1], atol=1e-6, rtol=1e-6)
        for t in full:
            torch.testing.assert_close(permuted[t], full[t][perm], atol=1e-6, rtol=1e-6)


# ---- STAR ---------------------------------------------------------------------------------------
def test_star_eval_row_output_ignores_other_domains_in_batch(data):
    schema, table = data
    m = _trained(_model("star", schema, pn_hidden=True), table, steps=5)
    dom = table.domain
    r = int(torch.nonzero(dom == 2)[0])
    same = torch.nonzero(dom == 2).flatten()[:20]
    other = torch.nonzero(dom == 1).flatten()[:20]
    with torch.no_grad():
        a = m(table.take(torch.cat([same, torch.tensor([r])])))["click"][-1]
        b = m(table.take(torch.cat([other, torch.tensor([r])])))["click"][-1]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_star_without_aux_is_the_main_net_and_logit_has_no_activation(data):
    schema, table = data
    m = _model("star", schema).eval()
    b = table.take(torch.arange(32))
    with torch.no_grad():
        last = [x for x in m.aux_net.net if isinstance(x, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.zero_()  # s_aux = 0
        out = m(b)
        main = m.main_logits(b)
        for i, t in enumerate(m.tasks):
            torch.testing.assert_close(out[t], main[:, i])
        m.fcn.out.bias.fill_(-30.0)
        assert (m(b)["click"] < 0).all()  # a ReLU on the logit could never give this (SPEC §4)


def test_star_only_present_domains_get_gradient_and_params_are_registered(data):
    schema, table = data
    m = _model("star", schema).train()
    idx = torch.nonzero((table.domain == 1) | (table.domain == 3)).flatten()[:64]
    out = m(table.take(idx))
    (out["click"].sum() + out["conversion"].sum()).backward()
    names = dict(m.named_parameters())
    assert "fcn.layers.0.domain_weight" in names and "pn.domain_weight" in names
    g = m.fcn.layers[0].domain_weight.grad.abs().sum((1, 2))
    assert (g[[1, 3]] > 0).all()
    assert (g[[d for d in range(m.num_domains) if d not in (1, 3)]] == 0).all()


def test_star_task_towers_and_modes_agree(data):
    schema, table = data
    b = table.take(torch.arange(40))
    a = _model("star", schema, task_towers=True, star_mode="group").eval()
    g = _model("star", schema, task_towers=True, star_mode="gather").eval()
    g.load_state_dict(a.state_dict())
    assert set(a.towers) == {"click", "conversion"}
    with torch.no_grad():
        oa, og = a(b), g(b)
    for t in oa:
        torch.testing.assert_close(oa[t], og[t], atol=1e-5, rtol=1e-5)


def test_star_config_errors(data):
    schema, _ = data
    with pytest.raises(ConfigError, match="star_mode"):
        _model("star", schema, star_mode="loop")
    with pytest.raises(ConfigError, match="batch_norm"):
        _model("star", schema, batch_norm=True)
    with pytest.raises(ConfigError, match="position"):
        _model("star", schema, aux_groups=["position"])


# ---- M2M ----------------------------------------------------------------------------------------
def test_m2m_generated_weights_follow_scenario_features(data):
    schema, table = data
    m = _model("m2m", schema).eval()
    b = table.take(torch.tensor([0, 0, 0]))
    pos = {f.name: k for k, f in enumerate(schema.sparse)}
    b.sparse[1, pos["item_id"]] = (b.sparse[0, pos["item_id"]] % 50) + 1  # other item, same scenario + user
    b.sparse[2, pos["domain"]] = b.sparse[0, pos["domain"]] % (schema.num_domains - 1) + 1  # other scenario
    assert b.sparse[2, pos["domain"]] != b.sparse[0, pos["domain"]]
    with torch.no_grad():
        s = m.scenario_summary(m.embed(b))
        (w, bias), _ = m.attention["click"].meta.generate(s)
    torch.testing.assert_close(w[0], w[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bias[0], bias[1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(w[0], w[2], atol=1e-5)
    # the item still matters, through the experts
    with torch.no_grad():
        ex = m.expert_outputs(b, m.embed(b))
    assert not torch.allclose(ex[0], ex[1], atol=1e-7)


def test_m2m_attention_is_a_distribution_per_task(data):
    schema, table = data
    m = _model("m2m", schema).eval()
    with torch.no_grad():
        m(table.take(torch.arange(16)))
    for t in m.tasks:
        a = m.last_attention[t]
        assert a.shape == (16, 3)
        torch.testing.assert_close(a.sum(1), torch.ones(16))


def test_m2m_sequence_changes_only_its_own_row(data):
    schema, table = data
    m = _model("m2m", schema).eval()
    b = table.take(torch.arange(8))
    with torch.no_grad():
        before = m(b)["click"]
        name = schema.sequences[0].name
        b.sequences[name][3] = torch.arange(1, b.sequences[name].shape[1] + 1)
        after = m(b)["click"]
    assert not torch.allclose(after[3], before[3], atol=1e-6)
    keep = [i for i in range(8) if i != 3]
    torch.testing.assert_close(after[keep], before[keep], atol=1e-6, rtol=1e-6)


def test_m2m_config_errors(data):
    schema, _ = data
    with pytest.raises(ConfigError, match="seq_heads"):
        _model("m2m", schema, embed_dim=5)
    with pytest.raises(ConfigError, match="meta_widths"):
        _model("m2m", schema, meta_widths=[])


# ---- CAN ----------------------------------------------------------------------------------------
def test_can_coaction_depends_on_user_and_item(data):
    schema, table = data
    m = _model("can", schema).eval()
    pos = {f.name: k for k, f in enumerate(schema.sparse)}
    b = table.take(torch.tensor([0, 0, 0]))
    b.sparse[1, pos["item_id"]] = b.sparse[0, pos["item_id"]] % 50 + 1
    b.sparse[2, pos["user_id"]] = b.sparse[0, pos["user_id"]] % 50 + 1
    with torch.no_grad():
        co = m.coaction(b)
    assert co.shape == (3, m.coaction_dim) and m.coaction_dim == 2 * 3 * 3 * (3 + 2)  # I·J·orders·Σw
    assert not torch.allclose(co[0], co[1], atol=1e-6)
    assert not torch.allclose(co[0], co[2], atol=1e-6)


def test_can_zero_item_params_contribute_nothing(data):
    schema, table = data
    m = _model("can", schema).eval()
    b = table.take(torch.arange(10))
    with torch.no_grad():
        m.induction_table.weight.zero_()
        assert torch.equal(m.coaction(b), torch.zeros(10, m.coaction_dim))
        # and then the feed side is irrelevant to the prediction
        before = m(b)["click"]
        m.feed_table.weight.normal_()
        torch.testing.assert_close(m(b)["click"], before)


def test_can_tables_are_its_own_and_sized_by_the_micro_mlp(data):
    schema, _ = data
    m = _model("can", schema, weight_emb_w=[[16, 8], [8, 4]], orders=3)
    assert m.induction_table.weight.shape[1] == 160 and m.feed_table.weight.shape[1] == 16
    assert m.induction_table.sparse and m.feed_table.sparse
    fused = m.embedding.weight.weight
    for t in (m.induction_table.weight, m.feed_table.weight):
        assert t.untyped_storage().data_ptr() != fused.untyped_storage().data_ptr()
    n_item = sum(max(f.vocab_size, 1) for f in schema.sparse if f.group == "item")
    assert m.induction_table.weight.shape[0] == n_item
    indep = _model("can", schema, weight_emb_w=[[16, 8], [8, 4]], orders=3, order_indep=True)
    assert indep.induction_table.weight.shape[1] == 480


def test_can_config_errors(data):
    schema, _ = data
    with pytest.raises(ConfigError, match="chain"):
        _model("can", schema, weight_emb_w=[[4, 3], [2, 2]])
    with pytest.raises(ConfigError, match="position"):
        _model("can", schema, feed_groups=["position"])
