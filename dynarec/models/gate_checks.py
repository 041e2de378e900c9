"""Config checks shared by the gate models (ppnet, epnet, pepnet, poso, lhuc): one-line ConfigErrors."""
from __future__ import annotations

from dynarec.checks import rule
from dynarec.errors import ConfigError

GAMMA = rule(min=1, min_open=True)  # gates lie in (0, gamma) and start at 1
GATE_INIT = rule(choices=("zero", "default"))


def check_choice(where: str, key: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{where}.{key}: expected one of {list(valid)}, got {value!r}")


def check_gate_common(where: str, c) -> bool:
    """``zero_init_last`` from ``gate_init`` (``gamma`` and ``gate_init`` are checked by their field rules)."""
    return c.gate_init == "zero"
