"""The settings of ``dynarec online`` (the ``online:`` section of its config, or ``--set online.KEY=VALUE``).

The dynamic index (``table: dynamic``, :class:`dynarec.tables.dynamic.DynamicIndex`, its eviction config
built from these keys by :func:`eviction_config`) maps the raw ids of the
schema's ``dynamic: true`` features to slots of ONE shared table of ``max_rows`` slots + the default row
(PEPNet's global shared embedding table). ``table: static`` fits a vocabulary on the first pass instead (ids
first seen later read the unknown row); ``table: hash`` is the hashing trick into ``max_rows`` buckets (the
baselines of ``benchmarks/online_quality.py``).

Cadences: the tables' changed rows go into every pass's delta (embeddings change fast); the dense weights
(every parameter and buffer outside the tables) only every ``dense_every`` passes, so a serving copy that
applies the deltas keeps its dense part for ``dense_every`` passes (Monolith: sparse parameters sync often,
dense ones far less).

Admission: an id's slot is looked up before the step counts it, so the batch where an id is first admitted
still reads the default row, which thereby learns what a new id looks like (progressive validation scores
every new id with it); ``fresh_row: default`` starts an admitted id's rows from that default row, ``random``
from N(0, σ²) of the table's initialisation."""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Any

from dynarec.checks import rule
from dynarec.config import apply_overrides, build_dataclass, read_yaml_mapping, to_dict
from dynarec.errors import ConfigError
from dynarec.online.preset import PRESETS, apply_preset
from dynarec.tables.eviction import POLICIES, EvictionConfig
from dynarec.train.config import TrainerConfig

TABLES = ("dynamic", "static", "hash")
NO_EFFECT = ("epochs", "patience", "monitor", "checkpoint_every_steps")  # trainer keys of epoch training
MIN_STEPS_PER_PASS = 50  # the rule of `dynarec train`'s batch hint, per pass instead of per epoch
MIN_AUTO_BATCH = 32


@dataclass
class OnlineConfig:
    table: str = field(default="dynamic", metadata=rule(choices=TABLES))
    max_rows: int = field(default=100_000, metadata=rule(min=1))  # global budget: slots over all dynamic features
    caps: dict[str, int] = field(default_factory=dict)  # per dynamic feature: its most slots
    score: str = field(default="feature", metadata=rule(choices=tuple(POLICIES)))
    threshold: int = field(default=1, metadata=rule(min=1))  # occurrences in a pass before admission
    admit_prob: float | None = field(default=None, metadata=rule(min=0, max=1, min_open=True))  # Monolith
    expiry_passes: int | None = field(default=None, metadata=rule(min=1))
    min_updates: int = field(default=1, metadata=rule(min=1))  # updates needed within expiry_passes
    headroom: float = field(default=0.1, metadata=rule(min=0, max=1, max_open=True))
    decay: float = field(default=1.0, metadata=rule(min=0))  # distance_lfu exponent
    ttl_steps: int = field(default=1000, metadata=rule(min=1))  # ttl score
    gamma: float = field(default=0.5, metadata=rule(min=0, max=1, min_open=True))  # feature score decay per pass
    eviction_interval: int | None = field(default=None, metadata=rule(min=1))  # also evict every N steps
    fresh_row: str = field(default="default", metadata=rule(choices=("default", "random")))  # admitted rows
    dense_every: int = field(default=1, metadata=rule(min=1))  # dense weights in the delta every K passes
    shuffle: bool = False  # False: each pass is trained in file (time) order
    preset: str | None = field(default=None, metadata=rule(choices=tuple(PRESETS)))
    # each pass trained with the batch of pass_batch() (at most trainer.batch_size); off when the config sets
    # trainer.batch_size (then every pass uses it)
    auto_batch: bool = True
    # > 0: each pass file read in chunks of about this many MB, never whole (dynarec/online/chunks.py); 0: whole
    chunk_mb: float = field(default=0.0, metadata=rule(min=0))
    # chunked passes: exact progressive metrics while the pass's scores fit this, else histogram AUC + bound
    eval_budget_mb: float = field(default=1024.0, metadata=rule(min=0, min_open=True))


@dataclass
class OnlineExperiment:
    model: str = "pepnet"
    params: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    seed: int = 0


