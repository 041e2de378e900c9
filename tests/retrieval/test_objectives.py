"""The registry of retrieval losses is what the two-tower model accepts and what its step runs: the
``loss`` choices are its keys, the score's default follows each loss's family, and the step's loss is the
registered objective's."""
import dataclasses

import pytest
import torch

from dynarec.models.two_tower import GRAM_LOSSES, SOFTMAX_LOSSES, TwoTowerModel
from dynarec.retrieval.objectives import OBJECTIVES, family


def test_the_model_accepts_exactly_the_registered_losses():
    f = {x.name: x for x in dataclasses.fields(TwoTowerModel.Config)}["loss"]
    assert set(f.metadata["rule"]["choices"]) == set(OBJECTIVES)
    assert set(SOFTMAX_LOSSES) | set(GRAM_LOSSES) == set(OBJECTIVES)
    assert family("softmax") == SOFTMAX_LOSSES and family("gramian") == GRAM_LOSSES


@pytest.mark.parametrize("loss", sorted(OBJECTIVES))
def test_the_step_runs_the_registered_objective(llo_folder, loss, monkeypatch):
    from dynarec.models import build_model
    from dynarec.retrieval.step import RetrievalStep
    from dynarec.retrieval.train import load_retrieval_data
    from dynarec.train.config import TrainerConfig

    schema, _, data = load_retrieval_data(llo_folder)
    m = build_model("two_tower", schema, {"loss": loss, "hidden": []})
    step = RetrievalStep(m, TrainerConfig(), data, torch.Generator().manual_seed(0))
    assert type(step.objective) is OBJECTIVES[loss]
    batch = data.train.take(torch.arange(32))
    calls = []
    real = OBJECTIVES[loss].__call__
    monkeypatch.setattr(OBJECTIVES[loss], "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    assert torch.isfinite(step.loss(batch)) and calls == [1]
