"""Id-indexed tables: their specs (:class:`TableSpec`), their one owner per model (:class:`TableCollection`),
the fused layout of the feature table (:mod:`dynarec.tables.fused`) and the dynamic (evicting) index of
online training (:mod:`dynarec.tables.dynamic`, its policies in :mod:`dynarec.tables.eviction`)."""
from dynarec.tables.collection import TableCollection, borrow, borrowed, table_for, unowned_tables  # noqa: F401
from dynarec.tables.dynamic import DynamicIndex  # noqa: F401
from dynarec.tables.eviction import POLICIES, EvictionConfig, EvictionPolicy  # noqa: F401
from dynarec.tables.row_state import reset_slots  # noqa: F401
from dynarec.tables.spec import OPTIMIZER_GROUPS, TableSpec  # noqa: F401
