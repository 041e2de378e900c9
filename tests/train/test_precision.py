"""trainer.precision: bf16 on CPUs with native bfloat16 (detection monkeypatched: both branches run on any
CPU, CPU autocast works everywhere, only slowly without AMX / AVX512-BF16); fp32 and a one-line note
elsewhere."""
from __future__ import annotations

import pytest
import torch

from dynarec.errors import ConfigError
from dynarec.train import precision
from dynarec.train.config import TrainerConfig

CPU = torch.device("cpu")


def test_detection_reads_torch_cpu_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "avx512_bf16": False})
    assert precision.cpu_bf16_flags() == ["amx_bf16"]
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert precision.cpu_bf16_flags() == []


def test_bf16_without_native_support_is_fp32_and_one_note(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    notes = []
    assert precision.resolve_precision("bf16", CPU, notes.append) == "fp32"
    assert len(notes) == 1 and "\n" not in notes[0] and "AMX-BF16" in notes[0] and "fp32" in notes[0]
    assert precision.resolve_precision("fp32", CPU, notes.append) == "fp32" and len(notes) == 1
    with pytest.raises(ConfigError, match="trainer.precision: expected fp32 \\| bf16, got 'fp16'"):
        precision.resolve_precision("fp16", CPU)


def test_bf16_with_native_support_is_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    notes = []
    assert precision.resolve_precision("BF16", CPU, notes.append) == "bf16" and notes == []


def _trainer(small_synth, monkeypatch, flags, **cfg):
    from dynarec.models import build_model
    from dynarec.train.trainer import Trainer

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    torch.manual_seed(0)
    model = build_model("mmoe", small_synth[0], {"hidden": [16, 8], "num_experts": 2})
    return model, Trainer(model, TrainerConfig(device="cpu", progress=False, precision="bf16", batch_size=256, **cfg))


def test_bf16_step_autocasts_gemms_keeps_weights_state_tables_losses_fp32(small_synth, monkeypatch):
    model, tr = _trainer(small_synth, monkeypatch, ["amx_bf16"])
    assert tr.precision == "bf16"
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=n: seen.update({name: o.dtype}) and None)
             for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    batch = small_synth[1]["train"].take(torch.arange(256))
    out = tr.step.forward(batch)
    assert seen and set(seen.values()) == {torch.bfloat16}  # the dense GEMMs ran in bf16
    assert all(v.dtype == torch.float32 for v in out.values())  # the losses are computed on float32 logits
    for h in hooks:
        h.remove()
    loss = tr._step(batch)
    assert isinstance(loss, float)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights and tables
    for o in tr.optimizers:
        for st in o.state.values():
            assert all(v.dtype == torch.float32 for v in st.values() if torch.is_tensor(v) and v.is_floating_point())
    from dynarec.metrics import predict_table
    preds = predict_table(model, small_synth[1]["valid"], 4096)
    assert all(p.dtype.name == "float64" for p in preds.values())  # metrics from fp32 (eval is not autocast)


def test_bf16_request_on_plain_cpu_trains_in_fp32(small_synth, monkeypatch, capsys):
    model, tr = _trainer(small_synth, monkeypatch, [])
    err = capsys.readouterr().err.strip().splitlines()
    assert tr.precision == "fp32" and tr.step.forward.precision == "fp32"
    assert len(err) == 1 and err[0].startswith("note: trainer.precision: bf16")
    seen = []
    h = model.mmoe.gates[0].linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype) and None)
    tr._step(small_synth[1]["train"].take(torch.arange(256)))
    h.remove()
    assert seen == [torch.float32]
