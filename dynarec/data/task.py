"""One prediction target of a schema (:class:`Task`): its column, label rule and type; checked on construction."""
from __future__ import annotations

from dataclasses import dataclass

from dynarec.data.validate import check_fields, number, scalars, text
from dynarec.errors import SchemaError

TASK_TYPES = ("binary", "regression")
RESERVED = ("_row",)  # prepared-folder columns that are not features


@dataclass
class Task:
    """One prediction target. ``column``: the source column (default: ``name``; several tasks may read one
    column). Binary rules: ``positive: [values]`` (those -> 1, the rest -> 0) or ``threshold: x``
    (value > x -> 1); without a rule the column must hold 0/1. Regression: ``transform: log1p``."""

    name: str
    type: str = "binary"
    column: str | None = None
    positive: list[str] | None = None
    threshold: float | None = None
    transform: str | None = None

    def __post_init__(self) -> None:
        where = f"task '{self.name}'"
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"task: key 'name' expects a non-empty string, got {self.name!r}")
        if self.name in RESERVED:
            raise SchemaError(f"{where}: the name '{self.name}' is reserved (the prepared folder's raw row index)")
        check_fields(self, _TASK_SPEC, where)
        if self.positive is not None and self.threshold is not None:
            raise SchemaError(f"{where}: give 'positive' or 'threshold', not both")
        if self.type == "regression" and (self.positive is not None or self.threshold is not None):
            raise SchemaError(f"{where}: 'positive' / 'threshold' make a binary label; this task is type regression")
        if self.type == "binary" and self.transform is not None:
            raise SchemaError(f"{where}: 'transform' applies to regression tasks (this one is binary)")

    @property
    def source(self) -> str:
        return self.column or self.name


_TASK_SPEC = {"type": text(TASK_TYPES), "column": text(nullable=True), "positive": scalars(),
              "threshold": number(nullable=True), "transform": text(("log1p",), nullable=True)}
_TASK_ALIASES = {"kind": "type", "label": "column", "source": "column", "positives": "positive",
                 "positive_values": "positive", "cutoff": "threshold"}
