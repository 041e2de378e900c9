"""Value rules shared by the gate models' configs (ppnet, epnet, pepnet, poso, lhuc; see dynarec.checks)."""
from __future__ import annotations

from dynarec.checks import rule

GAMMA = rule(min=1, min_open=True)  # gates lie in (0, gamma) and start at 1
GATE_INIT = rule(choices=("zero", "default"))  # zero: the last gate layer starts at 0, so gates start at 1


def check_gate_common(where: str, c) -> bool:
    """``zero_init_last`` from ``gate_init`` (``gamma`` and ``gate_init`` are checked by their field rules)."""
    return c.gate_init == "zero"
