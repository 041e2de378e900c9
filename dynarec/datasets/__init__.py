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

from dynarec.data.prepare import prepare_file, prepare_table
from dynarec.data.schema import Schema
from dynarec.data.split import SplitSpec
from dynarec.data.table import TensorTable
from dynarec.datasets import aliccp, aliexpress, amazon, douban, kuairand, movielens, obd
from dynarec.datasets._util import Option
from dynarec.errors import DataError, DynarecError

_MODULES = {m.NAME: m for m in (movielens, douban, kuairand, aliccp, aliexpress, amazon, obd)}
DATASETS: dict[str, Callable[..., tuple[pa.Table, Schema]]] = {k: m.load for k, m in _MODULES.items()}
DATASET_OPTIONS: dict[str, dict[str, Option]] = {k: m.OPTIONS for k, m in _MODULES.items()}
DATASET_DOCS: dict[str, str] = {k: (m.__doc__ or "").strip() for k, m in _MODULES.items()}

__all__ = ["DATASETS", "DATASET_OPTIONS", "DATASET_DOCS", "Option", "load_dataset", "describe_dataset",
           "parse_options", "prepare_input"]


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


def prepare_input(source: str, out: str | Path, schema_file: str | None = None, raw: str | None = None,
                  fmt: str | None = None, options: dict | None = None, split: str | SplitSpec = "random",
                  fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, TensorTable]:
    """``dynarec data prepare``: a prepared folder in ``out`` from a data file with its schema (``schema_file``,
    whose ``read:`` options apply) or from a public dataset (``source`` = its loader name, ``raw`` = its folder,
    ``options`` for the loader). Returns: {split: TensorTable}.

    Example::

        tables = prepare_input("reviews.csv", "prepared/", schema_file="schema.yaml", split="stratified:domain")
        tables = prepare_input("movielens", "ml/", raw="raw/ml-100k", split="leave_last_out")
    """
    if raw:
        table, schema = load_dataset(source, raw, **(options or {}))
        return prepare_table(table, schema, out, split, fractions, seed, source=str(raw))
    if not schema_file:
        raise DataError("data prepare: --schema FILE is required for a data file (or give a dataset name and --raw DIR)")
    if options:
        raise DataError("data prepare: --option applies to a named dataset (with --raw); a data file takes its "
                        "reading options from the schema's read: section")
    return prepare_file(source, Schema.load(schema_file), out, split, fractions, seed, fmt)


def prepare_any(source: str, out: str | Path, schema_file: str | None = None, raw: str | None = None,
                fmt: str | None = None, options: dict | None = None, split: str | SplitSpec = "random",
                fractions=(0.8, 0.1, 0.1), seed: int = 0, out_of_core: bool = False,
                memory_budget: float | None = None, engine: str | None = None) -> str:
    """``dynarec data prepare`` -> the line it prints: :func:`prepare_input` in memory, or out of core
    (:func:`dynarec.data.outofcore.prepare_input_out_of_core`, bounded by ``memory_budget`` MB, default 1024)
    when asked or when ``source`` is a glob / folder; ``engine`` (``--engine``, implies out of core): a
    multi-worker engine of ``dynarec.data.engines`` for the per-file work (``local``: this process)."""
    if engine is not None or out_of_core or (not raw and not Path(source).is_file()):  # glob / folder: out of core
        budget = 1024 if memory_budget is None else memory_budget
        if engine not in (None, "local"):
            from dynarec.data.distprep import prepare_input_on_engine

            r = prepare_input_on_engine(engine, source, out, schema_file, raw, fmt, bool(options), split, fractions,
                                        seed, budget)
        else:
            from dynarec.data.outofcore import prepare_input_out_of_core

            r = prepare_input_out_of_core(source, out, schema_file, raw, fmt, bool(options), split, fractions, seed,
                                          budget)
        return (f"prepared {sum(r['rows'].values()):,} rows into {out} (out of core, {r['rows_per_s']:,.0f} rows/s "
                f"{'fit pass' if engine in (None, 'local') else engine + ', all passes'}): "
                + ", ".join(f"{k} {v:,}" for k, v in r["rows"].items()))
    if memory_budget is not None:
        raise DynarecError("data prepare: --memory-budget applies to an out-of-core prepare (--out-of-core, or a "
                           "glob / folder input)")
    tables = prepare_input(source, out, schema_file, raw, fmt, options, split, fractions, seed)
    return (f"prepared {sum(len(t) for t in tables.values()):,} rows into {out}: "
            + ", ".join(f"{k} {len(v):,}" for k, v in tables.items()))
