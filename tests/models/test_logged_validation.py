"""Registry-wide: the validation metric the trainer LOGS for every epoch equals an independent evaluation of
that epoch's weights loaded into a freshly built model (catches stale inference caches such as APG v5's, which
torch's fused Adam never invalidated)."""
from __future__ import annotations

import copy

import pytest
import torch

from dynarec.train.config import TrainerConfig
from dynarec.metrics import evaluate_model
from dynarec.train.loop import Callback
from dynarec.train.trainer import Trainer

from test_conformance import CASES, _build  # noqa: E402


class _Snapshot(Callback):
    def __init__(self):
        self.states = []

    def on_epoch_end(self, loop, row):
        self.states.append((copy.deepcopy(loop.model.state_dict()), dict(row)))


@pytest.mark.parametrize("name,params", [c.values for c in CASES], ids=[c.id for c in CASES])
def test_logged_valid_metric_equals_an_independent_evaluation(name, params, small_synth):
    schema, tables, _ = small_synth
    train, valid = tables["train"].subset(torch.arange(1024)), tables["valid"]
    model = _build(name, schema, params)
    snap = _Snapshot()
    cfg = TrainerConfig(epochs=2, batch_size=256, lr=1e-2, embedding_lr=0.1, patience=5, progress=False)
    Trainer(model, cfg, seed=0).fit(train, valid, callbacks=[snap])
    assert len(snap.states) == 2
    for state, row in snap.states:
        fresh = _build(name, schema, params)
        fresh.prepare_for_load(state)
        fresh.load_state_dict(state)
        m = evaluate_model(fresh, valid)
        for task in model.tasks:
            assert row[f"valid_auc_{task}"] == pytest.approx(m["auc"][task]["all"], abs=1e-6), (row["epoch"], task)
