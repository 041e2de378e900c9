"""The one validation layer of the schema: each dataclass of ``schema.py`` declares, per key, a checker
from this module; ``check_fields`` coerces and checks every value (YAML / JSON / Python alike) and
``check_keys`` rejects unknown keys with a did-you-mean. Every failure is one ``SchemaError`` line naming
the place (file, feature or task) and the key."""
from __future__ import annotations

import difflib
import math
import numbers
import re
from dataclasses import fields
from typing import Any, Callable, Sequence

import numpy as np

from dynarec.errors import SchemaError

Checker = Callable[[Any], Any]  # value -> coerced value; raises ValueError(expected) on a bad value
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(v) -> float:
    if isinstance(v, (bool, np.bool_)):
        raise ValueError
    if isinstance(v, numbers.Real):  # numpy scalars too
        x = float(v)
    elif isinstance(v, str) and _NUM.match(v.strip()):  # PyYAML reads `1e-3` as a string
        x = float(v)
    else:
        raise ValueError
    if not math.isfinite(x):
        raise ValueError
    return x


def number(nullable: bool = False) -> Checker:
    def check(v):
        if v is None and nullable:
            return None
        try:
            return _number(v)
        except ValueError:
            raise ValueError("a number" + (" or null" if nullable else "")) from None
    return check


def integer(minimum: int | None = None, nullable: bool = False) -> Checker:
    what = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or null" if nullable else "")

    def check(v):
        if v is None and nullable:
            return None
        try:
            x = _number(v)
        except ValueError:
            raise ValueError(what) from None
        if not x.is_integer() or (minimum is not None and x < minimum):
            raise ValueError(what)
        return int(x)
    return check


def boolean(v):
    if isinstance(v, bool):
        return v
    raise ValueError("true or false")


def text(choices: Sequence[str] | None = None, nullable: bool = False, nonempty: bool = True) -> Checker:
    what = (f"one of {', '.join(choices)}" if choices else "a non-empty string") + (" or null" if nullable else "")

    def check(v):
        if v is None and nullable:
            return None
        if not isinstance(v, str) or (nonempty and not v) or (choices and v not in choices):
            raise ValueError(what)
        return v
    return check


def scalars(nullable: bool = True) -> Checker:
    """A list of values compared as text (``[1, '?']`` -> ``['1', '?']``); a single value becomes a list."""
    def check(v):
        if v is None and nullable:
            return None
        vals = v if isinstance(v, list) else [v]
        if not vals or any(isinstance(x, (list, dict)) or x is None for x in vals):
            raise ValueError("a non-empty list of values")
        return [_as_text(x) for x in vals]
    return check


def _as_text(x) -> str:
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float) and x.is_integer():
        return str(int(x))  # 1.0 and 1 name the same category, as in the encoders
    return str(x)


def increasing(min_len: int = 1) -> Checker:
    def check(v):
        if v is None:
            return None
        try:
            xs = [_number(x) for x in v] if isinstance(v, list) else None
        except ValueError:
            xs = None
        if xs is None or len(xs) < min_len or any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"a strictly increasing list of at least {min_len} number(s)")
        return xs
    return check


def bounds(v):
    """``[lo, hi]`` with either side null (open); lo < hi."""
    if v is None:
        return None
    what = "[low, high] (numbers, either may be null, low < high)"
    if not isinstance(v, list) or len(v) != 2:
        raise ValueError(what)
    try:
        lo, hi = (None if x is None else _number(x) for x in v)
    except ValueError:
        raise ValueError(what) from None
    if (lo is None and hi is None) or (lo is not None and hi is not None and lo >= hi):
        raise ValueError(what)
    return [lo, hi]


def mapping(v):
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) and x for k, x in v.items()):
        raise ValueError("a mapping of column name -> new name")
    return dict(v)


def _show(v) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def check_fields(obj, spec: dict[str, Checker], where: str) -> None:
    """Coerce and check each attribute named in ``spec`` in place."""
    for key, check in spec.items():
        v = getattr(obj, key)
        try:
            setattr(obj, key, check(v))
        except ValueError as e:
            raise SchemaError(f"{where}: key '{key}' expects {e}, got {_show(v)}") from None


def check_keys(cls, d: Any, where: str, aliases: dict[str, str] | None = None) -> None:
    """Unknown keys of a mapping for dataclass ``cls`` -> SchemaError with the closest valid key."""
    if not isinstance(d, dict):
        raise SchemaError(f"{where}: expected a mapping, got {type(d).__name__}")
    valid = [f.name for f in fields(cls) if not f.name.startswith("_")]
    for k in d:
        if k in valid:
            continue
        close = [aliases[k]] if aliases and k in aliases else difflib.get_close_matches(str(k), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
        raise SchemaError(f"{where}: unknown key '{k}'{hint}")
