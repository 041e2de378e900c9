"""The TorchRec adapter: a model's fused feature tables as TorchRec ``EmbeddingBagCollection`` s, one
TorchRec table per logical table of the :class:`~dynarec.tables.fused.FusedLayout` (TorchRec shards per
table; the fused physical table has no per-table boundary it could use).

:func:`attach` replaces each :class:`~dynarec.nn.embedding.FeatureEmbedding` of a model by a
:class:`TorchRecFeatures` with the same call (``(sparse [B, S], sequences) -> [B, S + n_seq, dim]``); the
model's code is unchanged. Every lookup goes through the (sharded) collection, in training and in evaluation: sparse fields
are one id per row, sequence fields jagged bags without their padding ids, mean pooling as per-id weights
``1 / length`` (the ``per_sample_weights`` of ``FeatureEmbedding``). A model built inside
:func:`sharded_build` has its TorchRec tables without storage (:mod:`dynarec.tables.deferred`): each rank's
:meth:`TorchRecFeatures.scatter` replays their initialisation into its shards; a model built eagerly has
its fused table RELEASED once the shards hold its rows (:meth:`TorchRecFeatures.release`). Either way a
rank holds only its shards during the fit. A sharded lookup is a collective call: every rank must run the same number of forwards at the
same batch size (:func:`dynarec.train.distributed.gather_predictions` pads the ranks' slices for that).
While attached, ``model.state_dict()`` leaves the collection's keys out and holds this rank's shards under
``<path>.local_shard.<i>`` instead (what early stopping's best-state copy keeps; loading such a state puts
them back into the shards). :meth:`TorchRecFeatures.consolidate` assembles the trained table on ONE rank
at the fit's end (point-to-point, shard by shard) and :func:`detach` puts the original layers back, so the
checkpoint written by rank 0 is the usual one.

Other tables of the collection (CAN / co-action tables, APG's domain table, M2M's task table, position
tables) stay in the model and train under DDP like its dense part: they are small (domains, tasks,
positions) or specific to one layer."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from dynarec.errors import ConfigError
from dynarec.tables.deferred import deferred_tables, initial_rows
from dynarec.tables.fused import FusedLayout

EXTRA_HINT = ("pip install 'dynarec[torchrec]' and then pip install --no-deps torchrec==1.8.0 "
              "(docs/scale_out.md)")


TOKENS_REFUSAL = ("trainer.distributed: torchrec cannot train a model that also looks up unpooled sequence "
                  "tokens (m2m): TorchRec's fused optimizer updates the table at each lookup's backward, so a "
                  "second lookup in the same step would update it twice; use trainer.distributed: ddp")


def available() -> bool:
    try:
        import torchrec  # noqa: F401
    except Exception:  # ImportError, or fbgemm failing to load against this torch
        return False
    return True


def require() -> None:
    if not available():
        raise ConfigError(f"trainer.distributed: torchrec is not installed; {EXTRA_HINT}")


class TorchRecFeatures(nn.Module):
    """Drop-in for a :class:`FeatureEmbedding` (``orig``) whose lookups run on a TorchRec
    ``EmbeddingBagCollection`` ``ebc`` (attribute name kept for the sharding plan: ``<path>.ebc``).

    Args:
        orig: the layer it replaces (kept, not registered: evaluation and :func:`detach` use it).
        prefix: put before each logical table's name to form its TorchRec name (unique over the model)."""

    def __init__(self, orig: nn.Module, prefix: str = ""):
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

        self.__dict__["orig"] = orig
        lay = orig.layout
        by_offset = {o: t for t, o in lay.table_offsets.items()}
        n_sparse = len(lay.sparse_offsets)
        self.sparse_tables = [by_offset[o] for o in lay.sparse_offsets]
        self.seq_tables = [by_offset[o] for o in lay.seq_offsets]
        self.field_names, self.seq_names = list(lay.field_names), list(lay.seq_names)
        self.sparse_names = self.field_names[:n_sparse]
        self.embed_dim, self.layout = orig.embed_dim, lay
        self.weighted = "mean" in lay.seq_pooling
        features: dict[str, list[str]] = {t: [] for t in lay.table_sizes}
        for f, t in zip(self.field_names, self.sparse_tables + self.seq_tables):
            features[t].append(f)
        self.logical = {prefix + t: t for t in features}  # TorchRec table name -> logical table
        configs = [EmbeddingBagConfig(name=prefix + t, embedding_dim=self.embed_dim, num_embeddings=lay.table_sizes[t],
                                      feature_names=fs) for t, fs in features.items() if fs]
        # on "meta": no storage here (TorchRec keeps the unsharded parameter it shards from for the sharded
        # module's life); sharding allocates each rank's shards, :meth:`scatter` writes the model's rows into them
        self.ebc = EmbeddingBagCollection(tables=configs, is_weighted=self.weighted, device=torch.device("meta"))
        orig.weight.weight.requires_grad_(False)

    @property
    def weight(self) -> nn.Embedding:
        """Refused: while sharded, the model's own table holds no rows."""
        raise ConfigError("trainer.distributed: torchrec cannot shard a model that reads its feature table "
                          "directly; use trainer.distributed: ddp")

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    @property
    def seq_offsets(self) -> torch.Tensor:
        return self.orig.seq_offsets

    def table_rows(self, name: str) -> slice:
        return self.layout.table_rows(name)

    def features(self, sparse: torch.Tensor, sequences: dict | None):
        """The batch as a ``KeyedJaggedTensor`` (keys: the fields; ids of each field's logical table)."""
        from torchrec import KeyedJaggedTensor

        B = sparse.shape[0]
        values, lengths, weights = [sparse.t().reshape(-1)], [torch.ones(sparse.numel(), dtype=torch.long,
                                                                          device=sparse.device)], []
        if self.weighted:
            weights.append(torch.ones(sparse.numel(), device=sparse.device))
        for name, pool in zip(self.seq_names, self.layout.seq_pooling):
            ids = sequences[name]
            keep = ids > 0
            n = keep.sum(1)
            values.append(ids[keep])
            lengths.append(n)
            if self.weighted:
                w = (1.0 / n.clamp_min(1).float()) if pool == "mean" else torch.ones(B, device=ids.device)
                weights.append(w.unsqueeze(1).expand_as(ids)[keep])
        return KeyedJaggedTensor(keys=self.field_names, values=torch.cat(values), lengths=torch.cat(lengths),
                                 weights=torch.cat(weights) if self.weighted else None)

    def tokens(self, j: int, ids: torch.Tensor) -> torch.Tensor:
        """Refused (:func:`attach` refuses such models first): a second lookup of the table in one step."""
        raise ConfigError(TOKENS_REFUSAL)

    def forward(self, sparse: torch.Tensor, sequences: dict | None = None) -> torch.Tensor:
        pooled = self.ebc(self.features(sparse, sequences)).to_dict()
        return torch.stack([pooled[f] for f in self.field_names], 1)

    def _pieces(self, kinds: bool = False):
        """(table, row offset, col offset, local tensor) of each shard / replica this rank holds; with
        ``kinds`` a fifth item: whether it is a shard (table / column / row-wise) rather than a replica."""
        out = []
        for key, v in self.ebc.state_dict().items():
            table = self.logical[key.split(".")[-2]]  # embedding_bags.<table>.weight
            if hasattr(v, "local_shards"):
                out += [(table, *s.metadata.shard_offsets[:2], s.tensor, True) for s in v.local_shards()]
            else:  # data-parallel: a full replica
                out.append((table, 0, 0, v, False))
        return out if kinds else [p[:4] for p in out]

    def held_bytes(self) -> dict[str, int]:
        """Bytes of feature-table storage this rank holds: ``shards`` (its TorchRec shards / replicas) and
        ``fused`` (the model's own fused table: 0 once released), and ``table`` (the logical tables' bytes
        once, for reference). The total over ranks of ``shards`` is ``table`` for table_wise / column_wise,
        N times it for data_parallel."""
        shards = sum(t.numel() * t.element_size() for *_, t in self._pieces())
        w = self.orig.weight.weight
        table = sum(self.layout.table_sizes[t] for t in self.logical.values()) * self.embed_dim * w.element_size()
        return {"shards": int(shards), "fused": int(w.numel() * w.element_size()), "table": int(table)}

    @torch.no_grad()
    def scatter(self) -> None:
        """Write the model's initial rows into this rank's shards (after sharding, before :meth:`release`):
        from the fused table, or — a deferred table (:mod:`dynarec.tables.deferred`, no storage) — replayed
        from its recipe chunk by chunk, each chunk's rows copied where they meet a shard. An unsharded
        collection (one process, no DMP) still on ``meta`` gets its storage here."""
        w = self.orig.weight
        if any(p.is_meta for p in self.ebc.parameters()):
            self.ebc.to_empty(device=w.weight.device)
        pieces = [(self.layout.table_offsets[tb] + r, c, t) for tb, r, c, t in self._pieces()]
        recipe = w.__dict__.get("deferred")
        chunks = initial_rows(recipe) if recipe is not None else [(0, w.weight)]
        for lo, rows in chunks:
            hi = lo + rows.shape[0]
            for start, c, t in pieces:
                a, b = max(lo, start), min(hi, start + t.shape[0])
                if a < b:
                    t[a - start:b - start].copy_(rows[a - lo:b - lo, c:c + t.shape[1]].to(t.device, t.dtype))

    def release(self) -> None:
        """Free the model's fused table on this rank (zero rows; its full shape remembered)."""
        w = self.orig.weight.weight
        recipe = self.orig.weight.__dict__.get("deferred")
        if recipe is not None:
            self.__dict__["_full_shape"] = (recipe["rows"], recipe["dim"])
        elif w.shape[0]:
            self.__dict__["_full_shape"] = tuple(w.shape)
            w.data = w.data.new_empty((0, w.shape[1]))

    def local_state(self) -> list[torch.Tensor]:
        """Copies of this rank's shards, in :meth:`_pieces` order (for a best-state copy)."""
        return [t.detach().clone() for *_, t in self._pieces()]

    @torch.no_grad()
    def load_local_state(self, tensors: list[torch.Tensor]) -> None:
        pieces = self._pieces()
        if len(tensors) != len(pieces):
            raise ValueError(f"torchrec: {len(tensors)} saved shards for {len(pieces)} held on this rank")
        for (*_, t), v in zip(pieces, tensors):
            t.copy_(v.to(t.device, t.dtype))

    @torch.no_grad()
    def consolidate(self, dst: int = 0) -> None:
        """The trained table assembled into the fused table of rank ``dst`` only (a collective call): the
        shards' places are all-gathered (small), then each shard goes point-to-point to ``dst``, so no rank
        but ``dst`` ever holds more than its own shards, and ``dst`` the table once. Data-parallel replicas
        are taken from ``dst``'s own copy. Without a process group the local shards fill the local table."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        pieces = self._pieces(kinds=True)
        shape = self.__dict__.get("_full_shape")
        w = self.orig.weight.weight
        if rank == dst and shape is not None and w.shape[0] == 0:
            w.data = w.data.new_zeros(shape)
            self.orig.weight.num_embeddings = shape[0]
            self.orig.weight.__dict__.pop("deferred", None)  # the table now has its (trained) rows
        full = w.data

        def put(table, r, c, t, *_):
            o = self.layout.table_offsets[table] + r
            full[o:o + t.shape[0], c:c + t.shape[1]] = t.to(full.device, full.dtype)

        if world == 1:
            for p in pieces:
                put(*p)
            return
        places = [(tb, r, c, tuple(t.shape), str(t.dtype)) for tb, r, c, t, shard in pieces if shard]
        everyone: list = [None] * world
        dist.all_gather_object(everyone, places)
        if rank == dst:
            for p in pieces:
                put(*p)
            for src, theirs in enumerate(everyone):
                if src == dst:
                    continue
                for tb, r, c, shp, dt in theirs:
                    buf = torch.empty(shp, dtype=getattr(torch, dt.split(".")[-1]), device=pieces[0][3].device
                                      if pieces else "cpu")
                    dist.recv(buf, src=src)
                    put(tb, r, c, buf)
        else:
            for *_, t, shard in pieces:
                if shard:
                    dist.send(t.detach().contiguous(), dst=dst)


def shardable(spec) -> bool:
    """Whether a fused feature table of ``spec`` goes to TorchRec (FBGEMM's widths are multiples of 4)."""
    return spec.dim % 4 == 0


def sharded_build():
    """The context to build a model in whose feature tables TorchRec will shard: those tables are created
    without storage (:mod:`dynarec.tables.deferred`), so no rank ever holds a whole one; each rank's
    :meth:`TorchRecFeatures.scatter` writes its shards' initial rows, the rows of an eager build."""
    return deferred_tables(shardable)


def is_feature_layer(m: nn.Module) -> bool:
    """Whether ``m`` is a layer over a fused feature table (:class:`~dynarec.nn.embedding.FeatureEmbedding`):
    it holds the table's :class:`~dynarec.tables.fused.FusedLayout` as ``m.layout``. Found by what it holds,
    so this floor does not import the layer above it."""
    return isinstance(getattr(m, "layout", None), FusedLayout) and not isinstance(m, TorchRecFeatures)


def feature_layers(model: nn.Module) -> tuple[list, list]:
    """(the :class:`FeatureEmbedding` s of ``model`` TorchRec can hold, the others), as [(path, layer)].
    FBGEMM's kernels need rows of a width that is a multiple of 4: narrower fused tables (e.g. DeepFM's
    first-order weights, one per task) stay in the model and train under DDP."""
    found = [(n, m) for n, m in model.named_modules() if is_feature_layer(m)]
    return ([f for f in found if shardable(f[1].layout.spec)], [f for f in found if not shardable(f[1].layout.spec)])


def attach(model: nn.Module) -> list[tuple[str, TorchRecFeatures]]:
    """Replace every :class:`FeatureEmbedding` of ``model`` that TorchRec can hold (:func:`feature_layers`)
    by a :class:`TorchRecFeatures` (same path); -> [(path, new layer)]. Their TorchRec keys are left out of
    ``model.state_dict()``, which holds this rank's shards as ``<path>.local_shard.<i>`` instead (and
    ``load_state_dict`` puts such entries back into the shards)."""
    if getattr(model, "looks_up_tokens", False):
        raise ConfigError(TOKENS_REFUSAL)
    found = feature_layers(model)[0]
    if not found:
        raise ConfigError(f"trainer.distributed: torchrec found no feature table of a width that is a multiple "
                          f"of 4 in model {type(model).__name__}; use ddp")
    made = []
    for i, (path, layer) in enumerate(found):
        parent, _, name = path.rpartition(".")
        new = TorchRecFeatures(layer, f"{layer.layout.spec.name}_" if i else "")
        setattr(model.get_submodule(parent) if parent else model, name, new)
        made.append((path, new))
    prefixes = tuple(p + ".ebc." for p, _ in made)

    def save(module, state, prefix, meta):  # the collection's keys out, this rank's shards in
        for k in [k for k in state if k[len(prefix):].startswith(prefixes)]:
            del state[k]
        if module.__dict__.get("_dense_state_only"):  # dense_state(): the shards are not copied
            return
        for path, layer in made:
            for i, t in enumerate(layer.local_state()):
                state[f"{prefix}{path}.local_shard.{i}"] = t

    def load(state, prefix, meta, strict, missing, unexpected, errors):
        for path, layer in made:
            key = f"{prefix}{path}.local_shard."
            mine = sorted((int(k[len(key):]), k) for k in state if k.startswith(key))
            if mine:
                layer.load_local_state([state.pop(k) for _, k in mine])

    def loaded(module, incompatible):  # the shards came in through local_shard.<i>, not the collection's keys
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(prefixes)]

    model.__dict__["_torchrec_hooks"] = (model._register_state_dict_hook(save),
                                         model._register_load_state_dict_pre_hook(load),
                                         model.register_load_state_dict_post_hook(loaded))
    return made


def dense_state(model: nn.Module) -> dict:
    """``model.state_dict()`` without this rank's shards (no copy of them is made; for a sharded save)."""
    model.__dict__["_dense_state_only"] = True
    try:
        return model.state_dict()
    finally:
        model.__dict__.pop("_dense_state_only", None)


def detach(model: nn.Module, made: list[tuple[str, TorchRecFeatures]]) -> None:
    """Undo :func:`attach`: the original layers back in place, their tables trainable again."""
    for h in model.__dict__.pop("_torchrec_hooks", ()):
        h.remove()
    for path, new in made:
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, new.orig)
        new.orig.weight.weight.requires_grad_(True)


def freeze(model: nn.Module) -> None:
    """The fused tables :func:`attach` will replace made untrainable (TorchRec trains their rows)."""
    for _, m in feature_layers(model)[0]:
        m.weight.weight.requires_grad_(False)
