"""Numeric embeddings through the shared embedding path (issue 13): a schema with one ``embedding: ple`` and
one ``embedding: plr`` dense feature; every registered model builds, trains, gets gradients into the
numeric-embedding parameters, keeps batch independence and round-trips save -> load."""
from __future__ import annotations

import pytest
import torch

from dynarec.data.prepare import prepare_table
from dynarec.data.synthetic import generate, synthetic_schema
from dynarec.models import list_models
from tests.models.test_conformance import _build, _warm, check_batch_independence, check_gradient_reach, \
    small_params


@pytest.fixture(scope="module")
def num_data():
    t, _ = generate(4000, 0)
    schema = synthetic_schema()
    schema.feature("user_activity").embedding = "ple"
    schema.feature("user_activity").bins = 8
    schema.feature("item_price").embedding = "plr"
    schema.feature("item_price").sigma = 0.5
    return schema, prepare_table(t, schema, None, "random", seed=0)


def test_edges_fitted_on_train_in_model_units(num_data):
    schema, tables = num_data
    f = schema.feature("user_activity")
    col = [x.name for x in schema.dense].index("user_activity")
    x = tables["train"].dense[:, col].double()
    q = torch.unique(torch.quantile(x, torch.linspace(0, 1, 9, dtype=torch.float64)))
    assert 2 <= len(f.ple_edges) <= 9
    torch.testing.assert_close(torch.tensor(f.ple_edges, dtype=torch.float64), q, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [m.name for m in list_models()])
def test_every_model_gets_numeric_fields(num_data, name, tmp_path):
    from dynarec.train.checkpoint import load_checkpoint, save_checkpoint

    schema, tables = num_data
    model = _build(name, schema, {})
    n_id = model.embedding.num_fields
    assert model.num_fields == n_id + 2
    b = tables["train"].take(torch.arange(8))
    emb = model.embed(b)
    assert emb.shape == (8, n_id + 2, small_params(name)["embed_dim"])
    # the last two fields are the numeric embeddings of user_activity (ple) then item_price (plr)
    b2 = tables["train"].take(torch.arange(8))
    b2.dense[:, 1] += 5.0  # item_price only
    e2 = model.embed(b2)
    assert torch.equal(e2[:, :n_id + 1], emb[:, :n_id + 1]) and not torch.equal(e2[:, -1], emb[:, -1])
    _warm(model, tables["train"])
    check_gradient_reach(model, tables["train"], name)  # includes numeric_fields.* parameters
    assert any(n.startswith("numeric_fields.") for n, _ in model.named_parameters())
    check_batch_independence(model, tables["test"], name)
    batch = tables["test"].take(torch.arange(64))
    model.eval()
    with torch.no_grad():
        ref = model(batch)
    save_checkpoint(tmp_path, model, small_params(name))
    loaded, _ = load_checkpoint(tmp_path, merge=False)
    loaded.eval()
    with torch.no_grad():
        got = loaded(batch)
    for t in ref:
        assert torch.equal(ref[t], got[t]), f"{name}/{t}: outputs changed after save -> load"


@pytest.mark.parametrize("name", ["dnn", "pepnet"])
def test_export_takes_the_same_dense_input(num_data, name):
    from dynarec.serve.export import TensorEntry, batch_inputs, example_batch, export_program, input_spec

    schema, tables = num_data
    model = _build(name, schema, {})
    _warm(model, tables["train"])
    entry = TensorEntry(model).eval()
    program = export_program(entry, batch_inputs(schema, example_batch(schema, 7)))
    dense = [s for s in input_spec(schema) if s["name"] == "dense"]
    assert dense and program.module() is not None
    for n in (1, 33):
        args = batch_inputs(schema, example_batch(schema, n, seed=n))
        with torch.no_grad():
            ref, got = entry(*args), program.module()(*args)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


def test_ple_without_fitted_edges_is_a_config_error():
    from dynarec.errors import ConfigError

    schema = synthetic_schema()
    schema.feature("user_activity").embedding = "ple"
    schema.feature("domain").vocab_size = 3
    with pytest.raises(ConfigError, match="feature 'user_activity': embedding: ple needs bin edges"):
        _build("dnn", schema, {})