def load_online_config(path: str | None, sets: list[str] | None = None, model: str | None = None) -> OnlineExperiment:
    """The experiment of ``dynarec online``: the YAML ``path`` (keys model, params, trainer, online, seed), then
    ``--model`` and the ``--set`` overrides (``model.X`` = ``params.X``); the preset fills trainer keys the
    config leaves unset. Every key and value is checked (one-line ConfigError)."""
    d: dict[str, Any] = read_yaml_mapping(path) if path else {}
    if model is not None:
        d["model"] = model
    apply_overrides(d, sets or [])
    where = path or "config"
    for k in ("trainer", "online"):
        if k in d and not isinstance(d[k], dict):
            raise ConfigError(f"{where}.{k}: expected a mapping, got {type(d[k]).__name__}")
    preset = (d.get("online") or {}).get("preset")
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(f"{where}.online.preset: expected one of {' | '.join(PRESETS)} (or null), got {preset!r}")
        d["trainer"] = apply_preset(preset, d.get("trainer") or {})
    t = d.get("trainer") or {}
    if "batch_size" in t and "auto_batch" not in (d.get("online") or {}):
        d.setdefault("online", {})["auto_batch"] = False  # an explicit batch size is used as it is
    cfg = build_dataclass(OnlineExperiment, d, where)
    _policy_keys_have_effect(d.get("online") or {}, cfg.online.score, where)
    for k in NO_EFFECT:
        if k in (d.get("trainer") or {}):
            raise ConfigError(f"{where}.trainer.{k}: has no effect in online training (each pass is trained on "
                              "once, after it is scored)")
    t = cfg.trainer
    for k, v, ok in (("device", t.device, ("auto", "cpu")), ("precision", t.precision, ("fp32",)),
                     ("distributed", t.distributed, ("ddp",))):
        if v not in ok:
            raise ConfigError(f"{where}.trainer.{k}: online training runs in one CPU process; got {v!r}")
    if not cfg.online.chunk_mb and "eval_budget_mb" in (d.get("online") or {}):
        raise ConfigError(f"{where}.online.eval_budget_mb: applies to passes read in chunks; set online.chunk_mb > 0 "
                          "(a whole pass is evaluated exactly in memory)")
    if cfg.online.chunk_mb and cfg.online.shuffle:
        raise ConfigError(f"{where}.online.shuffle: permutes a whole pass, which online.chunk_mb > 0 never holds; "
                          "use one of them")
    for k, v in cfg.online.caps.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}.online.caps.{k}: expected an integer >= 1, got {v!r}")
    return cfg


def _policy_keys_have_effect(given: dict, score: str, where: str) -> None:
    """A policy parameter (``decay``, ``ttl_steps``, ``gamma``, ...) given for a score that does not read it is
    refused: an accepted key always has an effect."""
    mine = {f.name for f in dataclasses.fields(POLICIES[score])}
    for name, pcls in POLICIES.items():
        for f in dataclasses.fields(pcls):
            if f.name in given and f.name not in mine:
                raise ConfigError(f"{where}.online.{f.name}: has no effect with online.score={score} (it is a "
                                  f"parameter of score {name})")


def pass_batch(rows: int, cfg: OnlineExperiment) -> int:
    """The batch size of a pass of ``rows`` rows: with ``online.auto_batch``, the largest power of two that gives
    at least :data:`MIN_STEPS_PER_PASS` steps, between :data:`MIN_AUTO_BATCH` and ``trainer.batch_size``; else
    ``trainer.batch_size``. Each pass is trained on once, so a pass of a few thousand rows at batch 4,096 takes
    2 steps (progressive AUC 0.833 against 0.890 at batch 256 on MovieLens passes; docs/benchmarks.md).

    Example::

        >>> from dynarec.online.config import OnlineExperiment
        >>> pass_batch(4700, OnlineExperiment()), pass_batch(10_000_000, OnlineExperiment())
        (64, 4096)
    """
    cap = cfg.trainer.batch_size
    if not cfg.online.auto_batch:
        return cap
    b = 1 << max(0, (rows // MIN_STEPS_PER_PASS).bit_length() - 1)
    return max(min(b, cap), min(MIN_AUTO_BATCH, cap))


def run_config(cfg: OnlineExperiment) -> dict:
    """The config as a run records it (``online.json``, checkpoints): without the trainer keys of epoch training,
    which mean nothing here."""
    d = to_dict(cfg)
    for k in NO_EFFECT:
        d["trainer"].pop(k, None)
    return d


def eviction_config(cfg: OnlineConfig) -> EvictionConfig:
    """The one eviction config of the dynamic index (``TableSpec.eviction`` of the tables it indexes)."""
    return EvictionConfig.build(cfg.score, strict=False, decay=cfg.decay, ttl_steps=cfg.ttl_steps, gamma=cfg.gamma,
                                headroom=cfg.headroom, interval=cfg.eviction_interval, expiry_passes=cfg.expiry_passes,
                                min_updates=cfg.min_updates, threshold=cfg.threshold, admit_prob=cfg.admit_prob)


def check_caps(cfg: OnlineConfig, dynamic: list[str]) -> list[int]:
    """Per dynamic feature (in ``dynamic`` order), its cap (``max_rows`` when not given); a ConfigError for a
    cap naming a feature that is not dynamic."""
    for k in cfg.caps:
        if k not in dynamic:
            raise ConfigError(f"online.caps.{k}: not a dynamic feature of the schema (dynamic: "
                              f"{', '.join(dynamic) or 'none'})")
    return [min(cfg.caps.get(f, cfg.max_rows), cfg.max_rows) for f in dynamic]
