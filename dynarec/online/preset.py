"""Optimizer presets of online training (``online.preset``).

``pepnet_online``: PEPNet's deployment (Chang et al., KDD 2023, section 2.3): the embeddings change faster
than the DNN, so the two parts get different optimizers, **Adagrad with lr 0.05** on the embedding tables and
**Adam with lr 5e-6** on the dense part. This is a warm-streaming recipe (a model already trained offline
keeps learning); from scratch a dense lr near 1e-3 learns far faster (see docs/benchmarks.md, "Online
training"). A preset fills trainer keys that the config does not set itself: an explicit ``trainer.lr`` wins.
The paper's split is embeddings / DNN, so under this preset EVERY id-indexed table of the model (the feature
table, and also PPNet / PEPNet's gate-prior table, APG's condition table, ... which offline training keeps in
the dense group) trains with the embedding optimizer (:func:`apply_table_groups`). That also makes the reset
of a re-admitted id's rows exact: Adagrad's state is one accumulator per row, while Adam's bias correction
reads one step counter per table (:mod:`dynarec.tables.row_state`).

Example::

    >>> apply_preset("pepnet_online", {"lr": 1e-4})["lr"], TABLE_GROUP["pepnet_online"]
    (0.0001, 'embedding')
"""
from __future__ import annotations

from dynarec.errors import ConfigError

PRESETS: dict[str, dict] = {
    "pepnet_online": {"embedding_optimizer": "adagrad", "embedding_lr": 0.05, "dense_optimizer": "adam", "lr": 5e-6},
}


#: the optimizer group every id-indexed table of the model goes to under a preset (absent: the model's own)
TABLE_GROUP: dict[str, str] = {"pepnet_online": "embedding"}


def apply_table_groups(name: str | None, model) -> None:
    """Move every table of ``model`` to the preset's optimizer group (before its optimizers are built)."""
    if name in TABLE_GROUP:
        model.tables.set_group(TABLE_GROUP[name])


def apply_preset(name: str | None, trainer: dict) -> dict:
    """``trainer`` (the config's ``trainer:`` mapping) with the preset's keys added where it has none."""
    if name is None:
        return dict(trainer)
    if name not in PRESETS:
        raise ConfigError(f"online.preset: expected one of {' | '.join(PRESETS)} (or null), got {name!r}")
    return {**PRESETS[name], **trainer}
