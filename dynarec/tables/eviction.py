"""Eviction policies of the dynamic index as objects, and the one eviction config a table carries
(``TableSpec.eviction``).

As TorchRec's ``MCHEvictionPolicy`` (``torchrec/modules/mc_modules.py``) declares the per-row metadata it
needs, each policy here declares the per-slot state it reads (:attr:`EvictionPolicy.state`, names from
:data:`SLOT_STATE`); the index keeps exactly the union of what its policy and its expiry read, and nothing
else. Scores are higher = kept; for a slot with ``count`` updates since admission, last update at step
``last`` and current step ``t``:

- ``lfu``: ``count`` (TorchRec MCH LFU).
- ``lru``: ``last`` (same order as TorchRec's ``-(t - last + 1)^decay``).
- ``distance_lfu``: ``count / (t - last + 1)^decay`` (TorchRec DistanceLFU).
- ``ttl``: remaining time to live ``last + ttl_steps - t`` (HierarchicalKV / MPZCH TTL); with expiry on, ids
  past it expire at the pass end.
- ``feature`` (dynarec choice): the exponentially decayed count ``dcount <- gamma * dcount + n_pass`` at every
  pass end. It keeps LFU's frequency signal but forgets old popularity at half-life ``log(0.5)/log(gamma)``
  passes, so ids that drifted out of fashion leave before fresh popular ones (PEPNet asks for a score that is
  neither plain LFU nor LRU; its formula is not published).

A new score is one class here with ``@register`` (its parameters are its dataclass fields, read by
:meth:`EvictionConfig.build` from keys of the same name).

Example::

    >>> cfg = EvictionConfig.build("distance_lfu", decay=2.0, headroom=0.2, threshold=3)
    >>> cfg.policy, sorted(cfg.state)
    (DistanceLfu(decay=2.0), ['count', 'last'])
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch

#: Per-slot state an index can keep: ``count`` (updates since admission), ``last`` (step of the last update),
#: ``pcount`` (updates in the current pass), ``dcount`` (float64, a per-pass decayed count).
SLOT_STATE = ("count", "last", "pcount", "dcount")

#: name -> policy class; :func:`register` adds one.
POLICIES: dict[str, type] = {}


def register(cls):
    """Class decorator: ``POLICIES[cls.name] = cls``."""
    if cls.name in POLICIES:
        raise ValueError(f"eviction policy '{cls.name}' registered twice")
    POLICIES[cls.name] = cls
    return cls


class EvictionPolicy:
    """A score over the slots in use. ``m`` is the index: it holds ``count``, ``last``, ``pcount`` (Long [N]) and
    ``dcount`` (float64 [N]), up to date for the names in :attr:`state` (the others stay 0)."""

    name: ClassVar[str] = ""
    state: ClassVar[frozenset] = frozenset()

    def scores(self, m, t: int) -> torch.Tensor:
        """float64 [N]: higher = kept."""
        raise NotImplementedError

    def end_pass(self, m) -> None:
        """At each pass end, before expiry and eviction (default: nothing)."""

    def expired(self, m, t: int) -> torch.Tensor | None:
        """Bool [N] of slots past their own lifetime, checked with expiry on (default: none)."""
        return None


@register
@dataclass(frozen=True)
class Lfu(EvictionPolicy):
    name: ClassVar[str] = "lfu"
    state: ClassVar[frozenset] = frozenset({"count"})

    def scores(self, m, t):
        return m.count.double()


@register
@dataclass(frozen=True)
class Lru(EvictionPolicy):
    name: ClassVar[str] = "lru"
    state: ClassVar[frozenset] = frozenset({"last"})

    def scores(self, m, t):
        return m.last.double()


@register
@dataclass(frozen=True)
class DistanceLfu(EvictionPolicy):
    decay: float = 1.0
    name: ClassVar[str] = "distance_lfu"
    state: ClassVar[frozenset] = frozenset({"count", "last"})

    def scores(self, m, t):
        return m.count.double() / (t - m.last + 1).double() ** self.decay


@register
@dataclass(frozen=True)
class Ttl(EvictionPolicy):
    ttl_steps: int = 1000
    name: ClassVar[str] = "ttl"
    state: ClassVar[frozenset] = frozenset({"last"})

    def scores(self, m, t):
        return (m.last + self.ttl_steps - t).double()

    def expired(self, m, t):
        return m.last + self.ttl_steps < t


@register
@dataclass(frozen=True)
class Feature(EvictionPolicy):
    gamma: float = 0.5
    name: ClassVar[str] = "feature"
    state: ClassVar[frozenset] = frozenset({"pcount", "dcount"})

    def scores(self, m, t):
        return m.dcount.clone()

    def end_pass(self, m):
        m.dcount.mul_(self.gamma).add_(m.pcount)


@dataclass(frozen=True)
class EvictionConfig:
    """What a dynamic index does with its slots: admission, expiry, eviction.

    Args:
        policy: the score (an :class:`EvictionPolicy`).
        headroom: at eviction each feature keeps at most ``floor(cap * (1 - headroom))`` slots and the table
            ``floor(capacity * (1 - headroom))`` (room for the next pass's new ids).
        interval: also evict every ``interval`` steps (None: at pass ends only).
        expiry_passes / min_updates: ids with fewer than ``min_updates`` updates in the last ``expiry_passes``
            passes expire (None: never).
        threshold: occurrences before admission. admit_prob: Monolith's probability per occurrence (admit with
            ``1 - (1 - p)^count``; None: the count threshold).
    """

    policy: EvictionPolicy = field(default_factory=Lfu)
    headroom: float = 0.1
    interval: int | None = None
    expiry_passes: int | None = None
    min_updates: int = 1
    threshold: int = 1
    admit_prob: float | None = None

    def __post_init__(self):
        if not isinstance(self.policy, EvictionPolicy):
            raise TypeError(f"eviction policy: expected an EvictionPolicy, got {self.policy!r}")

    @property
    def state(self) -> frozenset:
        """Per-slot state the index must keep: the policy's, plus ``pcount`` with expiry on."""
        return self.policy.state | (frozenset({"pcount"}) if self.expiry_passes else frozenset())

    @classmethod
    def build(cls, score: str = "lfu", strict: bool = True, **kw) -> "EvictionConfig":
        """The config of policy ``score`` (a name in :data:`POLICIES`) from flat keys: those named after the
        policy's fields go to the policy, the rest to this config. ``strict=False`` drops policy parameters of
        other policies (a flat config that lists them all, as ``online:``)."""
        if score not in POLICIES:
            raise ValueError(f"score: expected one of {tuple(POLICIES)}, got {score!r}")
        pcls = POLICIES[score]
        mine = {f.name for f in dataclasses.fields(pcls)}
        other = {f.name for c in POLICIES.values() for f in dataclasses.fields(c)} - mine
        own = {f.name for f in dataclasses.fields(cls)} - {"policy"}
        unknown = [k for k in kw if k not in mine | own and (strict or k not in other)]
        if unknown:
            raise TypeError(f"eviction: unknown key(s) {unknown} for score {score!r}")
        return cls(pcls(**{k: v for k, v in kw.items() if k in mine}), **{k: v for k, v in kw.items() if k in own})
