import re

import pytest
import torch

from dynarec.metrics import auc, evaluate_model
from dynarec.models import build_model
from dynarec.train.checkpoint import load_checkpoint
from dynarec.train.optim import split_parameters
from dynarec.train.run import train_model

FAST = {"epochs": 1, "batch_size": 512, "progress": False}


def test_same_seed_identical_metrics_other_seed_different(small_synth):
    schema, tables, _ = small_synth
    a = train_model("dnn", schema, tables, {"hidden": [32]}, FAST, seed=1)
    b = train_model("dnn", schema, tables, {"hidden": [32]}, FAST, seed=1)
    c = train_model("dnn", schema, tables, {"hidden": [32]}, FAST, seed=2)
    assert a.metrics == b.metrics
    assert a.metrics["auc"]["click"]["all"] != c.metrics["auc"]["click"]["all"]


def test_embeddings_in_their_own_sparse_optimizer_group(small_synth):
    schema, tables, _ = small_synth
    from dynarec.train.config import TrainerConfig
    from dynarec.train.trainer import Trainer

    model = build_model("mmoe", schema, {"hidden": [16], "num_experts": 2})
    sparse, dense = split_parameters(model)
    assert sparse == [model.embedding.weight.weight]
    tr = Trainer(model, TrainerConfig(**FAST, embedding_grad="sparse"))
    kinds = {type(o).__name__: o for o in tr.optimizers}
    assert set(kinds) == {"Adagrad", "Adam"}
    assert kinds["Adagrad"].param_groups[0]["params"] == sparse
    before = model.embedding.weight.weight.detach().clone()
    tr._step(tables["train"].take(torch.arange(64)))
    assert model.embedding.weight.weight.grad.is_sparse
    assert not torch.equal(before, model.embedding.weight.weight)


@pytest.mark.parametrize("opt", ["adagrad", "sgd"])
def test_dense_table_gradients_give_the_same_update_as_sparse(small_synth, opt):
    """For Adagrad / SGD a zero gradient changes nothing, so dense table gradients (``embedding_grad:
    dense``, what ``auto`` picks for small tables) must train exactly like sparse ones."""
    schema, tables, _ = small_synth
    from dynarec.train.config import TrainerConfig
    from dynarec.train.trainer import Trainer

    weights, grads_sparse = {}, {}
    for grad in ("sparse", "dense"):
        torch.manual_seed(0)
        model = build_model("dnn", schema, {"hidden": [16]})
        tr = Trainer(model, TrainerConfig(**{**FAST, "embedding_optimizer": opt, "embedding_grad": grad}))
        for i in range(4):
            tr._step(tables["train"].take(torch.arange(64 * i, 64 * (i + 1))))
        grads_sparse[grad] = model.embedding.weight.weight.grad.is_sparse
        weights[grad] = model.embedding.weight.weight.detach().clone()
        # the tables stay out of gradient clipping either way
        assert not any(p is model.embedding.weight.weight for p in tr.dense_params)
    assert grads_sparse == {"sparse": True, "dense": False}
    assert torch.allclose(weights["sparse"], weights["dense"], atol=1e-6, rtol=1e-5)


def test_auto_table_gradients_dense_for_small_tables_sparse_for_large(small_synth, monkeypatch):
    schema, _, _ = small_synth
    import dynarec.train.optim as optim
    from dynarec.train.config import TrainerConfig

    model = build_model("dnn", schema, {"hidden": [16]})
    n = model.embedding.weight.weight.numel()
    cfg = TrainerConfig(**FAST)
    assert cfg.embedding_grad == "auto"
    monkeypatch.setattr(optim, "DENSE_TABLE_FLOATS", n)
    assert optim.dense_table_gradients(model, cfg)
    monkeypatch.setattr(optim, "DENSE_TABLE_FLOATS", n - 1)
    assert not optim.dense_table_gradients(model, cfg)
    assert not optim.dense_table_gradients(model, TrainerConfig(embedding_optimizer="sparse_adam"))
    # a second optimizer build on the same model still finds the (now dense) tables
    optim.build_optimizers(model, TrainerConfig(embedding_grad="dense"))
    tables, _ = optim.split_parameters(model)
    assert tables == [model.embedding.weight.weight] and model.embedding.weight.sparse
    from dynarec.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape("trainer.embedding_grad: expected auto | sparse | dense, got 'row'")):
        optim.dense_table_gradients(model, TrainerConfig(embedding_grad="row"))


def _rows_moved(model, tr, batches) -> torch.Tensor:
    """Which fused-table rows change during the LAST of ``batches`` (after the earlier ones ran)."""
    for b in batches[:-1]:
        tr._step(b)
    before = model.embedding.weight.weight.detach().clone()
    tr._step(batches[-1])
    return (model.embedding.weight.weight.detach() != before).any(1)


