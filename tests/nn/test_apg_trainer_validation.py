"""The trainer's per-epoch validation metric of an APG v5 model is the metric of that epoch's weights.

An eval-mode cache of ``U_l U_r`` / ``V_l V_r`` keyed on the factors' version counters went stale under
torch's fused CPU Adam (used by the trainer), which updates parameters without bumping their versions:
every validation pass after the first scored an earlier epoch's weights. The validation table below
snapshots the model's state each time the trainer evaluates on it (no trainer hook needed); each snapshot
is then loaded into a freshly built model and scored independently with ``evaluate_model``.
"""
from __future__ import annotations

import copy

import pytest
import torch

from dynarec.train.config import TrainerConfig
from dynarec.data.table import TensorTable
from dynarec.metrics import evaluate_model
from dynarec.models import build_model
from dynarec.train.trainer import Trainer

SMALL = {"embed_dim": 4, "hidden": [16, 8], "rank_k": 4, "overparam_p": 16, "hypernet_hidden": [8]}


class SnapshotTable(TensorTable):
    """A validation table that records ``model.state_dict()`` whenever it is iterated in order."""

    def __init__(self, table: TensorTable, model: torch.nn.Module):
        self.__dict__.update(table.__dict__)
        self.model, self.states = model, []

    def batches(self, batch_size, shuffle=False, generator=None):
        if not shuffle:
            self.states.append(copy.deepcopy(self.model.state_dict()))
        return super().batches(batch_size, shuffle, generator)


@pytest.mark.parametrize("name,params", [
    ("apg_dnn", {"version": "v5"}),  # group-wise on the domain: the one-matmul-per-group path
    ("apg_dnn", {"version": "v5", "condition_mode": "self-wise"}),  # the per-row path
])
def test_logged_validation_metric_equals_independent_evaluation(small_synth, name, params):
    schema, tables, _ = small_synth
    p = {**SMALL, **params}
    torch.manual_seed(0)
    model = build_model(name, schema, p)
    valid = SnapshotTable(tables["valid"], model)
    cfg = TrainerConfig(lr=1e-2, embedding_lr=0.1, epochs=3, patience=10, progress=False)
    trainer = Trainer(model, cfg, seed=0)
    assert any(o.defaults.get("fused") for o in trainer.optimizers), "the trainer's dense Adam should be fused"
    hist = trainer.fit(tables["train"], valid)
    assert len(hist.epochs) == 3 and len(valid.states) == 3
    for row, state in zip(hist.epochs, valid.states):
        fresh = build_model(name, schema, p)
        fresh.load_state_dict(state)
        m = evaluate_model(fresh, tables["valid"], cfg.eval_batch_size)
        for t in model.tasks:
            assert row[f"valid_auc_{t}"] == m["auc"][t]["all"], f"epoch {row['epoch']} task {t}"
            assert row[f"valid_logloss_{t}"] == m["logloss"][t]["all"], f"epoch {row['epoch']} task {t}"
    # the weights really moved between epochs (else the check above would be vacuous)
    assert hist.epochs[1]["valid_logloss_" + model.tasks[0]] != hist.epochs[2]["valid_logloss_" + model.tasks[0]]
