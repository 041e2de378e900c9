"""The registry's feature-group claims (``dynarec models``: requires / uses when present) hold for every
registered model: without a group it requires, building is a ConfigError naming the group; without a group it
only uses when present, it builds and runs (issue 13 item 6: pepnet was listed as needing ``author``)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dynarec.cli import main
from dynarec.errors import ConfigError
from dynarec.models import build_model, list_models
from test_conformance import small_params


def _without(schema, group):
    """The schema with the features of ``group`` moved to group `position`, which no default config reads (the columns stay)."""
    feats = [dataclasses.replace(f, group="position") if f.group == group else f for f in schema.features]
    return dataclasses.replace(schema, features=feats)


CASES = [pytest.param(m.name, g, g in m.optional, id=f"{m.name}-{g}") for m in list_models() for g in m.needs]


@pytest.mark.parametrize("name,group,optional", CASES)
def test_group_claims(small_synth, name, group, optional):
    schema, tables, _ = small_synth
    s = _without(schema, group)
    if optional:
        torch.manual_seed(0)
        model = build_model(name, s, small_params(name))
        out = model(tables["test"].take(torch.arange(16)))
        assert set(out) == set(model.tasks)
    else:
        with pytest.raises(ConfigError, match=group):
            build_model(name, s, small_params(name))


def test_models_json_keeps_needs_and_adds_requires_optional(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    pep = rows["pepnet"]
    assert pep["needs"] == ["domain", "user", "item", "author"]  # backward compatible
    assert pep["requires"] == ["domain"] and pep["optional"] == ["user", "item", "author"]
    assert rows["can"]["requires"] == ["user", "item"] and rows["can"]["optional"] == []
