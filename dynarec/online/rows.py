"""Fresh rows for admitted slots, zero rows for freed ones, in EVERY table of the model that serves a dynamic
feature (the fused feature table, PPNet / PEPNet's gate-only prior table, CAN's tables ...), with their
optimizer state reset (Adagrad accumulators, Adam moments), so a re-admitted id starts from scratch.

A table's rows for slot ``s`` are ``offset + s`` where ``offset`` is the first row of the dynamic features'
logical table in it (``TableSpec.offsets``). A fresh row is drawn from N(0, σ²) with σ the standard deviation
of that table's rows when the model was built (its own initialisation), from a generator of its own (seeded,
checkpointed), so runs and resumed runs draw the same rows. With ``fresh="default"`` (the default) a fresh row is a
copy of the region's default row (slot 0: what the model learned for ids it has not admitted), so a new id
starts from the learned prior of new ids instead of noise, and then learns its own row."""
from __future__ import annotations

import torch

from dynarec.errors import ConfigError
from dynarec.tables.row_state import reset_slots


def dynamic_targets(model, dynamic: list[str]) -> list[tuple[str, int]]:
    """(table name, first row) of each table region that serves the dynamic features (deduplicated)."""
    out = []
    for name, spec in model.tables.specs.items():
        serves = [k for k, f in enumerate(spec.features) if f in dynamic]
        if not serves:
            continue
        if not spec.offsets:
            raise ConfigError(f"model {model.registry_name}: its table '{name}' serves dynamic feature "
                              f"'{spec.features[serves[0]]}' but does not declare its row offsets (TableSpec.offsets)")
        for off in sorted({spec.offsets[k] for k in serves}):
            out.append((name, off))
    return out


class RowKeeper:
    """``on_admit(slots)`` / ``on_free(slots)``: the callbacks the dynamic index calls (slots Long [n])."""

    def __init__(self, model, optimizers, dynamic: list[str], seed: int = 0, fresh: str = "default"):
        self.model, self.optimizers, self.fresh = model, optimizers, fresh
        self.targets = dynamic_targets(model, dynamic)
        with torch.no_grad():
            self.std = {n: float(model.tables[n].weight.std()) if model.tables[n].weight.numel() > 1 else 0.0
                        for n, _ in self.targets}
        self.gen = torch.Generator().manual_seed(seed)

    def _reset_state(self, weight, rows):
        for opt in self.optimizers:
            reset_slots(opt, weight, rows)

    @torch.no_grad()
    def on_admit(self, slots: torch.Tensor) -> None:
        for name, off in self.targets:
            w = self.model.tables[name].weight
            rows = slots + off
            if self.fresh == "default":
                w[rows] = w[off].clone()
            else:
                w[rows] = torch.randn(len(rows), w.shape[1], generator=self.gen).to(w.dtype) * self.std[name]
            self._reset_state(w, rows)

    @torch.no_grad()
    def on_free(self, slots: torch.Tensor) -> None:
        for name, off in self.targets:
            w = self.model.tables[name].weight
            rows = slots + off
            w[rows] = 0.0
            self._reset_state(w, rows)
