"""STAR's partitioned-norm statistics after training (issue 29): the trainer's epoch-end hook sets each
domain's running E_p / Var_p to the exact statistics of the FINAL model's PN input over the training rows
(not a moving average over the models of earlier steps, which left a short run evaluating with epoch-1
statistics: benchmarks/star_pn_stats.py)."""
import pytest
import torch

from dynarec.data.prepare import synthetic_tables
from dynarec.models import build_model
from dynarec.nn.star import PartitionedNorm
from dynarec.train.config import TrainerConfig
from dynarec.train.trainer import Trainer

SMALL = {"embed_dim": 4, "hidden": [16, 8], "aux_hidden": [8]}
FIT = dict(epochs=2, batch_size=128, eval_batch_size=128, progress=False, lr=0.05, embedding_lr=0.5)


@pytest.fixture(scope="module")
def data():
    schema, tables, _ = synthetic_tables(1500, seed=0)
    return schema, tables


def _fit(schema, tables, **kw):
    torch.manual_seed(0)
    m = build_model("star", schema, {**SMALL, **kw})
    Trainer(m, TrainerConfig(**FIT), seed=0).fit(tables["train"], tables["valid"])
    return m.eval()


def _reference(model, table):
    """float64 per-domain mean / unbiased variance of the (first) PN's input over ``table``, eval mode."""
    pn = model.pn
    xs = []
    h = pn.register_forward_pre_hook(lambda mod, a: xs.append((a[0].detach(), a[1])))
    with torch.no_grad():
        model(next(table.batches(len(table))))
    h.remove()
    x, d = torch.cat([t for t, _ in xs]).double(), torch.cat([t for _, t in xs])
    return x, d


def _tolerance(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor):
    """Both sides sum the same float32 inputs in float64 (error <= n·2^-52 relative to the sum of |terms|,
    far below float32), then round once to float32 (2^-24 relative): a bound of 2 float32 ulps of the larger
    of the value and the summed magnitudes' mean."""
    scale_m = x.abs().mean(0)
    scale_v = ((x - mean) ** 2).mean(0) + 1e-30
    n = x.shape[0]
    ulp = 2.0 ** -23 + n * 2.0 ** -52
    return ulp * torch.maximum(scale_m, mean.abs()), ulp * torch.maximum(scale_v, var.abs())


def test_star_stats_after_training_are_the_final_models_input_statistics(data):
    schema, tables = data
    m = _fit(schema, tables)
    x, d = _reference(m, tables["train"])
    for k in torch.unique(d).tolist():
        xk = x[d == k]
        mean, var = xk.mean(0), xk.var(0)  # unbiased, as nn.BatchNorm's running_var
        tm, tv = _tolerance(xk, mean, var)
        assert (m.pn.running_mean[k].double() - mean).abs().le(tm).all(), k
        assert (m.pn.running_var[k].double() - var).abs().le(tv).all(), k


def test_moving_average_fails_the_same_property(data):
    """pn_stats_rows: 0 keeps the old moving average: its statistics are NOT those of the final model's input
    (the defect the refresh fixes; the check above would fail on it by far more than its tolerance)."""
    schema, tables = data
    m = _fit(schema, tables, pn_stats_rows=0)
    x, d = _reference(m, tables["train"])
    gap = max(float((m.pn.running_mean[k].double() - x[d == k].mean(0)).abs().max()) for k in torch.unique(d).tolist())
    assert gap > 1e-3


def test_row_cap_bounds_the_rows_used(data):
    """With pn_stats_rows below the table, the statistics come from the first batches of the epoch-seeded
    shuffled order only (so they differ from the whole table's), and a layer inside pn_hidden is refreshed
    too (the hook refreshes every PartitionedNorm)."""
    schema, tables = data
    m = _fit(schema, tables, pn_stats_rows=128, pn_hidden=True)  # eval_batch_size 128: one batch
    x, d = _reference(m, tables["train"])
    gap = max(float((m.pn.running_mean[k].double() - x[d == k].mean(0)).abs().max()) for k in torch.unique(d).tolist())
    assert gap > 1e-3
    assert sum(isinstance(mod, PartitionedNorm) for mod in m.modules()) > 1


def test_old_checkpoint_without_the_key_loads(data):
    """A state dict saved before the hook existed has the same buffers: it loads strictly."""
    schema, _ = data
    a = build_model("star", schema, SMALL)
    b = build_model("star", schema, {**SMALL, "pn_stats_rows": 0})
    b.load_state_dict(a.state_dict(), strict=True)
