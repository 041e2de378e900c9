"""The library steps behind ``dynarec data synthetic``, ``dynarec data prepare`` and ``dynarec train``.

Staged here while ``dynarec/data`` and ``dynarec/train`` are being restructured: :func:`write_synthetic` and
:func:`prepare_input` belong next to ``prepare_table`` in ``dynarec/data/prepare.py``, :func:`train_experiment`
next to ``train_model`` in ``dynarec/train/run.py``."""
from __future__ import annotations

import json
from pathlib import Path

from dynarec.errors import DynarecError


def write_synthetic(out: str | Path, rows: int, seed: int = 0, split: str = "random") -> dict:
    """The built-in synthetic data as a prepared folder in ``out``, plus its true probabilities
    ``truth_<split>.npz`` (``p_click``, ``p_conversion``) row-aligned with each prepared split.

    Args:
        rows: raw rows before the split (80/10/10).
        seed: the generator's and the split's seed.
        split: random | temporal.
    Returns: {split: TensorTable}.
    """
    import numpy as np

    from dynarec.data.prepare import prepare_table, split_indices
    from dynarec.data.synthetic import generate, synthetic_schema

    t, truth = generate(rows, seed)
    out = Path(out)
    schema = synthetic_schema()
    tables = prepare_table(t, schema, out, split=split, seed=seed)
    # prepare_table does not return its row indices: the same deterministic split, recomputed
    for s, ix in split_indices(t, schema, split, seed=seed).items():
        np.savez(out / f"truth_{s}.npz", p_click=truth["p_click"][ix], p_conversion=truth["p_conversion"][ix])
    return tables


def prepare_input(source: str, out: str | Path, schema_file: str | None = None, raw: str | None = None,
                  fmt: str | None = None, options: dict | None = None, split: str = "random",
                  seed: int = 0) -> dict:
    """A prepared folder in ``out`` from a data file with its schema (``schema_file``) or from a public
    dataset (``source`` = its loader name, ``raw`` = its folder, ``options`` for the loader).
    Returns: {split: TensorTable}."""
    from dynarec.data.prepare import prepare_table, read_table
    from dynarec.data.schema import Schema

    if raw:
        from dynarec.datasets import load_dataset

        table, schema = load_dataset(source, raw, **(options or {}))
    else:
        if not schema_file:
            raise DynarecError("data prepare: --schema FILE is required for a data file (or give a dataset name and --raw DIR)")
        schema = Schema.load(schema_file)
        table = read_table(source, fmt, columns=schema.columns())
    return prepare_table(table, schema, out, split=split, seed=seed)


def train_experiment(cfg, console=None):
    """Train ``cfg`` (an ``ExperimentConfig``) on its prepared folder: checkpoint (with the folder's
    encoders), log and ``config.json`` in ``cfg.out``. Returns the ``train_model`` result."""
    from dynarec.config import to_dict
    from dynarec.data.prepare import load_prepared
    from dynarec.train.run import train_model

    if not cfg.data.path:
        raise DynarecError("train: no data; give --data DIR (a prepared folder) or data.path in the config")
    schema, tables = load_prepared(cfg.data.path)
    enc = json.loads((Path(cfg.data.path) / "encoders.json").read_text())
    res = train_model(cfg.model, schema, tables, cfg.params, cfg.trainer, cfg.seed, cfg.out, enc, console=console)
    Path(cfg.out, "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    return res
