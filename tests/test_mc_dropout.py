"""MC dropout (Gal & Ghahramani, ICML 2016; as used by Kendall & Gal, NeurIPS 2017) sees every dropout of every
registered model: built with ``dropout > 0`` the MC variance is positive for every task, built with
``dropout: 0`` it is exactly 0 (``strict=False``) and refused by default (``--mc-dropout`` on such a model). STAR once used a functional ``F.dropout(x, p, self.training)`` that MC dropout
could not switch on (variance exactly 0 whatever the rate); the source scan keeps dropout in modules."""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch

from dynarec.errors import ConfigError
from dynarec.models import build_model, get_model_info, list_models
from dynarec.uncertainty import mc_dropout_predict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "models"))
from test_conformance import small_params  # noqa: E402  (the registry-wide small dimensions)

NAMES = [m.name for m in list_models()]
# variants whose only dropout is on the main path (STAR's auxiliary MLP would hide a main-path dropout MC misses)
VARIANTS = [("star", {"aux": False})]
CASES = [pytest.param(n, {}, id=n) for n in NAMES] + [
    pytest.param(n, p, id=n + "[" + ",".join(f"{k}={v}" for k, v in p.items()) + "]") for n, p in VARIANTS if n in NAMES]


def _rates(name: str, **rates: float) -> dict[str, float]:
    """Every ``*dropout`` field of the model's config (``dropout``, ``expert_dropout``, ...) at 0, except ``rates``;
    only those with an effect in the default config (``position_dropout`` needs ``position_tower``)."""
    from dynarec.models.registry import active_params

    fields = [f.name for f in dataclasses.fields(get_model_info(name).config_cls) if f.name.endswith("dropout")]
    return active_params(name, {f: rates.get(f, 0.0) for f in fields})


def _variance(name: str, schema, table, extra: dict | None = None, strict: bool = True,
              **rates: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name, schema, small_params(name, {**(extra or {}), **_rates(name, **rates)}))
    rows = table.subset(torch.arange(64))
    _, var = mc_dropout_predict(model, rows, n_passes=6, seed=0, strict=strict)
    assert set(var) == set(model.tasks)
    return var


@pytest.mark.parametrize("name,params", CASES)
def test_mc_variance_positive_with_dropout_and_zero_without(small_synth, name, params):
    schema, tables, _ = small_synth
    on = _variance(name, schema, tables["test"], params, dropout=0.3)
    for t, v in on.items():
        assert float(v.mean()) > 0, f"{name}/{t}: dropout 0.3 but MC-dropout variance is 0 (a dropout MC cannot see)"
    off = _variance(name, schema, tables["test"], params, strict=False)
    for t, v in off.items():
        assert torch.count_nonzero(v) == 0, f"{name}/{t}: dropout 0 but MC passes differ (other randomness in eval)"
    with pytest.raises(ConfigError, match=f"--mc-dropout: the {name} model has no dropout"):
        _variance(name, schema, tables["test"], params)  # a variance of 0 for every row is refused, not returned


EXPERT_DROPOUT = [n for n in NAMES if "expert_dropout" in _rates(n)]


@pytest.mark.parametrize("name", EXPERT_DROPOUT)
def test_mc_variance_sees_expert_dropout_alone(small_synth, name):
    """The MMoE / PLE gates' expert dropout (a module declaring ``mc_dropout``) is switched on too."""
    schema, tables, _ = small_synth
    for t, v in _variance(name, schema, tables["test"], expert_dropout=0.3).items():
        assert float(v.mean()) > 0, f"{name}/{t}: expert_dropout 0.3 but MC-dropout variance is 0"


def test_no_functional_dropout_in_the_package():
    """Functional dropout follows ``self.training`` and cannot be switched alone; use ``nn.Dropout``."""
    pat = re.compile(r"\bF\.(alpha_|feature_alpha_)?dropout\w*\(|functional\.(alpha_|feature_alpha_)?dropout\w*\(")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "dynarec").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert not hits, f"functional dropout (invisible to MC dropout): {hits}"
