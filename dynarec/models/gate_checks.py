"""Config checks shared by the gate models (ppnet, epnet, pepnet, poso, lhuc): one-line ConfigErrors."""
from __future__ import annotations

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
