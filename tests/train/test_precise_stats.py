"""STAR's partitioned norm evaluates with PRECISE statistics (issue 29): after a fit, E_p / Var_p of the input
PN are the exact per-domain mean and unbiased variance of that layer's inputs under the kept model, over the
training rows of the end-of-epoch pass (all of them here: fewer than ``ROWS``), instead of running averages
that mix the inputs of every earlier model; the pass changes nothing else (same per-step training losses,
same weights, the other layers' buffers and the training's random draws untouched).

Tolerance: the reference is computed in float64 from the same float32 inputs the pass saw (eval-mode and
train-mode inputs of the first PN are equal: no dropout, no batch-dependent layer before it), and both sides
are then rounded once to float32: within 2 float32 units of roundoff of the larger magnitude."""
import numpy as np
import pytest
import torch

from dynarec.cli import main
from dynarec.data.prepare import load_prepared
from dynarec.nn.star import PartitionedNorm
from dynarec.train.precise_stats import ROWS
from dynarec.train.run import train_model

U32 = 2.0 ** -24
TRAINER = {"epochs": 2, "batch_size": 512, "progress": False, "patience": 5}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("precise") / "data"
    assert main(["data", "synthetic", "--rows", "6000", "--out", str(d)]) == 0
    return load_prepared(d)


def _pn_inputs(model, table):
    """The input PN's inputs over every row of ``table`` under ``model`` (eval mode), with the rows' domains."""
    got = []
    h = model.pn.register_forward_pre_hook(lambda m, a: got.append((a[0].detach().double(), a[1])))
    model.eval()
    with torch.no_grad():
        for b in table.batches(4096):
            model(b)
    h.remove()
    return torch.cat([x for x, _ in got]).numpy(), torch.cat([d for _, d in got]).numpy()


def _fit(data, stats, valid=True):
    schema, tables = data
    tables = tables if valid else {k: v for k, v in tables.items() if k != "valid"}  # no early stopping
    torch.manual_seed(0)
    return train_model("star", schema, tables, {"hidden": [16, 8], "pn_stats": stats, "dropout": 0.0}, TRAINER,
                       seed=3)


def test_stats_are_the_exact_statistics_of_the_kept_model(data):
    schema, tables = data
    assert len(tables["train"]) <= ROWS  # so the pass saw every training row
    model = _fit(data, "precise").model
    pn = model.pn
    x, d = _pn_inputs(model, tables["train"])
    for k in np.unique(d):
        xs = x[d == k]
        mean, var = xs.mean(0), xs.var(0, ddof=1)
        for got, want in ((pn.running_mean[k], mean), (pn.running_var[k], var)):
            tol = 2 * U32 * max(np.abs(want).max(), 1e-30)
            assert np.abs(got.double().numpy() - want).max() <= tol, (k, got, want)


def test_ema_statistics_fail_the_same_check(data):
    """The check above is sensitive: the paper's running averages (pn_stats: ema) are far from it."""
    schema, tables = data
    model = _fit(data, "ema").model
    x, d = _pn_inputs(model, tables["train"])
    k = int(np.bincount(d).argmax())
    want = x[d == k].var(0, ddof=1)
    assert np.abs(model.pn.running_var[k].double().numpy() - want).max() > 1e3 * 2 * U32 * np.abs(want).max()


def test_the_pass_changes_nothing_but_the_statistics(data):
    """With every domain present twice in each batch, the running statistics never enter a training step, so
    precise and ema runs must take the same steps: equal per-epoch losses and equal weights (without early
    stopping, which keeps the epoch each run's own statistics score best)."""
    a, b = _fit(data, "precise", valid=False), _fit(data, "ema", valid=False)
    assert [r["train_loss"] for r in a.history.epochs] == [r["train_loss"] for r in b.history.epochs]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    stats = {k for k in sa if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k not in stats)
    assert not torch.equal(sa["pn.running_var"], sb["pn.running_var"])


def test_refresh_leaves_other_buffers_and_random_draws_alone():
    from dynarec.train.precise_stats import refresh

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm1d(3)
            self.pn = PartitionedNorm(3, 2)

        def forward(self, b):
            return self.pn(self.bn(b[0]), b[1])

    class Table:
        def __init__(self, x, d):
            self.x, self.d = x, d

        def __len__(self):
            return len(self.x)

        def batches(self, bs, shuffle=False, generator=None):
            order = torch.randperm(len(self.x), generator=generator) if shuffle else torch.arange(len(self.x))
            for s in range(0, len(self.x), bs):
                i = order[s:s + bs]
                yield self.x[i], self.d[i]

    x, d = torch.randn(64, 3) * 3 + 1, torch.arange(64) % 2
    net = Net()
    bn_before = {k: v.clone() for k, v in net.bn.state_dict().items()}
    torch.manual_seed(7)
    want_draw = torch.rand(1)
    torch.manual_seed(7)
    assert refresh(net, Table(x, d), batch_size=16) == 1
    assert torch.equal(torch.rand(1), want_draw)  # the global generator is where it was
    assert all(torch.equal(v, bn_before[k]) for k, v in net.bn.state_dict().items())  # BN learned nothing
    assert torch.isfinite(net.pn.running_var).all() and not torch.equal(net.pn.running_var, torch.ones(2, 3))
