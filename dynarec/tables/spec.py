"""TableSpec: what the rest of the code needs to know about one id-indexed table.

A model builds its specs from the schema and hands them to its :class:`~dynarec.tables.TableCollection`,
the one owner of every table of the model (eviction, sharding and delta export each need one place that
knows them all)."""
from __future__ import annotations

from dataclasses import dataclass

from dynarec.tables.eviction import EvictionConfig

#: ``embedding``: the embedding optimizer (row-wise Adagrad by default; sparse or dense gradients, see
#: ``dynarec/train/optim.py``). ``dense``: trained with the dense parameters by the dense optimizer.
OPTIMIZER_GROUPS = ("embedding", "dense")


@dataclass(frozen=True)
class TableSpec:
    """One id-indexed table.

    Args:
        name: unique within the model's collection (its ``state_dict`` key is ``tables.<name>.weight``).
        rows: number of ids (row 0 is the padding / missing id where the features use one).
        dim: width of a row.
        init_std: ``None`` keeps torch's ``nn.Embedding`` default N(0, 1); ``0`` zeros; ``> 0`` N(0, init_std²).
        group: optimizer group, one of :data:`OPTIMIZER_GROUPS`.
        features: names of the features (or inputs) whose ids index this table.
        eviction: the :class:`~dynarec.tables.eviction.EvictionConfig` of the dynamic index whose slots index
            this table's rows of ``features`` (``None``: rows are never evicted). Online training sets it on
            every table serving a dynamic feature (:meth:`TableCollection.set_eviction`) and builds its index
            from it (:func:`dynarec.online.state.build_index`).
        offsets: first row of each feature's ids, parallel to ``features`` (feature ``features[k]``'s id ``i``
            is row ``offsets[k] + i``); empty when unknown. Online training resets the rows of evicted ids
            through it.
    """

    name: str
    rows: int
    dim: int
    init_std: float | None = None
    group: str = "dense"
    features: tuple[str, ...] = ()
    eviction: EvictionConfig | None = None
    offsets: tuple[int, ...] = ()

    def __post_init__(self):
        if self.group not in OPTIMIZER_GROUPS:
            raise ValueError(f"table {self.name}: group must be one of {OPTIMIZER_GROUPS}, got {self.group!r}")
        if self.rows < 1 or self.dim < 1:
            raise ValueError(f"table {self.name}: rows and dim must be >= 1, got {self.rows} x {self.dim}")
        if self.offsets and len(self.offsets) != len(self.features):
            raise ValueError(f"table {self.name}: {len(self.offsets)} offsets for {len(self.features)} features")
