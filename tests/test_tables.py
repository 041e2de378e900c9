"""The table collection: every id-indexed table of a model, its optimizer group, the gradient form, and
old checkpoints (keys from before the collection) still loading."""
import pytest
import torch

from dynarec.train.config import TrainerConfig
from dynarec.models import build_model
from dynarec.tables import TableCollection, TableSpec
from dynarec.train import optim

SMALL = {"hidden": [16], "embed_dim": 4}


def test_spec_init_and_group():
    tc = TableCollection()
    z = tc.add(TableSpec("z", 5, 3, 0.0, "dense"))
    n = tc.add(TableSpec("n", 400, 3, 1e-3, "embedding"))
    assert torch.equal(z.weight, torch.zeros(5, 3)) and n.weight.std() < 1e-2
    assert n.sparse and not z.sparse
    assert tc.parameters_of("embedding") == [n.weight] and tc.parameters_of("dense") == [z.weight]
    with pytest.raises(ValueError):
        tc.add(TableSpec("z", 2, 2))
    with pytest.raises(ValueError):
        TableSpec("bad", 2, 2, group="sparse")


def test_gradient_form_is_set_on_the_embedding_group_only():
    tc = TableCollection()
    e, d = tc.add(TableSpec("e", 4, 2, None, "embedding")), tc.add(TableSpec("d", 4, 2))
    tc.set_gradient_form(dense=True)
    assert not e.sparse and not d.sparse
    tc.set_gradient_form(dense=False)
    assert e.sparse and not d.sparse


@pytest.mark.parametrize("name,emb_group,dense_group", [
    ("wdl", {"features", "first_order"}, set()),
    ("can", {"features", "can_induction", "can_feed"}, set()),
    ("ppnet", {"features"}, {"prior"}),
    ("m2m", {"features"}, {"m2m_task"}),
    ("apg_dnn", {"features"}, {"apg_domain"}),
    ("mmoe", {"features"}, {"position", "position_x0"}),
])
def test_optimizer_groups_come_from_the_collection(small_synth, name, emb_group, dense_group):
    schema, _, _ = small_synth
    params = dict(SMALL)
    if name == "mmoe":
        pos, cross = [f.name for f in schema.sparse[-2:]]
        params.update(position_tower=True, position_feature=pos, position_cross=[cross])
    if name == "apg_dnn":
        params.update(rank_k=4, overparam_p=8)
    model = build_model(name, schema, params)
    specs = model.tables.specs
    assert {n for n, s in specs.items() if s.group == "embedding"} == emb_group
    assert {n for n, s in specs.items() if s.group == "dense"} == dense_group
    tables, dense = optim.split_parameters(model)
    assert {id(p) for p in tables} == {id(model.tables[n].weight) for n in emb_group}
    assert all(id(model.tables[n].weight) in {id(p) for p in dense} for n in dense_group)
    # the trainer's gradient form reaches only the collection's embedding group
    optim.build_optimizers(model, TrainerConfig(embedding_grad="dense"))
    assert not any(model.tables[n].sparse for n in specs)
    optim.build_optimizers(model, TrainerConfig(embedding_grad="sparse"))
    assert all(model.tables[n].sparse == (n in emb_group) for n in specs)


def test_old_checkpoint_keys_still_load(small_synth, tmp_path):
    """A state_dict with the keys written before the collection (embedding.weight.weight, wide.table...)."""
    from dynarec.train.checkpoint import load_checkpoint, save_checkpoint

    schema, tables, _ = small_synth
    torch.manual_seed(0)
    model = build_model("wdl", schema, SMALL).eval()
    old = {"tables.features.weight": "embedding.weight.weight", "tables.first_order.weight": "wide.table.weight.weight"}
    sd = {old.get(k, k): v for k, v in model.state_dict().items()}
    assert "embedding.weight.weight" in sd and "tables.features.weight" not in sd
    save_checkpoint(tmp_path, model, SMALL)
    blob = torch.load(tmp_path / "model.pt", weights_only=False)
    blob["state_dict"] = sd
    torch.save(blob, tmp_path / "model.pt")
    loaded, _ = load_checkpoint(tmp_path)
    batch = tables["test"].take(torch.arange(32))
    with torch.no_grad():
        for t, v in model(batch).items():
            assert torch.equal(v, loaded(batch)[t])
