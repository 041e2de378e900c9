"""Two optimizer groups, as PEPNet's deployment (SPEC §2.18): embedding tables with sparse gradients
(Adagrad by default) and the dense parameters (Adam by default)."""
from __future__ import annotations

import torch
from torch import nn

from dynarec.errors import ConfigError


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(sparse-gradient embedding weights, all other trainable parameters)."""
    sparse_ids = set()
    sparse = []
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad:
            if id(m.weight) not in sparse_ids:
                sparse_ids.add(id(m.weight))
                sparse.append(m.weight)
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    return sparse, dense


def build_optimizers(model: nn.Module, cfg, extra_dense: list[nn.Parameter] | None = None):
    sparse, dense = split_parameters(model)
    dense = dense + list(extra_dense or [])
    opts = []
    if sparse:
        if cfg.embedding_optimizer == "adagrad":
            opts.append(torch.optim.Adagrad(sparse, lr=cfg.embedding_lr))
        elif cfg.embedding_optimizer == "sgd":
            opts.append(torch.optim.SGD(sparse, lr=cfg.embedding_lr))
        elif cfg.embedding_optimizer == "sparse_adam":
            opts.append(torch.optim.SparseAdam(sparse, lr=cfg.embedding_lr))
        else:
            raise ConfigError(f"trainer.embedding_optimizer: expected adagrad | sgd | sparse_adam, got '{cfg.embedding_optimizer}'")
    if dense:
        if cfg.dense_optimizer == "adam":
            opts.append(torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay))
        elif cfg.dense_optimizer == "adamw":
            opts.append(torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay))
        elif cfg.dense_optimizer == "sgd":
            opts.append(torch.optim.SGD(dense, lr=cfg.lr, weight_decay=cfg.weight_decay))
        else:
            raise ConfigError(f"trainer.dense_optimizer: expected adam | adamw | sgd, got '{cfg.dense_optimizer}'")
    return opts, dense
