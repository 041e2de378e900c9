"""The model's schema for online training, and each pass file as the model's tensors.

Every ``dynamic: true`` feature is rewritten to name ONE logical table, :data:`GSET` (PEPNet's global shared
embedding table, Chang et al., KDD 2023, section 2.3), of ``max_rows + 1`` rows: row 0 is the shared default
row (ids not admitted), rows 1..max_rows are the dynamic index's slots. So every registered model trains
online unchanged. The other features use encoders fitted on the FIRST pass (values first seen later read id 0);
a schema that lists ``domain_values`` fixes the domain vocabulary up front (a domain born mid-stream then has
its own id instead of the unknown one)."""
from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa

from dynarec.data.encode import CategoricalEncoder, Encoders
from dynarec.data.prepare import ROW, read_raw, to_tensor_table
from dynarec.data.schema import Schema
from dynarec.errors import ConfigError
from dynarec.online.ids import raw_ids

GSET = "gset"


def dynamic_features(schema: Schema, table: str = "dynamic") -> list:
    """The features the index serves (schema order; none with ``online.table: static``), checked."""
    if table == "static":
        return []
    dyn = [f for f in schema.features if f.dynamic]
    names = {f.name for f in dyn}
    if schema.domain in names:
        raise ConfigError(f"schema: the domain feature '{schema.domain}' cannot be dynamic (the model has "
                          "per-domain parameters)")
    for f in schema.features:
        shared = [g.name for g in dyn if g.table == f.table and g.name != f.name]
        if shared and f.name not in names:
            raise ConfigError(f"schema: feature '{f.name}' shares table '{f.table}' with dynamic feature "
                              f"'{shared[0]}'; mark both dynamic or neither")
    if dyn and any(f.table == GSET and f.name not in names for f in schema.features):
        raise ConfigError(f"schema: table name '{GSET}' is reserved for the dynamic features in online training")
    return dyn


def static_view(schema: Schema, dynamic: list[str]) -> Schema:
    """The schema without the dynamic features, sharing the Feature objects of ``schema``."""
    return Schema(features=[f for f in schema.features if f.name not in dynamic], tasks=schema.tasks,
                  domain=schema.domain, user=schema.user, timestamp=schema.timestamp,
                  domain_values=list(schema.domain_values), read=schema.read)


def fit_schema(schema: Schema, first: pa.Table, table: str, max_rows: int, where: str):
    """-> (model schema, encoders of the static features, dynamic feature names), fitted on ``first`` (the
    first pass's raw table). ``schema`` itself is not changed."""
    s = copy.deepcopy(schema)
    dyn = [f.name for f in dynamic_features(s, table)]
    declared = list(s.domain_values)
    for f in s.features:
        f.dynamic = f.name in dyn
        if f.dynamic:
            f.table, f.vocab_size = GSET, max_rows + 1
    static = static_view(s, dyn)
    enc = Encoders(static).fit(first, where)
    if declared:
        dt = s.feature(s.domain).table
        enc.cat[dt] = CategoricalEncoder([str(v) for v in declared])
        for f in s.features:
            if f.table == dt:
                f.vocab_size = enc.cat[dt].size
        static.domain_values = declared
    s.domain_values = list(static.domain_values)
    return s, enc, dyn


def encoders_for(schema: Schema, dyn: list[str], d: dict) -> Encoders:
    """The static encoders saved with :meth:`Encoders.to_dict`, on the model schema ``schema`` (resume)."""
    return Encoders.from_dict(static_view(schema, dyn), d)


def encode_pass(path, schema: Schema, enc: Encoders, dyn: list[str], kinds: dict | None = None,
                notes: dict | None = None):
    """A raw pass file -> (TensorTable with the dynamic columns left at 0, {feature: raw ids Long [N] or
    [N, L]}, rows). The dynamic columns are filled with slots by the runner. ``kinds``: the id type of each
    dynamic feature recorded on the first pass (:func:`dynarec.online.ids.id_kinds`); ``notes`` collects the
    values an ``int`` feature had to hash."""
    t = read_raw(path, schema)
    table, raw = encode_rows(t, str(path), schema, enc, dyn, kinds, notes)
    return table, raw, t


def encode_rows(t: pa.Table, where: str, schema: Schema, enc: Encoders, dyn: list[str], kinds: dict | None = None,
                notes: dict | None = None, start: int = 0):
    """:func:`encode_pass` of raw rows ``t`` (the rows of a pass from raw index ``start`` on) -> (TensorTable,
    raw ids); row-wise, so a pass encoded piece by piece gives the rows of the pass encoded at once."""
    cols = enc.transform(t, where)
    raw = {}
    for name in dyn:
        f = schema.feature(name)
        raw[name] = raw_ids(t, f, (kinds or {}).get(name), notes)
        cols[name] = np.zeros(tuple(raw[name].shape), dtype=np.int64)
    cols[ROW] = np.arange(start, start + t.num_rows, dtype=np.int64)
    return to_tensor_table(schema, cols), raw
