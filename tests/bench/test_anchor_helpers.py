"""The anchor comparison's own helpers that run without the anchors installed: the FLOP count behind the
table's ceiling column, FuxiCTR's Linear re-initialisation, and the dynarec variants' trainer keys."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

ANCHORS = Path(__file__).resolve().parents[2] / "benchmarks" / "anchors"
sys.path.insert(0, str(ANCHORS))

from common import train_flops_per_row  # noqa: E402
from run import VARIANTS, xavier_linears  # noqa: E402

from dynarec.models import build_model  # noqa: E402
from dynarec.train.optim import EMBEDDING_OPTIMIZERS  # noqa: E402


def test_train_flops_per_row_is_six_times_the_mlp_macs(small_synth):
    """Forward 2·MAC plus backward 4·MAC (input and weight gradients) for every Linear of a DNN (the first
    layer's input gradient is computed too: it flows on to the embedding tables)."""
    schema, tables, _ = small_synth
    model = build_model("dnn", schema, {"hidden": [16, 8]})
    macs = model.input_dim * 16 + 16 * 8 + len(schema.task_names) * 8  # MLP + one logit head per task
    batch = tables["train"].take(torch.arange(64))
    assert train_flops_per_row(model, batch) == 6 * macs
    assert all(p.grad is None for p in model.parameters())  # it leaves no gradients behind


def test_xavier_linears_matches_fuxictr_init_for_linears_and_experts(small_synth):
    schema, _, _ = small_synth
    torch.manual_seed(0)
    model = build_model("mmoe", schema, {"hidden": [256, 128], "num_experts": 2})
    xavier_linears(model)
    for m in model.modules():
        if type(m) is torch.nn.Linear and m.weight.numel() > 5000:
            fan_out, fan_in = m.weight.shape
            assert abs(m.weight.std().item() / math.sqrt(2 / (fan_in + fan_out)) - 1) < 0.05
            assert not m.bias.any()
    w = model.mmoe.experts.weights[1]
    assert abs(w.std().item() / math.sqrt(2 / (w.shape[1] + w.shape[2])) - 1) < 0.05
    assert not any(b.any() for b in model.mmoe.experts.biases)


def test_every_variant_names_a_real_table_optimizer():
    assert {"default", "matched", "exact", "dense_init"} <= set(VARIANTS)
    for emb_opt, init_std, _ in VARIANTS.values():
        assert emb_opt is None or emb_opt in EMBEDDING_OPTIMIZERS
        assert init_std is None or 0 < init_std < 1
