"""Gate recording for the conformance suite (tests/models/test_conformance.py, stop-gradient gate inputs).

A model with stop-gradient gate inputs sets ``record_gates = True`` to make ``forward`` store its gate
tensors (with their graph) in ``recorded_gates[name] = (gate, allowed_fields)``; ``allowed_fields`` lists
the embedded fields whose shared-table rows MAY receive gradient through that gate (all others are
stop-gradient inputs and must get none). Registers no model."""
from __future__ import annotations

import torch


class GateRecorder:
    """Mixin: call ``self._start_record()`` at the top of ``forward`` and ``self._record(name, gate,
    allowed_fields)`` for each gate; gates are kept only while ``record_gates`` is True."""

    record_gates: bool = False

    def _start_record(self) -> None:
        self.recorded_gates = {}

    def _record(self, name: str, gate: torch.Tensor, allowed=()) -> None:
        if self.record_gates:
            self.recorded_gates[name] = (gate, list(allowed))
