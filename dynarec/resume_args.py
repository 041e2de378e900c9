"""Resume as users type it: ``dynarec train`` with the run's own arguments and ``--resume DIR`` appended.

The interrupted run's config (its work folder's ``config.json``) is what the resumed run uses. Every
argument given next to ``--resume`` (``--model``, ``--data``, ``--epochs``, ``--batch-size``, ``--lr``,
``--seed``, ``--out``, each ``--set KEY=VALUE`` and every key of a ``--config`` file) must equal the saved
run's value at the same key; the ones that differ are refused in one line naming each of them with both
values. Keys the user did not give are not compared (the saved run's value is used, not today's default).
``trainer.progress`` (the progress bar, no effect on the result) may differ and is applied, and so may
``trainer.distributed`` / ``trainer.sharding`` (where the run continues: a TorchRec run's sharded resume
point loads into another plan or one process, :mod:`dynarec.train.sharded_resume`).

Example::

    >>> from dynarec.experiment import ExperimentConfig
    >>> saved = ExperimentConfig(model="dnn", out="runs/r")
    >>> differing(saved, layers_of(None, {"model": "dnn", "trainer.epochs": None}, []))
    []
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dynarec.errors import DynarecError

FLAGS = {"model": "--model", "data.path": "--data", "trainer.epochs": "--epochs",
         "trainer.batch_size": "--batch-size", "trainer.lr": "--lr", "seed": "--seed", "out": "--out"}
FREE = ("trainer.progress",  # may differ from the saved run: applied to the resumed one
        "trainer.distributed", "trainer.sharding")  # where it runs: a TorchRec run's shards reshard (2 -> 1)
PATHS = ("data.path", "out")  # compared as resolved paths


def _leaves(d: dict, pre: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{pre}{k}."))
        else:
            out[f"{pre}{k}"] = v
    return out


def layers_of(config: str | None, flags: dict[str, Any], sets: list[str] | None) -> tuple[dict, dict[str, str]]:
    """(the config dict the arguments build, {key: the argument that set it}): the ``--config`` file, then
    the flags (``{key: value}``, ``None`` = not given), then each ``--set`` (``model.X`` = ``params.X``)."""
    from dynarec.config import apply_overrides, read_yaml_mapping

    d: dict[str, Any] = read_yaml_mapping(config) if config else {}
    origin = {k: f"--config {config}: {k}" for k in _leaves(d)}
    for k, v in flags.items():
        if v is None:
            continue
        cur = d
        for p in k.split(".")[:-1]:
            cur = cur.setdefault(p, {})
        cur[k.split(".")[-1]] = v
        origin[k] = FLAGS.get(k, k)
    for s in sets or []:
        before = _leaves(apply_overrides({}, [s]))
        apply_overrides(d, [s])
        for k in before:
            origin[k] = f"--set {s.split('=', 1)[0]}"
    return d, origin


def _at(d: dict, key: str):
    cur: Any = d
    for p in key.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def differing(saved, layers: tuple[dict, dict[str, str]]) -> list[str]:
    """``"ARG (VALUE; the interrupted run has SAVED)"`` for every given argument whose value differs from the
    saved ``ExperimentConfig``; the given config is checked (values, types) as a new run's would be."""
    from dynarec.config import build_dataclass, to_dict
    from dynarec.experiment import ExperimentConfig

    d, origin = layers
    if not d:
        return []
    new = to_dict(build_dataclass(ExperimentConfig, d, "config"))
    old = to_dict(saved)
    out = []
    for key, arg in origin.items():
        if key in FREE:
            continue
        a, b = _at(new, key), _at(old, key)
        if key in PATHS and a is not None and b is not None:
            same = Path(str(a)).resolve() == Path(str(b)).resolve()
        else:
            same = a == b
        if not same:
            out.append(f"{arg} ({a}; the interrupted run has {b})")
    return out


def check_resume_args(saved, resume_dir: str, config: str | None, flags: dict[str, Any],
                      sets: list[str] | None) -> None:
    """Refuse (one line, every differing argument named) the arguments given with ``--resume`` that differ
    from the interrupted run's config ``saved``; apply the ones in ``FREE``."""
    flags = {**flags, "out": flags.get("out")}
    layers = layers_of(config, flags, sets)
    if layers[1].get("out") == "--out" and Path(str(flags["out"])).resolve() != Path(resume_dir).resolve():
        raise DynarecError(f"train --resume: --out {flags['out']} is not the resumed run's folder {resume_dir}")
    bad = differing(saved, layers)
    if bad:
        raise DynarecError("train --resume: the interrupted run was started with other values: " + ", ".join(bad)
                           + "; drop them (the resumed run keeps its own) or start a new run without --resume")
    for key in FREE:
        if key in layers[1]:
            section, name = key.split(".")
            setattr(getattr(saved, section), name, _at(layers[0], key))
