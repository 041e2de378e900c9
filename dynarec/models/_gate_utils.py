"""Schema-side helpers shared by the gate models (ppnet, epnet, pepnet, poso, lhuc).

Registers no model. Also defines the gate-recording protocol used by the conformance suite:
a model with stop-gradient gate inputs sets ``record_gates = True`` to make ``forward`` store its gate
tensors (with their graph) in ``recorded_gates[name] = (gate, allowed_fields)``; ``allowed_fields`` lists
the embedded fields whose shared-table rows MAY receive gradient through that gate (all others are
stop-gradient inputs and must get none)."""
from __future__ import annotations

import torch

from dynarec.errors import ConfigError


def check_choice(where: str, key: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{where}.{key}: expected one of {list(valid)}, got {value!r}")


def check_gate_common(where: str, c) -> bool:
    """Validate ``gamma`` and ``gate_init``; returns ``zero_init_last``."""
    if c.gamma <= 1.0:
        raise ConfigError(f"{where}.gamma: expected a number > 1 (gates lie in (0, gamma) and start at 1), got {c.gamma}")
    check_choice(where, "gate_init", c.gate_init, ("zero", "default"))
    return c.gate_init == "zero"


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


class GateRecorder:
    """Mixin: call ``self._start_record()`` at the top of ``forward`` and ``self._record(name, gate,
    allowed_fields)`` for each gate; gates are kept only while ``record_gates`` is True."""

    record_gates: bool = False

    def _start_record(self) -> None:
        self.recorded_gates = {}

    def _record(self, name: str, gate: torch.Tensor, allowed=()) -> None:
        if self.record_gates:
            self.recorded_gates[name] = (gate, list(allowed))


def default_prior_groups(schema, groups: list[str] | None) -> list[str]:
    """PPNet/PEPNet gate priors: the configured groups, or by default whichever of user / item / author the
    schema has (all three when it has none, so the usual missing-group error names them)."""
    if groups is not None:
        return list(groups)
    have = [g for g in ("user", "item", "author") if g in schema.groups()]
    return have or ["user", "item", "author"]
