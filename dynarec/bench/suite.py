"""Suite files of ``dynarec benchmark``: the YAML schema (datasets, models, seeds, one trainer budget),
loading with one-line errors, and ``$VAR`` expansion + path resolution relative to the suite file.

Format in docs/benchmarks.md ("Datasets and the benchmark harness")."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynarec.config import build_dataclass, read_yaml_mapping
from dynarec.errors import ConfigError

TABLE_METRICS = ("auc", "gauc", "logloss", "rmse")


@dataclass
class DatasetSpec:
    """One dataset of a suite: ``dataset: synthetic`` (built-in), a loader name from ``dynarec.datasets``
    with ``raw`` (+ ``options``), or ``prepared: DIR`` (an already prepared folder, its split is used)."""

    name: str = ""
    dataset: str = ""
    raw: str = ""
    prepared: str = ""
    options: dict = field(default_factory=dict)
    split: str = "random"  # random | temporal
    split_seed: int = 0
    rows: int = 20_000  # synthetic only
    max_rows: int = 0  # > 0: keep a fixed random subset of this many raw rows (before the split)


@dataclass
class ModelSpec:
    model: str = ""
    name: str = ""  # display name (default: model); lets a suite compare two configs of one model
    params: dict = field(default_factory=dict)


@dataclass
class Suite:
    name: str = ""
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    datasets: list[dict] = field(default_factory=list)
    models: list[Any] = field(default_factory=list)  # "dnn" or {model, name, params}
    trainer: dict = field(default_factory=dict)  # TrainerConfig keys: the same budget for every run
    metrics: list[str] = field(default_factory=lambda: ["auc"])  # tabled / plotted metrics
    expected: str = ""  # expected-metric CSV (relative to the suite file)
    threads: int = 0  # torch threads (0 = torch default)


def load_suite(path: str | Path) -> tuple[Suite, list[DatasetSpec], list[ModelSpec]]:
    p = Path(path)
    d = read_yaml_mapping(p, "suite")
    suite = build_dataclass(Suite, d, str(p))
    suite.name = suite.name or p.stem
    if len(set(suite.seeds)) < 3:
        raise ConfigError(f"{p}: seeds: a suite needs >= 3 distinct seeds for mean ± std, got {suite.seeds}")
    if not suite.datasets:
        raise ConfigError(f"{p}: datasets: at least one dataset is required")
    if not suite.models:
        raise ConfigError(f"{p}: models: at least one model is required")
    for m in suite.metrics:
        if m not in TABLE_METRICS:
            raise ConfigError(f"{p}: metrics: unknown metric '{m}' (expected one of {', '.join(TABLE_METRICS)})")
    datasets = []
    for i, dd in enumerate(suite.datasets):
        ds = build_dataclass(DatasetSpec, dd, f"{p}: datasets[{i}]")
        if not ds.dataset and not ds.prepared:
            raise ConfigError(f"{p}: datasets[{i}]: give 'dataset' (synthetic or a loader name) or 'prepared'")
        if ds.dataset and ds.dataset != "synthetic" and not ds.prepared:
            from dynarec.datasets import DATASETS

            if ds.dataset not in DATASETS:
                raise ConfigError(f"{p}: datasets[{i}].dataset: unknown dataset '{ds.dataset}' (expected synthetic "
                                  f"or one of {', '.join(sorted(DATASETS))})")
            if not ds.raw:
                raise ConfigError(f"{p}: datasets[{i}].raw: the raw folder of '{ds.dataset}' is required")
        if ds.split not in ("random", "temporal"):
            raise ConfigError(f"{p}: datasets[{i}].split: expected random or temporal, got '{ds.split}'")
        ds.name = ds.name or ds.dataset or Path(ds.prepared).name
        datasets.append(ds)
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{p}: datasets: names must be unique, got {names}")
    models = []
    from dynarec.models.registry import get_model_info

    for i, mm in enumerate(suite.models):
        ms = ModelSpec(model=mm) if isinstance(mm, str) else build_dataclass(ModelSpec, mm, f"{p}: models[{i}]")
        if not ms.model:
            raise ConfigError(f"{p}: models[{i}].model: a registered model name is required")
        get_model_info(ms.model)  # ConfigError with a close match for typos
        ms.name = ms.name or ms.model
        models.append(ms)
    mnames = [m.name for m in models]
    if len(set(mnames)) != len(mnames):
        raise ConfigError(f"{p}: models: display names must be unique, got {mnames} (set 'name')")
    from dynarec.train.config import TrainerConfig

    build_dataclass(TrainerConfig, suite.trainer, f"{p}: trainer")  # validate the budget up front
    return suite, datasets, models


def expand(s: str) -> str:
    """``$VAR`` / ``${VAR}`` / ``${VAR:-default}`` from the environment (shell semantics), then ``~``."""
    import re

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        v = os.environ.get(name)
        if v:
            return v
        if default is not None:
            return default
        raise ConfigError(f"suite path '{s}': environment variable {name} is not set")

    s = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", sub, s)
    return os.path.expanduser(os.path.expandvars(s))


def resolve_path(base: Path, s: str) -> Path:
    """``s`` with the environment expanded (:func:`expand`), relative to ``base`` (the suite file's folder)."""
    q = Path(expand(s))
    return q if q.is_absolute() else (base / q).resolve()


def expected_path(suite: Suite, path: Path) -> Path:
    """The suite's expected-metric CSV: ``expected`` (relative to the suite file) or ``<suite>.expected.csv``."""
    return resolve_path(path.resolve().parent, suite.expected) if suite.expected else path.with_suffix(".expected.csv")
