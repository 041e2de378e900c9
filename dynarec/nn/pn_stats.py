"""Precise partitioned-norm statistics (issue 29): set every :class:`~dynarec.nn.star.PartitionedNorm`'s
running ``E_p`` / ``Var_p`` to the exact per-domain mean and (unbiased) variance of its input over a bounded
number of rows, computed with the model in eval mode — the statistics of the CURRENT model's inputs.

Why: the moving average PN updates during training mixes statistics of every model seen so far; with
decay 0.99 and its bias correction, the first 100 batches of a domain are averaged plainly, so a short run
evaluated with statistics from epoch 1, when the embeddings were far from their final values
(benchmarks/star_pn_stats.py: synthetic d2 AUC 0.810 with the moving statistics, 0.873 recomputed).
STAR's trainer hook (:class:`~dynarec.train.norm_stats.NormStatistics`) calls this at every epoch's end.

Layers are refreshed in forward order, one pass each, so a PN after another one (``pn_hidden``) sees its
input as evaluation will produce it. Sums run in float64 (Chan's pairwise merge of per-batch mean and sum of
squared deviations), then are stored in the buffers' dtype.

Example::

    n = refresh_partitioned_norms(model, lambda: table.batches(4096), max_rows=1_000_000)
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from dynarec.nn.star import PartitionedNorm


@torch.no_grad()
def _layer_statistics(model, pn: PartitionedNorm, batches: Iterable, max_rows: int):
    """(count [D], mean [D, d], M2 [D, d]) in float64 of ``pn``'s input over the first ``max_rows`` rows."""
    D, d = pn.num_domains, pn.num_features
    cnt = torch.zeros(D, dtype=torch.float64)
    mean = torch.zeros(D, d, dtype=torch.float64)
    m2 = torch.zeros(D, d, dtype=torch.float64)
    seen: list = []
    hook = pn.register_forward_pre_hook(lambda mod, args: seen.append((args[0].detach(), args[1])))
    rows = 0
    try:
        for b in batches:
            if rows >= max_rows:
                break
            seen.clear()
            model(b)
            rows += len(b.domain)
            for x, dom in seen:
                x, dom = x.to("cpu", torch.float64), dom.to("cpu")
                nb = torch.bincount(dom, minlength=D).to(torch.float64)
                mb = torch.zeros(D, d, dtype=torch.float64).index_add(0, dom, x) / nb.clamp_min(1).unsqueeze(1)
                diff = x - mb[dom]
                m2b = torch.zeros(D, d, dtype=torch.float64).index_add(0, dom, diff * diff)
                tot = cnt + nb
                delta = mb - mean
                w = (nb / tot.clamp_min(1)).unsqueeze(1)
                mean += delta * w
                m2 += m2b + delta * delta * (cnt * w.squeeze(1)).unsqueeze(1)
                cnt = tot
    finally:
        hook.remove()
    return cnt, mean, m2


def refresh_partitioned_norms(model, batches: Callable[[], Iterable], max_rows: int) -> int:
    """Set the running statistics of every PartitionedNorm in ``model`` from ``batches()`` (called once per
    layer; each call must yield the same rows), stopping after the batch that reaches ``max_rows`` rows.
    A domain with fewer than 2 rows there keeps its statistics. The model is left in the mode it was in.
    -> the number of layers refreshed."""
    pns = [m for m in model.modules() if isinstance(m, PartitionedNorm)]
    was_training = model.training
    model.eval()
    try:
        for pn in pns:
            cnt, mean, m2 = _layer_statistics(model, pn, batches(), max_rows)
            ok = cnt >= 2
            var = m2 / (cnt - 1).clamp_min(1).unsqueeze(1)
            rm, rv = pn.running_mean, pn.running_var
            rm.copy_(torch.where(ok.unsqueeze(1), mean.to(rm), rm))
            rv.copy_(torch.where(ok.unsqueeze(1), var.to(rv), rv))
    finally:
        model.train(was_training)
    return len(pns)
