"""The experiment layer: one table of model kinds drives train / evaluate / predict, and a ranking checkpoint
is evaluated by the Predictor (the same summary). Retrieval checkpoints: tests/retrieval/test_experiment_kind.py."""
import json

import pytest

from dynarec.errors import DynarecError
from dynarec.experiment import KINDS, evaluate_checkpoint, kind_of, load_experiment
from dynarec.models.registry import KINDS as REGISTERED_KINDS
from dynarec.models.registry import list_models


def test_every_registered_kind_has_its_verbs_and_every_model_one_kind():
    assert set(KINDS) == set(REGISTERED_KINDS)
    for info in list_models(None):
        assert kind_of(info.name) == info.kind and info.kind in KINDS
    assert kind_of("two_tower") == kind_of("popularity") == "retrieval" and kind_of("dnn") == "ranking"


@pytest.fixture(scope="module")
def ranking_run(tmp_path_factory):
    from dynarec.data.prepare import write_synthetic
    from dynarec.experiment import train_experiment

    root = tmp_path_factory.mktemp("exp")
    write_synthetic(root / "d", 600, seed=0)
    cfg = load_experiment(None, {"model": "dnn", "data.path": str(root / "d"), "out": str(root / "run"),
                                 "trainer.epochs": 1}, ["model.hidden=[4]", "trainer.progress=false"])
    train_experiment(cfg)
    return root


def test_ranking_checkpoint_is_evaluated_by_the_predictor(ranking_run):
    from dynarec.serve.predictor import Predictor

    got = evaluate_checkpoint(ranking_run / "run", ranking_run / "d", "valid")
    want = Predictor.load(ranking_run / "run").evaluate(ranking_run / "d", "valid")
    assert got.pop("domain") == "domain"  # the schema's domain column, for the CLI's unseen-domain warning
    assert json.dumps(got, sort_keys=True, default=str) == json.dumps(want, sort_keys=True, default=str)
    with pytest.raises(DynarecError, match="--mc-dropout"):
        evaluate_checkpoint(ranking_run / "run", ranking_run / "d", None, -1)
