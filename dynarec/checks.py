"""Value rules for config dataclasses: declared once on the field, checked by :func:`validate`.

    epochs: int = field(default=5, metadata=rule(min=1))
    dropout: float = field(default=0.0, metadata=rule(min=0, max=1, max_open=True))
    hidden: list[int] = field(default_factory=lambda: [256, 128], metadata=rule(min=1))  # each element

``validate(obj, "trainer")`` raises one ConfigError naming the key (``trainer.epochs: expected an integer
>= 1, got 0``). ``config.build_dataclass`` calls it on every config it builds, and the trainer and the model
base call it on configs passed from Python, so a value is checked however it arrives."""
from __future__ import annotations

import dataclasses
import math

from dynarec.errors import ConfigError


def rule(*, min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False,
         choices: tuple | None = None, nonempty: bool = False, finite: bool = True) -> dict:
    """Field metadata for :func:`validate` (numbers, or every element of a list of numbers)."""
    return {"rule": {"min": min, "max": max, "min_open": min_open, "max_open": max_open,
                     "choices": tuple(choices) if choices else None, "nonempty": nonempty, "finite": finite}}


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return repr(v)
    return repr(v) if isinstance(v, str) else str(v)


def _bounds(r: dict) -> str:
    lo = None if r["min"] is None else f"{'>' if r['min_open'] else '>='} {_fmt(r['min'])}"
    hi = None if r["max"] is None else f"{'<' if r['max_open'] else '<='} {_fmt(r['max'])}"
    return " and ".join(x for x in (lo, hi) if x)


def check_value(where: str, value, r: dict) -> None:
    """Raise a ConfigError when ``value`` (a number, a string or a list of numbers) breaks rule ``r``."""
    if value is None:
        return
    if r["choices"] is not None:
        if value not in r["choices"]:
            raise ConfigError(f"{where}: expected one of {' | '.join(map(str, r['choices']))}, got {_fmt(value)}")
        return
    if isinstance(value, (list, tuple)):
        if r["nonempty"] and not value:
            raise ConfigError(f"{where}: expected a non-empty list")
        for i, v in enumerate(value):
            check_value(f"{where}[{i}]", v, r)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # types are checked by config.build_dataclass
    kind = "an integer" if isinstance(value, int) else "a number"
    if r["finite"] and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {_fmt(value)}")
    lo_bad = r["min"] is not None and (value <= r["min"] if r["min_open"] else value < r["min"])
    hi_bad = r["max"] is not None and (value >= r["max"] if r["max_open"] else value > r["max"])
    if lo_bad or hi_bad:
        raise ConfigError(f"{where}: expected {kind} {_bounds(r)}, got {_fmt(value)}")


def validate(obj, where: str) -> None:
    """Check every field of dataclass ``obj`` that declares a :func:`rule`; nested dataclasses too."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            validate(v, f"{where}.{f.name}")
        elif "rule" in f.metadata:
            check_value(f"{where}.{f.name}", v, f.metadata["rule"])
