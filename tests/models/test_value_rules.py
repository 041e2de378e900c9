"""Model values are validated (issue 12 B): for every registered model, every config field that declares a
value rule (widths >= 1, counts >= 1, 0 <= dropout < 1, activation names, choices, gamma > 1, ...) rejects an
out-of-range value with one ConfigError naming ``model.<name>.<key>`` — from a config dict (``build_model``)
and from a Config object built in Python (``BaseModel.__init__``)."""
from __future__ import annotations

import dataclasses

import pytest

from dynarec.errors import ConfigError
from dynarec.models import build_model, get_model_info, list_models


def _bad(f, default):
    r = f.metadata["rule"]
    if r["choices"]:
        return "nope"
    lo = r["min"]
    if lo is None:
        return float("inf") if r["max"] is not None else None
    bad = (lo - 1 if not r["min_open"] else lo) if lo == int(lo) else lo - 0.5
    if isinstance(default, list) or r["nonempty"]:
        return [int(bad)] if not default or isinstance(default[0], int) else None
    if isinstance(default, float) or f.type in ("float", float):
        return float(bad)
    return int(bad)


CASES = []
for m in list_models():
    for f in dataclasses.fields(m.config_cls):
        if "rule" in f.metadata:
            d = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            bad = _bad(f, d)
            if bad is not None:
                CASES.append(pytest.param(m.name, f.name, bad, id=f"{m.name}-{f.name}"))


@pytest.mark.parametrize("name,key,bad", CASES)
def test_out_of_range_value_is_a_config_error_naming_the_key(small_synth, name, key, bad):
    schema = small_synth[0]
    with pytest.raises(ConfigError, match=rf"^model\.{name}\.{key}(\[0\])?: expected "):
        build_model(name, schema, {key: bad})
    info = get_model_info(name)
    with pytest.raises(ConfigError, match=rf"model\.{name}\.{key}"):
        info.cls(schema, info.config_cls(**{key: bad}))


def test_the_issue_cases(small_synth):
    schema = small_synth[0]
    for params, msg in [({"embed_dim": 0}, "model.dnn.embed_dim: expected an integer >= 1, got 0"),
                        ({"hidden": [16, 0]}, "model.dnn.hidden[1]: expected an integer >= 1, got 0"),
                        ({"dropout": 1.0}, "model.dnn.dropout: expected a number >= 0 and < 1, got 1.0"),
                        ({"activation": "swishy"}, "model.dnn.activation: expected one of relu | gelu")]:
        with pytest.raises(ConfigError) as e:
            build_model("dnn", schema, params)
        assert str(e.value).startswith(msg), str(e.value)
    with pytest.raises(ConfigError, match=r"model\.mmoe\.top_k: expected <= num_experts \(2\)"):
        build_model("mmoe", schema, {"gate": "noisy_topk", "num_experts": 2, "top_k": 3})
    with pytest.raises(ConfigError, match=r"model\.sparse_moe\.top_k"):
        build_model("sparse_moe", schema, {"num_experts": 2, "top_k": 3})
    with pytest.raises(ConfigError, match=r"model\.pepnet\.gamma: expected a number > 1"):
        build_model("pepnet", schema, {"gamma": 1.0})
    assert len(CASES) > 150
