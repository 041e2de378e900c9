"""The fused layout: several logical tables laid end to end in ONE physical table, so every field of a
batch is embedded with a single gather (each field adds its logical table's row offset to its ids; fields
naming the same logical table share rows). :class:`dynarec.nn.embedding.FeatureEmbedding` runs it."""
from __future__ import annotations

from dataclasses import dataclass

from dynarec.tables.spec import TableSpec


@dataclass(frozen=True)
class Field:
    """One embedded input: ``kind`` is ``sparse`` (one id per row) or ``sequence`` (ids pooled by ``pooling``)."""

    name: str
    table: str  # logical table (fields naming the same one share rows)
    vocab_size: int
    kind: str = "sparse"
    pooling: str = "mean"


@dataclass(frozen=True)
class FusedLayout:
    """Where each logical table and field lives in the physical table ``spec``.

    ``field_names``: sparse fields then sequences (the order of the embedded field axis);
    ``sparse_offsets`` / ``seq_offsets``: first row of each sparse / sequence field's logical table."""

    spec: TableSpec
    table_offsets: dict[str, int]
    table_sizes: dict[str, int]
    field_names: tuple[str, ...]
    sparse_offsets: tuple[int, ...]
    seq_names: tuple[str, ...]
    seq_offsets: tuple[int, ...]
    seq_pooling: tuple[str, ...]

    def table_rows(self, name: str) -> slice:
        """Rows of the physical table that belong to logical table ``name``."""
        o = self.table_offsets[name]
        return slice(o, o + self.table_sizes[name])


def fused_layout(name: str, fields: list[Field], dim: int, init_std: float | None = 1e-2,
                 group: str = "embedding") -> FusedLayout:
    """Lay the logical tables of ``fields`` end to end (first-seen order); a logical table has as many rows as
    the largest vocabulary among its fields (at least 1)."""
    sizes: dict[str, int] = {}
    for f in fields:
        sizes[f.table] = max(sizes.get(f.table, 0), max(f.vocab_size, 1))
    offsets, total = {}, 0
    for t, n in sizes.items():
        offsets[t] = total
        total += n
    sparse = [f for f in fields if f.kind != "sequence"]
    seqs = [f for f in fields if f.kind == "sequence"]
    spec = TableSpec(name, total, dim, init_std, group, tuple(f.name for f in fields),
                     offsets=tuple(offsets[f.table] for f in fields))
    return FusedLayout(spec, offsets, sizes, tuple(f.name for f in sparse + seqs),
                       tuple(offsets[f.table] for f in sparse), tuple(f.name for f in seqs),
                       tuple(offsets[f.table] for f in seqs), tuple(f.pooling for f in seqs))


def schema_fields(schema) -> list[Field]:
    """The embedded features of a :class:`~dynarec.data.schema.Schema` (sparse, then sequences)."""
    return ([Field(f.name, f.table, f.vocab_size, "sparse") for f in schema.sparse]
            + [Field(f.name, f.table, f.vocab_size, "sequence", f.pooling) for f in schema.sequences])
