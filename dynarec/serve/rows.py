"""JSON rows of RAW feature values -> the columns a schema's encoders read, with per-row validation.

A row is an object ``{feature: value}`` holding every raw feature column of the schema (extra keys, such as
labels or ids, are ignored). Values: sparse features take a string or an integer (``3`` and ``"3"`` are the
same category, as when a CSV column is read) or ``null``; dense features (bucketised ones too) a number or
``null`` (= missing, handled by the feature's ``nan_policy``); sequence features a list of strings / integers or one string joined by the
feature's ``separator``. Anything else is a :class:`RowError` naming the row and the feature."""
from __future__ import annotations

import math

import pyarrow as pa

from dynarec.errors import DynarecError


class RowError(DynarecError):
    """A client's mistake in the rows of a request (the server answers 422)."""


def raw_columns(schema) -> list[str]:
    """The raw feature columns a request row must hold (the domain column included)."""
    return [f.name for f in schema.features]


def _category(v, name: str, i: int) -> str | None:
    if v is None:
        return None  # missing: id 0, as an empty CSV cell
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise RowError(f"rows[{i}].{name}: expected a string, an integer or null (a category), got {_tname(v)}")
    return str(v)


def _number(v, name: str, i: int) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RowError(f"rows[{i}].{name}: expected a number or null, got {_tname(v)}")
    try:
        return float(v)
    except OverflowError:  # an integer beyond float range
        raise RowError(f"rows[{i}].{name}: expected a finite number, got an integer of {len(str(v))} digits") from None


def _sequence(v, name: str, i: int, sep: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return sep.join(_category(x, f"{name}[]", i) for x in v)
    if v is None:
        return ""
    raise RowError(f"rows[{i}].{name}: expected a list of categories or a '{sep}'-joined string, got {_tname(v)}")


def _tname(v) -> str:
    return "null" if v is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), type(v).__name__)


def rows_to_columns(rows, schema, max_rows: int | None = None) -> dict[str, list]:
    """Validate ``rows`` (a list of objects) -> {raw feature column: list of values} (categories as str or
    None, numbers as float, sequences as one ``separator``-joined string), in the schema's feature order."""
    if not isinstance(rows, list):
        raise RowError(f"'rows': expected a list of objects, got {_tname(rows)}")
    if not rows:
        raise RowError("'rows': expected at least one row, got an empty list")
    if max_rows is not None and len(rows) > max_rows:
        raise RowError(f"'rows': at most {max_rows} rows per request, got {len(rows)}")
    names, feats = _plan(schema)
    cols: dict[str, list] = {name: [] for name in names}
    for i, r in enumerate(rows):
        if type(r) is not dict:
            raise RowError(f"rows[{i}]: expected an object of feature values, got {_tname(r)}")
        for name, kind, strict, sep in feats:
            try:
                v = r[name]
            except KeyError:
                raise RowError(f"rows[{i}]: missing feature '{name}'") from None
            t = type(v)
            if kind == "sparse":  # the common types first: one type() test per value
                cols[name].append(v if t is str else str(v) if t is int else _category(v, name, i))
            elif kind == "dense":
                x = v if t is float else _number(v, name, i)
                if x != x and strict:
                    raise RowError(f"rows[{i}].{name}: a value is required (the feature's nan_policy is 'error')")
                if x in _INF:
                    raise RowError(f"rows[{i}].{name}: expected a finite number, got {x}")
                cols[name].append(x)
            else:
                cols[name].append(_sequence(v, name, i, sep))
    return cols


def _plan(schema) -> tuple[list[str], list[tuple]]:
    """(feature names, (name, kind, nan_policy is 'error', separator) per feature) of ``schema``, kept on it."""
    plan = getattr(schema, "_rows_plan", None)
    if plan is None:
        feats = [(f.name, f.kind, f.nan_policy == "error", f.separator) for f in schema.features]
        plan = ([f[0] for f in feats], feats)
        try:
            schema._rows_plan = plan
        except AttributeError:  # pragma: no cover - a schema object without a __dict__
            pass
    return plan


_INF = (math.inf, -math.inf)
_TYPES = {"sparse": pa.string(), "dense": pa.float64(), "sequence": pa.string()}


def columns_to_table(cols: dict[str, list], schema) -> pa.Table:
    """The columns of :func:`rows_to_columns` (of one or many requests) as a pyarrow table."""
    return pa.table({f.name: pa.array(cols[f.name], type=_TYPES[f.kind]) for f in schema.features})


def rows_to_table(rows, schema, max_rows: int | None = None) -> pa.Table:
    """Validate ``rows`` (a list of objects) and return them as a pyarrow table of the schema's raw columns."""
    return columns_to_table(rows_to_columns(rows, schema, max_rows), schema)
