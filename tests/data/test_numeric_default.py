"""The default numeric encoding of a plain schema: a ``kind: dense`` column declared in a mapping (YAML /
JSON) becomes a PLR-embedded field with σ = PLR_SIGMA unless it says otherwise; saved schemas keep theirs."""
import json

import pytest

from dynarec.data.schema import DEFAULT_NUMERIC_EMBEDDING, PLR_SIGMA, Schema


def _schema(**dense):
    return Schema.from_dict({"domain": "d", "tasks": [{"name": "y"}],
                             "features": [{"name": "c"}, {"name": "x", "kind": "dense", **dense}]})


def test_plain_dense_column_gets_the_measured_recipe():
    assert DEFAULT_NUMERIC_EMBEDDING == "plr" and PLR_SIGMA == 10.0
    assert _schema().feature("x").numeric_embedding == "plr"
    assert _schema(sigma=3.0).feature("x").sigma == 3.0                  # sigma alone implies the default plr
    assert _schema(embedding="ple").feature("x").numeric_embedding == "ple"
    for off in (None, "none"):                                             # the opt-out
        assert _schema(embedding=off).feature("x").numeric_embedding is None
    assert _schema(buckets=4).feature("x").numeric_embedding is None      # bucketised: already an id field
    assert _schema().feature("c").numeric_embedding is None               # sparse columns untouched


def test_the_plr_default_sigma_reaches_the_model():
    import torch

    from dynarec.nn.numeric_fields import NumericFields

    torch.manual_seed(0)
    schema = _schema()
    nf = NumericFields(schema, 8)
    freq = nf.plr.frequencies
    # 16 frequencies drawn N(0, 1), scaled by σ: s/σ below 0.5 or above 1.6 has probability < 0.01 (χ², 15 df)
    assert 0.5 * PLR_SIGMA < float(freq.detach().std()) < 1.6 * PLR_SIGMA


def test_saved_schemas_keep_their_encoding(tmp_path):
    from dynarec.data.stream import save_schema_yaml

    old = _schema(embedding=None).to_dict()           # a schema.json written before the default: key present, null
    assert Schema.from_dict(json.loads(json.dumps(old))).feature("x").numeric_embedding is None
    save_schema_yaml(_schema(embedding=None), tmp_path / "s.yaml")   # the YAML writer keeps the null
    assert Schema.load(tmp_path / "s.yaml").feature("x").numeric_embedding is None
    save_schema_yaml(_schema(), tmp_path / "t.yaml")
    assert Schema.load(tmp_path / "t.yaml").feature("x").numeric_embedding == "plr"


def test_bins_without_ple_is_still_an_error():
    from dynarec.errors import SchemaError

    with pytest.raises(SchemaError, match="bins"):
        _schema(bins=8)
