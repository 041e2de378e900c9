"""Feature schema: which columns are features (sparse / dense / sequence), their groups, the domain
column and the task labels. Saved as JSON next to prepared data (DESIGN.md, "The flow of data")."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dynarec.errors import SchemaError

from dataclasses import MISSING as _MISSING

KINDS = ("sparse", "dense", "sequence")
GROUPS = ("user", "item", "author", "context", "domain", "position")
TASK_TYPES = ("binary", "regression")


@dataclass
class Feature:
    """One input column.

    kind: ``sparse`` (categorical id), ``dense`` (float) or ``sequence`` (variable-length ids).
    group: one of ``GROUPS``; models resolve their inputs by group (SPEC §1).
    table: embedding table name; features naming the same table share it (default: own name).
    vocab_size: set by the encoder at preparation (ids 0..vocab_size-1, 0 = unknown/rare/padding).
    """

    name: str
    kind: str = "sparse"
    group: str = "context"
    table: str | None = None
    min_count: int = 1
    vocab_size: int = 0
    # dense options
    nan_policy: str = "fill"  # fill | error
    fill_value: float = 0.0
    missing_indicator: bool = False
    normalize: bool = True
    # sequence options
    max_len: int = 20
    separator: str = "|"
    pooling: str = "mean"  # mean | sum

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemaError(f"feature '{self.name}': kind must be one of {KINDS}, got '{self.kind}'")
        if self.group not in GROUPS:
            raise SchemaError(f"feature '{self.name}': group must be one of {GROUPS}, got '{self.group}'")
        if self.nan_policy not in ("fill", "error"):
            raise SchemaError(f"feature '{self.name}': nan_policy must be 'fill' or 'error', got '{self.nan_policy}'")
        if self.pooling not in ("mean", "sum"):
            raise SchemaError(f"feature '{self.name}': pooling must be 'mean' or 'sum', got '{self.pooling}'")
        if self.table is None:
            self.table = self.name


@dataclass
class Task:
    name: str
    type: str = "binary"

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise SchemaError(f"task '{self.name}': type must be one of {TASK_TYPES}, got '{self.type}'")


@dataclass
class Schema:
    """Features + domain column + task labels (+ optional user column for gAUC and timestamp for splits)."""

    features: list[Feature]
    tasks: list[Task]
    domain: str
    user: str | None = None
    timestamp: str | None = None
    domain_values: list[str] = field(default_factory=list)  # decoded names of domain ids 1..D-1 (0 = unknown)

    def __post_init__(self) -> None:
        self.features = [f if isinstance(f, Feature) else _build(Feature, f, "feature") for f in self.features]
        self.tasks = [t if isinstance(t, Task) else _build(Task, t, "task") for t in self.tasks]
        if not self.tasks:
            raise SchemaError("schema: at least one task label column is required under 'tasks'")
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"schema: feature declared twice: {sorted(dup)}")
        labels = {t.name for t in self.tasks}
        bad = labels & set(names)
        if bad:
            raise SchemaError(f"schema: label column '{sorted(bad)[0]}' is also declared as a feature; a label cannot be an input")
        if self.domain in labels:
            raise SchemaError(f"schema: domain column '{self.domain}' is a task label")
        if self.domain not in names:
            # the domain id is always an input (group 'domain'): add it as a sparse feature
            self.features.insert(0, Feature(self.domain, kind="sparse", group="domain"))
        else:
            f = self.feature(self.domain)
            if f.kind != "sparse":
                raise SchemaError(f"schema: domain column '{self.domain}' must be a sparse feature, got kind '{f.kind}'")

    # ---- views ---------------------------------------------------------------------------------
    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise SchemaError(f"schema: no feature named '{name}'")

    @property
    def sparse(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "sparse"]

    @property
    def dense(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "dense"]

    @property
    def sequences(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "sequence"]

    @property
    def fields(self) -> list[Feature]:
        """Embedded fields in model order: sparse features then sequence features."""
        return self.sparse + self.sequences

    @property
    def dense_dim(self) -> int:
        return sum(2 if f.missing_indicator else 1 for f in self.dense)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def num_domains(self) -> int:
        return self.feature(self.domain).vocab_size

    def groups(self) -> set[str]:
        return {f.group for f in self.features}

    def columns(self) -> list[str]:
        """Raw columns needed to prepare data with this schema."""
        cols = [f.name for f in self.features] + self.task_names
        for c in (self.user, self.timestamp):
            if c and c not in cols:
                cols.append(c)
        return cols

    # ---- io ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "schema") -> Schema:
        if not isinstance(d, dict):
            raise SchemaError(f"{source}: expected a mapping with keys features, tasks, domain")
        return _build(cls, d, source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        p = Path(path)
        if not p.exists():
            raise SchemaError(f"{p}: schema file not found")
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text)
        else:
            d = json.loads(text)
        return cls.from_dict(d, str(p))


def _build(cls, d: Any, where: str):
    """Instantiate a dataclass from a dict, naming unknown keys with the closest valid one."""
    import difflib

    if not isinstance(d, dict):
        raise SchemaError(f"{where}: expected a mapping, got {type(d).__name__}")
    valid = [f.name for f in fields(cls)]
    for k in d:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
            raise SchemaError(f"{where}: unknown key '{k}'{hint}")
    missing = [f.name for f in fields(cls) if f.name not in d and f.default is _MISSING and f.default_factory is _MISSING]
    if missing:
        raise SchemaError(f"{where}: missing required key '{missing[0]}'")
    try:
        return cls(**d)
    except TypeError as e:
        raise SchemaError(f"{where}: {e}") from None

