"""Schema-index helpers of the gate models: which sparse fields / dense columns a config's groups select."""
from __future__ import annotations

from dynarec.errors import ConfigError


def sparse_fields(model, groups, names, what: str) -> list[int]:
    """Sparse (non-sequence) field positions: ``names`` if given, else every sparse field of ``groups``."""
    n_sparse = len(model.schema.sparse)
    if names:
        idx = model.field_index_by_name(names, what)
        bad = [model.schema.fields[i].name for i in idx if i >= n_sparse]
        if bad:
            raise ConfigError(f"{what}: feature '{bad[0]}' is a sequence; only sparse id features can be used here")
        return idx
    idx = [i for i in model.field_index(groups, what) if i < n_sparse]
    if not idx:
        raise ConfigError(f"{what}: groups {list(groups)} have no sparse id feature in the schema")
    return idx


def dense_index(schema, groups) -> list[int]:
    """Columns of ``batch.dense`` that belong to features of ``groups`` (missing indicators included)."""
    out, j = [], 0
    for f in schema.dense:
        w = 2 if f.missing_indicator else 1
        if f.group in groups:
            out.extend(range(j, j + w))
        j += w
    return out


def default_prior_groups(schema, groups: list[str] | None) -> list[str]:
    """PPNet/PEPNet gate priors: the configured groups, or by default whichever of user / item / author the
    schema has (all three when it has none, so the usual missing-group error names them)."""
    if groups is not None:
        return list(groups)
    have = [g for g in ("user", "item", "author") if g in schema.groups()]
    return have or ["user", "item", "author"]
