"""BaseModel: the contract every model follows.

A model is built from ``(schema, config)``. Its entry on plain tensors (stable names, for torch.export /
ONNX and serving) is::

    forward_tensors(sparse, dense, domain, sequences) -> {task: logits Float [B]}

* ``sparse``: Long [B, S], one id column per ``schema.sparse`` feature (0 = unknown);
* ``dense``: Float [B, D], ``schema.dense_dim`` columns (missing indicators included; D may be 0);
* ``domain``: Long [B], domain ids (0 = unknown, 1..D-1);
* ``sequences``: a tuple of Long [B, L_j], one per ``schema.sequences`` feature in schema order (0 = padding).

``forward(batch)`` is a thin wrapper over it, defined here once; a model implements :meth:`compute` on
:class:`ModelInputs` (the same tensors by name). Every id-indexed table of a model is owned by
``self.tables`` (:class:`~dynarec.tables.TableCollection`). The optional hooks (``extra_loss``, ``task_loss``,
``gate_modules`` / ``gate_usage``, ``merge_for_inference``, ``prepare_for_load``, ``last_log_var``) are
declared here with defaults. Which schema groups feed which part is configuration, resolved here with a
clear error for a missing group."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from dynarec.checks import rule, validate
from dynarec.data.schema import Schema
from dynarec.data.table import Batch
from dynarec.errors import ConfigError
from dynarec.inference import eval_mode, task_outputs
from dynarec.nn.mlp import ACTIVATIONS
from dynarec.nn.embedding import FeatureEmbedding
from dynarec.nn.numeric_fields import numeric_fields
from dynarec.tables import TableCollection
from dynarec.tables.fused import fused_layout, schema_fields


# value rules shared by the model configs (dynarec.checks)
WIDTHS = rule(min=1)  # every width of a list of layer widths >= 1
WIDTH = rule(min=1)
COUNT = rule(min=1)
DROPOUT = rule(min=0, max=1, max_open=True)  # 0 <= p < 1
ACTIVATION = rule(choices=tuple(ACTIVATIONS))
POSITIVE = rule(min=0, min_open=True)


@dataclass
class ModelConfig:
    """Hyper-parameters shared by all models; each model subclasses this with its own fields."""

    embed_dim: int = field(default=16, metadata=rule(min=1))
    hidden: list[int] = field(default_factory=lambda: [256, 128], metadata=WIDTHS)
    tower_hidden: list[int] = field(default_factory=lambda: [64], metadata=WIDTHS)
    activation: str = field(default="relu", metadata=ACTIVATION)
    dropout: float = field(default=0.0, metadata=DROPOUT)
    batch_norm: bool = False
    # N(0, std) for the embedding tables (FuxiCTR / torch-rechub use 1e-4)
    embedding_init_std: float = field(default=1e-2, metadata=rule(min=0, min_open=True))


class ModelInputs(NamedTuple):
    """The tensors of one forward, by name (a :class:`~dynarec.data.table.Batch` without labels):
    ``sparse`` Long [B, S], ``dense`` Float [B, D], ``domain`` Long [B], ``sequences`` {name: Long [B, L]}."""

    sparse: torch.Tensor
    dense: torch.Tensor
    domain: torch.Tensor
    sequences: dict


class BaseModel(nn.Module):
    """The base of every registered model: builds the embeddings and the table collection from the schema,
    checks the config's values and keys, and gives ``forward(batch)`` over :meth:`forward_tensors`.

    Example::

        from dataclasses import dataclass

        from dynarec.models.base import BaseModel, ModelConfig
        from dynarec.models.registry import register

        @register("my_dnn", paper="...", needs=("user", "item"))
        class MyDNN(BaseModel):
            @dataclass
            class Config(ModelConfig):
                hidden: list[int] = field(default_factory=lambda: [64])

            def compute(self, x):  # x: ModelInputs
                ...  # -> {task: logits Float [B]}

        # then: dynarec.testing.check_model(MyDNN)
    """
    Config = ModelConfig
    registry_name = "base"
    # config keys without effect on this model ({key: reason | keys.when(...)}; see dynarec.models.keys);
    # a model with per-task towers sets "tower_hidden": None
    no_effect: dict = {"tower_hidden": "it has no per-task towers"}

    def __init__(self, schema: Schema, config: ModelConfig):
        super().__init__()
        from dynarec.models.keys import check_keys

        validate(config, f"model.{self.registry_name}")
        check_keys(type(self), config, self.registry_name)
        self.schema = schema
        self.config = config
        self.tasks = schema.task_names
        self.num_domains = max(schema.num_domains, 1)
        self.tables = TableCollection()  # owns every id-indexed table of the model
        self.embedding = FeatureEmbedding(fused_layout("features", schema_fields(schema), config.embed_dim,
                                                       config.embedding_init_std, "embedding"),
                                          self.tables, legacy="embedding")
        self.sequence_names = [f.name for f in schema.sequences]
        self.last_log_var: dict[str, torch.Tensor] = {}
        # dense features with `embedding: ple | plr`: extra fields after the id fields (dynarec/nn/numeric_fields.py)
        self.numeric_fields = numeric_fields(schema, config.embed_dim)
        self.num_fields = self.embedding.num_fields + (self.numeric_fields.num_fields if self.numeric_fields else 0)
        self.dense_dim = schema.dense_dim
        self.input_dim = self.num_fields * config.embed_dim + self.dense_dim

    # ---- inputs ----------------------------------------------------------------------------------
    def embed(self, batch: Batch) -> torch.Tensor:
        """All embedded fields [B, F, d]: ``schema.fields`` order (sparse then sequences), then the
        numeric-embedding fields of ``schema.numeric_embedded`` (read from ``batch.dense``)."""
        e = self.embedding(batch.sparse, batch.sequences)
        return e if self.numeric_fields is None else torch.cat([e, self.numeric_fields(batch.dense)], 1)

    def require_groups(self, groups, what: str = "this model") -> list[str]:
        """``groups`` as a list; ConfigError naming the first group the schema has no feature in."""
        groups = [groups] if isinstance(groups, str) else list(groups)
        have = self.schema.groups()
        missing = [g for g in groups if g not in have]
        if missing:
            raise ConfigError(f"{what} needs feature group '{missing[0]}' but the schema has only "
                              f"{sorted(have)}; add a feature with group: {missing[0]} or change the config")
        return groups

    def field_index(self, groups, what: str = "this model") -> list[int]:
        """Positions in ``embed()``'s field axis of the fields whose group is in ``groups``."""
        groups = self.require_groups(groups, what)
        idx = [i for i, f in enumerate(self.schema.fields) if f.group in groups]
        if not idx:
            raise ConfigError(f"{what} needs an embedded (sparse/sequence) feature in groups {groups}")
        return idx

    def field_index_by_name(self, names, what: str = "this model") -> list[int]:
        pos = {f.name: i for i, f in enumerate(self.schema.fields)}
        for n in names:
            if n not in pos:
                raise ConfigError(f"{what}: feature '{n}' is not an embedded feature of the schema "
                                  f"(have: {', '.join(pos)})")
        return [pos[n] for n in names]

    def prior_embedding(self, cols: list[int], dim: int):
        """Gate-only prior tables (table ``prior`` of ``self.tables``) for the sparse columns ``cols``."""
        from dynarec.nn.prior import PriorEmbedding

        feats = [self.schema.sparse[i] for i in cols]
        return PriorEmbedding(cols, [(f.table, f.vocab_size) for f in feats], dim, collection=self.tables,
                              features=tuple(f.name for f in feats), legacy="priors")

    def flat_input(self, batch: Batch, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Flattened embeddings ⊕ dense features: [B, input_dim]."""
        e = self.embed(batch) if emb is None else emb
        return torch.cat([e.flatten(1), batch.dense], 1) if self.dense_dim else e.flatten(1)

    # ---- outputs ---------------------------------------------------------------------------------
    def forward_tensors(self, sparse: torch.Tensor, dense: torch.Tensor, domain: torch.Tensor,
                        sequences: tuple[torch.Tensor, ...] = ()) -> dict[str, torch.Tensor]:
        """``{task: logits Float [B]}`` from plain tensors (see the module docstring for names and shapes)."""
        return self.compute(ModelInputs(sparse, dense, domain, dict(zip(self.sequence_names, sequences))))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``forward_tensors`` on the tensors of ``batch``."""
        return self.forward_tensors(batch.sparse, batch.dense, batch.domain,
                                    tuple(batch.sequences[n] for n in self.sequence_names))

    def compute(self, x: ModelInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """The model's computation on named tensors; ``{task: logits [B]}``."""
        raise NotImplementedError

    # ---- optional hooks (defaults) ---------------------------------------------------------------
    def extra_loss(self) -> torch.Tensor | None:
        """Auxiliary loss of the last forward (e.g. MoE balance); added to the task loss in training."""
        return None

    def task_loss(self, outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                  types: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
        """Per-task losses of the last forward (default: BCE / MSE per task type)."""
        from dynarec.losses import task_losses

        return task_losses(outputs, labels, types or self.schema.task_types)

    def gate_modules(self) -> dict[str, nn.Module]:
        """Named softmax / top-k gates whose ``.last`` holds the gate weights of the last forward (none)."""
        return {}

    @torch.no_grad()
    def gate_usage(self, table, batch_size: int = 65536) -> dict[str, dict]:
        """Per gate of :meth:`gate_modules`: mean weight per expert, top-1 share, entropy, polarisation,
        measured in eval mode over ``table`` (``{}`` for a model without gates)."""
        from dynarec.nn.moe import gate_usage_stats

        gates = self.gate_modules()
        if not gates:
            return {}
        acc: dict[str, list[torch.Tensor]] = {k: [] for k in gates}
        with eval_mode(self):
            for b in table.batches(batch_size):
                self(b)
                for k, g in gates.items():
                    acc[k].append(g.last)
        return {k: gate_usage_stats(torch.cat(v)) for k, v in acc.items()}

    def merge_for_inference(self) -> BaseModel:
        """Switch to the inference form (e.g. APG v5 -> v4); exact and idempotent. Default: nothing to do."""
        return self

    def prepare_for_load(self, state_dict: dict) -> None:
        """Adapt the model (or, in place, ``state_dict``) before ``load_state_dict``: renames the table keys
        of checkpoints written before the table collection (``embedding.weight.weight`` ->
        ``tables.features.weight``, ...)."""
        self.tables.rename_legacy_keys(state_dict)

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Probabilities per task (binary) or values (regression), eval mode, no grad."""
        with eval_mode(self), torch.no_grad():
            out = self(batch)
        return task_outputs(out, self.schema.task_types)
