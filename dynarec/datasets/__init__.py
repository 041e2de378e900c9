"""Loaders for public multi-domain / multi-task CTR datasets, each from the dataset's documented raw format.

``load_dataset(name, raw_dir, **options) -> (pyarrow.Table, Schema)`` reads the raw files; then
``dynarec.data.prepare.prepare_table(table, schema, out=DIR, split=..., seed=...)`` splits, fits the
encoders on train and writes the prepared folder (``dynarec data prepare <name> --raw DIR --out DIR``).

``DATASETS`` maps a name to its loader, ``DATASET_OPTIONS`` to its options (``Option``: default, help,
choices), ``DATASET_DOCS`` to the loader module's docstring (for ``--help``-style listings).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from dynarec.data.schema import Schema
from dynarec.datasets import aliccp, aliexpress, amazon, douban, kuairand, movielens, obd
from dynarec.datasets._util import Option
from dynarec.errors import DataError

_MODULES = {m.NAME: m for m in (movielens, douban, kuairand, aliccp, aliexpress, amazon, obd)}
DATASETS: dict[str, Callable[..., tuple[pa.Table, Schema]]] = {k: m.load for k, m in _MODULES.items()}
DATASET_OPTIONS: dict[str, dict[str, Option]] = {k: m.OPTIONS for k, m in _MODULES.items()}
DATASET_DOCS: dict[str, str] = {k: (m.__doc__ or "").strip() for k, m in _MODULES.items()}

__all__ = ["DATASETS", "DATASET_OPTIONS", "DATASET_DOCS", "Option", "load_dataset", "describe_dataset",
           "parse_options"]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"unknown dataset '{name}'{hint}; known: {', '.join(sorted(DATASETS))}")


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults + given options, each coerced to its type; unknown option -> DataError naming the valid ones."""
    _check_name(name)
    spec = DATASET_OPTIONS[name]
    out = {k: o.default for k, o in spec.items()}
    for k, v in options.items():
        if k not in spec:
            close = difflib.get_close_matches(k, spec, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(f"{name}: unknown option '{k}'{hint}; valid options: {', '.join(spec)}")
        out[k] = spec[k].coerce(v, k, name)
    return out


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """CLI ``--option k=v`` strings -> dict (values stay strings; ``load_dataset`` coerces them)."""
    from dynarec.config import key_value

    out = {}
    for s in pairs or []:
        k, v = key_value(s, "--option", DataError)
        out[k.strip()] = v.strip()
    return out


def load_dataset(name: str, raw_dir: str | Path, **options) -> tuple[pa.Table, Schema]:
    """Read dataset ``name`` from its raw files in ``raw_dir`` -> (raw pyarrow table, Schema).

    Options are validated against ``DATASET_OPTIONS[name]`` (strings from the CLI are coerced)."""
    opts = resolve_options(name, options)
    return DATASETS[name](Path(raw_dir), **opts)


def describe_dataset(name: str) -> str:
    """Docstring + options of one loader, for the CLI."""
    _check_name(name)
    lines = [DATASET_DOCS[name], "", "options:"]
    lines += [f"  {k}: {o.describe()}" for k, o in DATASET_OPTIONS[name].items()]
    return "\n".join(lines)
