"""Which config keys have an effect on a model: every key a model accepts changes the model, or it is a
ConfigError naming it.

A model class declares the keys of its Config that do NOT act on it, once, in ``no_effect`` (merged along
the class hierarchy by :func:`no_effect_rules`): ``{key: reason}`` for a key it never uses, or
``{key: when(other=value, ...)}`` for a key used only in combination with another option::

    no_effect = {"tower_hidden": "it has no per-task towers",
                 "aux_hidden": when(aux=True)}

:func:`check_keys` (called by ``build_model`` with the user's keys and by ``BaseModel.__init__`` on every
config) raises ``model.dnn: key 'tower_hidden' has no effect on dnn (it has no per-task towers)``."""
from __future__ import annotations

import dataclasses

from dynarec.errors import ConfigError


class when:
    """A key used only when every ``other=value`` holds (a value may be a tuple of accepted values)."""

    def __init__(self, **conds):
        self.conds = {k: v if isinstance(v, tuple) else (v,) for k, v in conds.items()}

    def reason(self, config) -> str | None:
        """None when the key is used with ``config``, else why it is not."""
        bad = [k for k, v in self.conds.items() if getattr(config, k) not in v]
        if not bad:
            return None
        return "only used with " + " and ".join(
            f"{k}: {' | '.join(_show(x) for x in self.conds[k])}" for k in bad)


class unless:
    """A key used unless ``other`` has a non-empty / true value (``gate_groups`` when ``gate_features`` is set)."""

    def __init__(self, other: str, why: str):
        self.other, self.why = other, why

    def reason(self, config) -> str | None:
        return self.why if getattr(config, self.other) else None


class depends:
    """A key whose use is decided by ``fn(config) -> reason | None`` (several keys involved)."""

    def __init__(self, fn):
        self.fn = fn

    def reason(self, config) -> str | None:
        return self.fn(config)


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def no_effect_rules(cls) -> dict:
    """``no_effect`` of ``cls`` and its bases (a subclass entry wins; ``None`` removes a base's entry)."""
    out: dict = {}
    for k in reversed(cls.__mro__):
        out.update(k.__dict__.get("no_effect", {}))
    return {k: v for k, v in out.items() if v is not None}


def inactive_keys(cls, config) -> dict[str, str]:
    """``{key: reason}`` for every key of ``config`` that has no effect on model class ``cls``."""
    out = {}
    for key, rule in no_effect_rules(cls).items():
        if not hasattr(config, key):
            continue
        why = rule if isinstance(rule, str) else rule.reason(config)
        if why:
            out[key] = why
    return out


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def check_keys(cls, config, name: str, given=None) -> None:
    """ConfigError for the first key without effect that the user set: one of ``given`` (the keys of a config
    dict), or, from Python (``given=None``), a field whose value differs from its default."""
    inactive = inactive_keys(cls, config)
    if not inactive:
        return
    if given is None:
        given = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) != _default(f)]
    for key in given:
        if key in inactive:
            raise ConfigError(f"model.{name}: key '{key}' has no effect on {name} ({inactive[key]})")
