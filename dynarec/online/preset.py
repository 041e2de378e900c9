"""Optimizer presets of online training (``online.preset``).

``pepnet_online``: PEPNet's deployment (Chang et al., KDD 2023, section 2.3): the embeddings change faster
than the DNN, so the two parts get different optimizers, **Adagrad with lr 0.05** on the embedding tables and
**Adam with lr 5e-6** on the dense part. This is a warm-streaming recipe (a model already trained offline
keeps learning); from scratch a dense lr near 1e-3 learns far faster (see docs/benchmarks.md, "Online
training"). A preset fills trainer keys that the config does not set itself: an explicit ``trainer.lr`` wins.
"""
from __future__ import annotations

from dynarec.errors import ConfigError

PRESETS: dict[str, dict] = {
    "pepnet_online": {"embedding_optimizer": "adagrad", "embedding_lr": 0.05, "dense_optimizer": "adam", "lr": 5e-6},
}


def apply_preset(name: str | None, trainer: dict) -> dict:
    """``trainer`` (the config's ``trainer:`` mapping) with the preset's keys added where it has none."""
    if name is None:
        return dict(trainer)
    if name not in PRESETS:
        raise ConfigError(f"online.preset: expected one of {' | '.join(PRESETS)} (or null), got {name!r}")
    return {**PRESETS[name], **trainer}
