"""Two optimizer groups, as PEPNet's deployment (Chang et al., PEPNet, KDD 2023, deployment;
docs/models.md "pepnet — PEPNet (multi-domain, multi-task)"): the embedding tables (row-wise Adagrad by default)
and the dense parameters (Adam by default).

Which parameters are tables and how they are updated is asked of the model's
:class:`~dynarec.tables.TableCollection` (``model.tables``): the tables of its ``embedding`` optimizer group
go to the embedding optimizer; its ``dense``-group tables train with the dense parameters. How the
embedding group's gradient is formed is the trainer's choice (``trainer.embedding_grad``), set through
:meth:`TableCollection.set_gradient_form`:

* ``sparse`` — only the batch's rows, as a sparse tensor (coalesced by a sort every step);
* ``dense`` — a dense gradient with zeros elsewhere. For Adagrad and SGD this is EXACTLY the same update
  (a zero gradient leaves a row and its accumulator unchanged) and it is ~2× cheaper for small tables
  (fused kernel, no sort); for large tables the sparse form wins;
* ``auto`` (default) — ``dense`` when the tables hold at most ``DENSE_TABLE_FLOATS`` numbers and the
  optimizer is Adagrad / SGD, else ``sparse`` (measured crossover: ``benchmarks/embedding_update.py``).

``embedding_optimizer: adam`` is the anchors' recipe (FuxiCTR, torch-rechub): dense gradients and plain Adam,
so every row moves at every step through its momentum. It is slower on large vocabularies and exists to
reproduce those libraries, not as a recommendation. Adam / AdamW / Adagrad use torch's fused CPU kernels
when the installed torch has them."""
from __future__ import annotations

import torch
from torch import nn

from dynarec.errors import ConfigError
from dynarec.tables import TableCollection

EMBEDDING_OPTIMIZERS = ("adagrad", "sgd", "sparse_adam", "adam")
EMBEDDING_GRADS = ("auto", "sparse", "dense")
DENSE_TABLE_FLOATS = 4_000_000  # auto: dense gradients up to this many table numbers (250k rows at d = 16)


def table_collection(model: nn.Module) -> TableCollection:
    """The model's table collection (``model.tables``); a module without one has no tables."""
    tables = model._modules.get("tables")
    return tables if isinstance(tables, TableCollection) else TableCollection()


def split_parameters(model: nn.Module, densify: bool = False) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(embedding-group table weights, all other trainable parameters). The tables form sparse gradients,
    or dense ones with ``densify``."""
    tables = table_collection(model)
    tables.set_gradient_form(dense=densify)
    emb = tables.parameters_of("embedding")
    ids = {id(p) for p in emb}
    return emb, [p for p in model.parameters() if p.requires_grad and id(p) not in ids]


def dense_table_gradients(model: nn.Module, cfg) -> bool:
    """Whether this run forms dense gradients for the tables (see the module docstring)."""
    if cfg.embedding_grad not in EMBEDDING_GRADS:
        raise ConfigError(f"trainer.embedding_grad: expected {' | '.join(EMBEDDING_GRADS)}, got '{cfg.embedding_grad}'")
    if cfg.embedding_optimizer == "adam":
        return True
    if cfg.embedding_optimizer == "sparse_adam":
        return False  # lazy Adam only exists in sparse form
    if cfg.embedding_grad == "auto":
        return table_collection(model).numel("embedding") <= DENSE_TABLE_FLOATS
    return cfg.embedding_grad == "dense"


def _fused(cls, params, **kw):
    """``cls(params, fused=True, **kw)`` where this torch has the fused CPU kernel, else the default one."""
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kw)


def build_optimizers(model: nn.Module, cfg, extra_dense: list[nn.Parameter] | None = None):
    """-> (optimizers, the parameters to clip). The tables are never clipped (their rows are independent),
    except with ``embedding_optimizer: adam``, where they are dense and clipped with the rest, as FuxiCTR does."""
    if cfg.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
        raise ConfigError(f"trainer.embedding_optimizer: expected {' | '.join(EMBEDDING_OPTIMIZERS)}, "
                          f"got '{cfg.embedding_optimizer}'")
    densify = dense_table_gradients(model, cfg)
    tables, dense = split_parameters(model, densify=densify)
    extra = list(extra_dense or [])  # loss-weighting parameters (Kendall log σ²): never weight-decayed
    groups = [g for g in ({"params": dense}, {"params": extra, "weight_decay": 0.0}) if g["params"]]
    dense = dense + extra
    opts = []
    if tables:
        if cfg.embedding_optimizer == "adagrad":
            opts.append(_fused(torch.optim.Adagrad, tables, lr=cfg.embedding_lr) if densify
                        else torch.optim.Adagrad(tables, lr=cfg.embedding_lr))
        elif cfg.embedding_optimizer == "sgd":
            opts.append(torch.optim.SGD(tables, lr=cfg.embedding_lr))
        elif cfg.embedding_optimizer == "sparse_adam":
            opts.append(torch.optim.SparseAdam(tables, lr=cfg.embedding_lr))
        else:  # adam: dense gradients, every row updated every step
            opts.append(_fused(torch.optim.Adam, tables, lr=cfg.embedding_lr))
    if dense:
        if cfg.dense_optimizer == "adam":
            opts.append(_fused(torch.optim.Adam, groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
        elif cfg.dense_optimizer == "adamw":
            opts.append(_fused(torch.optim.AdamW, groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
        elif cfg.dense_optimizer == "sgd":
            opts.append(torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
        else:
            raise ConfigError(f"trainer.dense_optimizer: expected adam | adamw | sgd, got '{cfg.dense_optimizer}'")
    clipped = dense + tables if cfg.embedding_optimizer == "adam" else dense
    return opts, clipped
