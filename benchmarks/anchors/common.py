"""Shared helpers for the anchor runners: the hyper-parameters every library gets, test AUC computed the
same way for every library (sklearn on the predicted probabilities of the SAME test rows), and numpy views
of a dynarec prepared split.

This file holds only our own code; no FuxiCTR / torch-rechub code is copied here."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class HParams:
    """One set of hyper-parameters passed to dynarec and to each anchor (translated to their names)."""

    embed_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [256, 128])  # DNN / bottom / experts / APG & PPNet MLP
    tower_hidden: list[int] = field(default_factory=lambda: [64])
    num_experts: int = 4
    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 2
    patience: int = 2
    # PPNet
    gate_hidden_dim: int = 64
    gate_emb_dim: int = 16
    # DCNv2 / APG
    cross_layers: int = 3
    rank_k: int = 32
    overparam_p: int = 128
    hypernet_hidden: list[int] = field(default_factory=lambda: [64])

    def to_dict(self) -> dict:
        return asdict(self)


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, y_score))


def split_columns(schema, table) -> dict[str, np.ndarray]:
    """A TensorTable as named numpy columns: encoded sparse ids (int64), dense floats, [N, L] sequences,
    float labels. Column names are the schema's feature / task names."""
    cols: dict[str, np.ndarray] = {}
    for j, f in enumerate(schema.sparse):
        cols[f.name] = table.sparse[:, j].numpy().astype(np.int64)
    j = 0
    for f in schema.dense:
        cols[f.name] = table.dense[:, j].numpy().astype(np.float32)
        j += 2 if f.missing_indicator else 1
    for f in schema.sequences:
        cols[f.name] = table.sequences[f.name].numpy().astype(np.int64)
    for t in schema.task_names:
        cols[t] = table.labels[t].numpy().astype(np.float32)
    return cols


def gemm_peak_gflops(n: int = 1024, k: int = 256, m: int = 256, reps: int = 40) -> float:
    """Measured fp32 GEMM speed on this machine at the current torch thread count (best of 3 timings of a
    [n, k] @ [k, m] product, the shape of a CTR MLP layer at batch 1024): the roofline's ceiling."""
    import time

    import torch

    a, b = torch.randn(n, k), torch.randn(k, m)
    for _ in range(5):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return 2.0 * n * k * m / best / 1e9


def train_flops_per_row(model, batch) -> float:
    """Matmul FLOPs (torch's FlopCounterMode: mm / bmm / addmm / baddbmm / conv) of one training step
    (forward + backward of the summed task losses) per row. The anchors run the same model with the same
    hyper-parameters (equal parameter counts), so this is their FLOP count too."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.train()
    with FlopCounterMode(display=False) as fc:
        out = model(batch)
        sum(F.binary_cross_entropy_with_logits(out[t], batch.labels[t]) for t in out).backward()
    model.zero_grad(set_to_none=True)
    model.train(was)
    return fc.get_total_flops() / len(batch)
