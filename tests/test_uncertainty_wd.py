"""Kendall uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): the learned log-variances
``s_t = log σ_t²`` get NO weight decay, even when ``trainer.weight_decay > 0`` (decay would pull every σ_t
towards 1 whatever the task losses say).

Weight decay alone is isolated by one optimiser step with an all-zero gradient: Adam and SGD then move a
parameter only through its (coupled) L2 term, AdamW only through its decoupled decay. The log-variances
start away from 0 (at 0 an L2 term is itself 0 and the check would be vacuous)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dynarec.train.config import TrainerConfig
from dynarec.models import build_model
from dynarec.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
from test_conformance import small_params  # noqa: E402

OPTIMIZERS = ["adam", "adamw", "sgd"]


def _zero_grad_step(small_synth, dense_optimizer: str):
    """(trainer, log-variances before, a dense model weight before) after one zero-gradient step."""
    schema, _, _ = small_synth
    torch.manual_seed(0)
    model = build_model("dnn", schema, small_params("dnn"))
    cfg = TrainerConfig(lr=0.1, weight_decay=0.5, dense_optimizer=dense_optimizer, progress=False)
    trainer = Trainer(model, cfg, seed=0, task_weighting="uncertainty")
    log_vars = trainer.weighting.log_vars
    with torch.no_grad():
        log_vars.copy_(torch.linspace(-0.8, 0.6, log_vars.numel()))
    weight = next(p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2
                  and not n.startswith("tables."))
    before = (log_vars.detach().clone(), weight.detach().clone())
    table_ids = {id(p) for p in model.tables.parameters()}
    for p in list(model.parameters()) + list(trainer.weighting.parameters()):
        p.grad = None if id(p) in table_ids else torch.zeros_like(p)
    for o in trainer.optimizers:
        o.step()
    return trainer, before, weight


@pytest.mark.parametrize("dense_optimizer", OPTIMIZERS)
def test_weight_decay_reaches_the_models_dense_weights(small_synth, dense_optimizer):
    """Control for the check below: the zero-gradient step does apply the configured decay to the model."""
    _, (_, w0), weight = _zero_grad_step(small_synth, dense_optimizer)
    assert not torch.equal(weight.detach(), w0)


@pytest.mark.parametrize("dense_optimizer", OPTIMIZERS)
def test_kendall_log_variances_get_no_weight_decay(small_synth, dense_optimizer):
    trainer, (s0, _), _ = _zero_grad_step(small_synth, dense_optimizer)
    assert torch.equal(trainer.weighting.log_vars.detach(), s0), \
        f"{dense_optimizer}: weight decay alone moved log σ² from {s0.tolist()} to {trainer.weighting.log_vars.tolist()}"
