"""Typed experiment config: YAML -> dataclasses, with errors that name the key and the closest valid key."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynarec.checks import validate
from dynarec.errors import ConfigError
from dynarec.train.config import TrainerConfig  # noqa: F401  (re-exported: it lives next to the trainer)


@dataclass
class DataConfig:
    path: str = ""  # a prepared folder (schema.json + train/valid/test.parquet)
    loading: str = "auto"  # auto | memory | stream: the train split read whole or streamed (dynarec/data/loader.py)
    memory_budget_mb: float = 4096  # auto streams when the folder's splits as tensors would exceed this
    shuffle_buffer: int = 262_144  # streamed: rows permuted together (whole row groups, in a shuffled order)
    prefetch: int = 4  # streamed: row groups read ahead
    read_threads: int = 2  # streamed: background reader threads


@dataclass
class ExperimentConfig:
    model: str = "dnn"
    data: DataConfig = field(default_factory=DataConfig)
    params: dict[str, Any] = field(default_factory=dict)  # the model's hyper-parameters
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    out: str = "runs/exp"


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and lightly coerce: int -> float) ``value`` against annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            ok, v = _type_ok(value, a)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (a,) = typing.get_args(tp) or (Any,)
        out = []
        for x in value:
            ok, v = _type_ok(x, a)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is tuple:
        return isinstance(value, (list, tuple)), tuple(value) if isinstance(value, (list, tuple)) else value
    if origin is dict:
        return isinstance(value, dict), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    return True, value


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build_dataclass(cls: type, d: dict[str, Any] | None, where: str):
    """Instantiate dataclass ``cls`` from ``d``: unknown keys and wrong types are ConfigErrors."""
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in d.items():
        if k not in valid:
            close = difflib.get_close_matches(str(k), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
            raise ConfigError(f"{where}: unknown key '{k}'{hint}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = build_dataclass(tp, v, f"{where}.{k}")
            continue
        ok, v2 = _type_ok(v, tp)
        if not ok:
            raise ConfigError(f"{where}.{k}: expected {_tname(tp)}, got {type(v).__name__} ({v!r})")
        kwargs[k] = v2
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    validate(obj, where)
    return obj


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_value(text: str) -> Any:
    """Parse a ``--set key=value`` value as YAML (numbers incl. ``1e-3``, lists, booleans), else keep the string."""
    import yaml

    from dynarec import yamlio

    try:
        return yamlio.load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(d: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (``model.X`` is an alias of ``params.X``)."""
    for s in sets or []:
        if "=" not in s:
            raise ConfigError(f"--set '{s}': expected key=value")
        key, val = s.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] == "model" and len(parts) > 1:
            parts[0] = "params"
        cur = d
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"--set '{s}': '{p}' is not a section")
        cur[parts[-1]] = parse_value(val)
    return d


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; clear ConfigErrors for a missing file, bad YAML or a list."""
    import yaml

    from dynarec import yamlio

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: {what} file not found")
    if p.is_dir():
        raise ConfigError(f"{p}: expected a {what} file, got a directory")
    try:
        d = yamlio.load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (expected UTF-8 YAML)") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return d


def load_experiment(path: str | None, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> ExperimentConfig:
    d: dict[str, Any] = read_yaml_mapping(path) if path else {}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        cur = d
        parts = k.split(".")
        for p_ in parts[:-1]:
            cur = cur.setdefault(p_, {})
        cur[parts[-1]] = v
    apply_overrides(d, sets or [])
    return build_dataclass(ExperimentConfig, d, path or "config")