def test_dense_adam_on_tables_moves_rows_outside_the_batch_sparse_adam_does_not(small_synth):
    """``embedding_optimizer: adam`` is the anchors' recipe: dense gradients, so momentum keeps moving rows
    seen earlier but absent from the current batch; SparseAdam (lazy) only touches the batch's rows."""
    schema, tables, _ = small_synth
    from dynarec.train.config import TrainerConfig
    from dynarec.train.trainer import Trainer

    b1, b2 = tables["train"].take(torch.arange(0, 64)), tables["train"].take(torch.arange(64, 128))
    moved = {}
    for opt in ("sparse_adam", "adam"):
        torch.manual_seed(0)
        model = build_model("dnn", schema, {"hidden": [16]})
        tr = Trainer(model, TrainerConfig(**{**FAST, "embedding_optimizer": opt, "embedding_lr": 1e-3}))
        moved[opt] = _rows_moved(model, tr, [b1, b2])
        kinds = [type(o).__name__ for o in tr.optimizers]
        assert kinds == (["SparseAdam", "Adam"] if opt == "sparse_adam" else ["Adam", "Adam"])
        assert model.embedding.weight.weight.grad.is_sparse == (opt == "sparse_adam")
        if opt == "adam":  # the dense tables are clipped with the rest, as FuxiCTR clips every parameter
            assert any(p is model.embedding.weight.weight for p in tr.dense_params)
    emb = build_model("dnn", schema, {"hidden": [16]}).embedding
    in_b2 = torch.zeros(emb.weight.weight.shape[0], dtype=torch.bool)
    in_b2[(b2.sparse + emb.sparse_offsets).reshape(-1)] = True
    for name in emb.seq_names:
        ids = b2.sequences[name]
        in_b2[(ids[ids > 0] + emb.seq_offsets[emb.seq_names.index(name)])] = True
    assert not moved["sparse_adam"][~in_b2].any()
    assert moved["adam"][~in_b2].sum() > 0


def test_embedding_init_std_and_bad_embedding_optimizer(small_synth):
    schema, tables, _ = small_synth
    from dynarec.train.config import TrainerConfig
    from dynarec.errors import ConfigError
    from dynarec.train.trainer import Trainer

    for std in (1e-4, 1e-2):
        w = build_model("dnn", schema, {"hidden": [16], "embedding_init_std": std}).embedding.weight.weight
        assert abs(w.std().item() / std - 1) < 0.05
    with pytest.raises(ConfigError, match="trainer.embedding_optimizer.*adagrad.*adam.*got 'adamm'"):
        Trainer(build_model("dnn", schema, {"hidden": [16]}), TrainerConfig(**{**FAST, "embedding_optimizer": "adamm"}))


def test_early_stopping_reloads_the_best_epoch(small_synth, tmp_path):
    schema, tables, _ = small_synth
    r = train_model("dnn", schema, tables, {"hidden": [32]},
                    {"epochs": 6, "batch_size": 256, "lr": 0.05, "patience": 1, "progress": False}, seed=0, out=tmp_path)
    scores = [e["valid_auc"] for e in r.history.epochs]
    assert r.history.best_epoch == 1 + scores.index(max(scores))
    # the model we hold is the best epoch's: its mean valid AUC equals the best score
    m = evaluate_model(r.model, tables["valid"])
    mean = sum(m["auc"][t]["all"] for t in r.model.tasks) / len(r.model.tasks)  # valid_auc: the mean over tasks
    assert abs(mean - max(scores)) < 1e-9
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss") and len(log) == 1 + len(scores)


def test_checkpoint_is_atomic_and_reloads_identical_outputs(small_synth, tmp_path):
    schema, tables, _ = small_synth
    r = train_model("shared_bottom", schema, tables, {"hidden": [16]}, FAST, seed=0, out=tmp_path / "ck")
    assert not list((tmp_path / "ck").glob(".*tmp"))  # no temp file left behind
    model, blob = load_checkpoint(tmp_path / "ck")
    b = tables["test"].full()
    r.model.eval()
    with torch.no_grad():
        o1, o2 = r.model(b), model(b)
    for t in o1:
        assert torch.equal(o1[t], o2[t])
    assert blob["model"] == "shared_bottom" and blob["params"] == {"hidden": [16]}


def test_mmoe_reaches_95_percent_of_bayes_optimal_auc():
    """On synthetic data with known truth, MMoE's click AUC gets within 5 % of the Bayes-optimal AUC."""
    from dynarec.data.prepare import synthetic_tables

    torch.set_num_threads(2)  # the one larger training run in the suite
    schema, tables, truth = synthetic_tables(100_000, seed=0)
    bayes = auc(tables["test"].labels["click"].numpy(), truth["test"]["p_click"])
    r = train_model("mmoe", schema, tables, None,
                    {"epochs": 3, "batch_size": 1024, "lr": 2e-3, "progress": False}, seed=0)
    got = r.metrics["auc"]["click"]["all"]
    assert got >= 0.95 * bayes, (got, bayes)
