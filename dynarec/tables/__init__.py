"""Id-indexed tables: their specs (:class:`TableSpec`), their one owner per model (:class:`TableCollection`)
and the fused layout of the feature table (:mod:`dynarec.tables.fused`)."""
from dynarec.tables.collection import TableCollection, borrow, borrowed, table_for, unowned_tables  # noqa: F401
from dynarec.tables.spec import OPTIMIZER_GROUPS, TableSpec  # noqa: F401
