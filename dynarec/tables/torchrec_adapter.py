"""The TorchRec adapter: a model's fused feature tables as TorchRec ``EmbeddingBagCollection`` s, one
TorchRec table per logical table of the :class:`~dynarec.tables.fused.FusedLayout` (TorchRec shards per
table; the fused physical table has no per-table boundary it could use).

:func:`attach` replaces each :class:`~dynarec.nn.embedding.FeatureEmbedding` of a model by a
:class:`TorchRecFeatures` with the same call (``(sparse [B, S], sequences) -> [B, S + n_seq, dim]``); the
model's code is unchanged. In training mode the lookup goes through the (sharded) collection: sparse fields
are one id per row, sequence fields jagged bags without their padding ids, mean pooling as per-id weights
``1 / length`` (the ``per_sample_weights`` of ``FeatureEmbedding``). The original fused table stays in
``model.tables`` frozen (``requires_grad=False``): :meth:`TorchRecFeatures.gather` copies the trained
shards back into it (every rank gets the whole table), and evaluation mode looks up that local copy, so
validation, the best-state copy of early stopping and the checkpoint see the model's usual ``state_dict``
(the collection's own keys are left out of it). :func:`detach` puts the original layers back.

Other tables of the collection (CAN / co-action tables, APG's domain table, M2M's task table, position
tables) stay in the model and train under DDP like its dense part: they are small (domains, tasks,
positions) or specific to one layer."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from dynarec.errors import ConfigError
from dynarec.nn.embedding import FeatureEmbedding

EXTRA_HINT = ("pip install 'dynarec[torchrec]' and then pip install --no-deps torchrec==1.8.0 "
              "(docs/scale_out.md)")


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

    def __init__(self, orig: FeatureEmbedding, prefix: str = ""):
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
        self.ebc = EmbeddingBagCollection(tables=configs, is_weighted=self.weighted, device=torch.device("cpu"))
        orig.weight.weight.requires_grad_(False)

    @property
    def weight(self) -> nn.Embedding:
        if self.training:
            raise ConfigError("trainer.distributed: torchrec cannot shard a model that reads its feature table "
                              "directly (e.g. m2m's sequence tokens); use trainer.distributed: ddp")
        return self.orig.weight

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

    def forward(self, sparse: torch.Tensor, sequences: dict | None = None) -> torch.Tensor:
        if not self.training:
            return self.orig(sparse, sequences)
        pooled = self.ebc(self.features(sparse, sequences)).to_dict()
        return torch.stack([pooled[f] for f in self.field_names], 1)

    def _pieces(self):
        """(table, row offset, col offset, local tensor) of each shard / replica this rank holds."""
        out = []
        for key, v in self.ebc.state_dict().items():
            table = self.logical[key.split(".")[-2]]  # embedding_bags.<table>.weight
            if hasattr(v, "local_shards"):
                out += [(table, *s.metadata.shard_offsets[:2], s.tensor) for s in v.local_shards()]
            else:  # data-parallel: a full replica
                out.append((table, 0, 0, v))
        return out

    def held_bytes(self) -> dict[str, int]:
        """Bytes of feature-table storage this rank holds: ``shards`` (its TorchRec shards / replicas) and
        ``fused`` (the model's own fused table, still a full copy on every rank). The total over ranks of
        ``shards`` is the table once for table_wise / column_wise, N times for data_parallel."""
        shards = sum(t.numel() * t.element_size() for *_, t in self._pieces())
        w = self.orig.weight.weight
        return {"shards": int(shards), "fused": int(w.numel() * w.element_size())}

    @torch.no_grad()
    def scatter(self) -> None:
        """Copy the fused table's rows into this rank's shards (after sharding, or a load of the weights)."""
        full = self.orig.weight.weight
        for table, r, c, t in self._pieces():
            rows = self.layout.table_rows(table)
            src = full[rows][r:r + t.shape[0], c:c + t.shape[1]]
            t.copy_(src.to(t.device, t.dtype))

    @torch.no_grad()
    def gather(self) -> None:
        """Every rank's shards copied into the fused table of every rank (a collective call)."""
        mine = [(tb, r, c, t.detach().cpu()) for tb, r, c, t in self._pieces()]
        parts = [mine]
        if dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, mine)
        full = self.orig.weight.weight
        for part in parts:
            for table, r, c, t in part:
                o = self.layout.table_offsets[table] + r
                full[o:o + t.shape[0], c:c + t.shape[1]] = t.to(full.device, full.dtype)


def feature_layers(model: nn.Module) -> tuple[list, list]:
    """(the :class:`FeatureEmbedding` s of ``model`` TorchRec can hold, the others), as [(path, layer)].
    FBGEMM's kernels need rows of a width that is a multiple of 4: narrower fused tables (e.g. DeepFM's
    first-order weights, one per task) stay in the model and train under DDP."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, FeatureEmbedding)]
    return [f for f in found if f[1].embed_dim % 4 == 0], [f for f in found if f[1].embed_dim % 4]


def attach(model: nn.Module) -> list[tuple[str, TorchRecFeatures]]:
    """Replace every :class:`FeatureEmbedding` of ``model`` that TorchRec can hold (:func:`feature_layers`)
    by a :class:`TorchRecFeatures` (same path); -> [(path, new layer)]. Their TorchRec keys are left out of
    ``model.state_dict()``."""
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

    def drop(module, state, prefix, meta):
        for k in [k for k in state if k[len(prefix):].startswith(prefixes)]:
            del state[k]

    model.__dict__["_torchrec_hooks"] = (model._register_state_dict_hook(drop),)
    return made


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
