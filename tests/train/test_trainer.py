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
    from dynarec.config import TrainerConfig
    from dynarec.train.trainer import Trainer

    model = build_model("mmoe", schema, {"hidden": [16], "num_experts": 2})
    sparse, dense = split_parameters(model)
    assert sparse == [model.embedding.weight.weight]
    tr = Trainer(model, TrainerConfig(**FAST))
    kinds = {type(o).__name__: o for o in tr.optimizers}
    assert set(kinds) == {"Adagrad", "Adam"}
    assert kinds["Adagrad"].param_groups[0]["params"] == sparse
    before = model.embedding.weight.weight.detach().clone()
    tr._step(tables["train"].take(torch.arange(64)))
    assert model.embedding.weight.weight.grad.is_sparse
    assert not torch.equal(before, model.embedding.weight.weight)


def test_early_stopping_reloads_the_best_epoch(small_synth, tmp_path):
    schema, tables, _ = small_synth
    r = train_model("dnn", schema, tables, {"hidden": [32]},
                    {"epochs": 6, "batch_size": 256, "lr": 0.05, "patience": 1, "progress": False}, seed=0, out=tmp_path)
    scores = [e["valid_auc"] for e in r.history.epochs]
    assert r.history.best_epoch == 1 + scores.index(max(scores))
    # the model we hold is the best epoch's: its valid AUC equals the best score
    m = evaluate_model(r.model, tables["valid"])
    assert abs(m["auc"]["click"]["all"] - max(scores)) < 1e-9
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
