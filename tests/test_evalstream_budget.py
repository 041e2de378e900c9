"""Streamed evaluation within a memory budget (dynarec/evalstream.py, dynarec/evalgauc.py): the histogram AUC
stays within its derived bound on tied and skewed scores (and the bound is attained where every pair shares a
bin), the exact path equals today's in-memory evaluation, the histogram path's gAUC (spilled by user hash)
equals the in-memory gAUC, and `dynarec evaluate --memory-budget` takes the streamed path."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.cli import main
from dynarec.data.loader import open_split
from dynarec.data.outofcore import prepare_out_of_core
from dynarec.data.prepare import load_prepared
from dynarec.data.synthetic import generate, synthetic_schema
from dynarec.evalstream import HistogramAUC, evaluate_stream
from dynarec.metrics import auc, evaluate_model, gauc
from dynarec.models import build_model

EPS = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("evb")
    t, _ = generate(6000, 2)
    pq.write_table(t, d / "raw.parquet")
    prepare_out_of_core(d / "raw.parquet", synthetic_schema(), d / "p", "random", progress=False,
                        row_group_rows=300, shard_rows=1000)
    return d / "p"


def _bound_holds(z, y, dom, bins):
    h = HistogramAUC(bins)
    for part in np.array_split(np.arange(len(z)), 5):  # chunk by chunk, as a stream
        h.add(z[part], y[part], dom[part])
    worst = 0.0
    for key in (-1, *np.unique(dom).tolist()):
        m = np.ones(len(z), bool) if key == -1 else dom == key
        got, bound = h.auc(key)
        exact = auc(y[m], z[m])
        # the bound is exact arithmetic on counts; the two AUCs are float64 sums of <= n terms
        assert abs(got - exact) <= bound + 4 * len(z) * EPS, (key, got, exact, bound)
        worst = max(worst, abs(got - exact))
    return worst, h.auc(-1)[1]


def test_histogram_bound_holds_on_ties_and_skewed_scores():
    rng = np.random.default_rng(3)
    n = 200_000
    y = rng.random(n) < 0.05  # rare positives
    dom = rng.integers(1, 4, n)
    # skewed: log-normal logits, most near the low end, a tail past the span (clipped to the end bins) ...
    z = rng.lognormal(0.0, 1.2, n) - 4 + 1.5 * y
    # ... and heavy ties: a third of the rows on a coarse grid that straddles bin edges
    tie = rng.random(n) < 0.33
    z[tie] = np.round(z[tie] * 3) / 3
    worst, bound = _bound_holds(z, y, dom, bins=1 << 10)  # few bins: a non-trivial error to bound
    assert worst > 0 and bound > worst  # the check is not vacuous
    _bound_holds(z, y, dom, bins=1 << 20)


def test_histogram_bound_is_attained_when_every_pair_shares_a_bin():
    z = np.array([30.0, 31, 32, 40, 50, 60])  # all beyond the span: one end bin
    y = np.array([0, 0, 0, 1, 1, 1])
    h = HistogramAUC()
    h.add(z, y, np.ones(6, np.int64))
    got, bound = h.auc(-1)
    assert (got, bound) == (0.5, 0.5) and auc(y, z) == 1.0  # |0.5 - 1| = the bound


def _model(folder):
    schema, mem = load_prepared(folder, ("test",))
    torch.manual_seed(0)
    model = build_model("dnn", schema, {})
    st = open_split(folder, "test")
    st.schema = schema
    return model, mem["test"], st


def test_exact_path_equals_in_memory_evaluation(folder):
    model, mem, st = _model(folder)
    a = evaluate_model(model, mem, 512)
    b = evaluate_stream(model, st, 512, budget_mb=64)
    assert b.pop("method") == "exact" and all(v == 0 for t in b.pop("auc_error_bound").values() for v in t.values())
    assert b == a  # bit for bit: the same batches, the same metric functions


def test_histogram_path_bound_and_exact_gauc(folder):
    model, mem, st = _model(folder)
    a = evaluate_model(model, mem, 512)
    b = evaluate_stream(model, st, 512, budget_mb=0.01)  # 10 kB: neither the scores nor the users fit
    assert b["method"] == "histogram" and b["count"] == a["count"] and b["positives"] == a["positives"]
    users = len(np.unique(mem.user.numpy()))
    for t in ("click", "conversion"):
        for k, v in a["auc"][t].items():
            if v is not None:
                assert abs(b["auc"][t][k] - v) <= b["auc_error_bound"][t][k] + 4 * len(mem) * EPS
            # gAUC: the same per-user AUCs summed over hash partitions: float64 reordering only
            if a["gauc"][t][k] is not None:
                assert b["gauc"][t][k] == pytest.approx(a["gauc"][t][k], rel=4 * users * EPS, abs=0)
        # logloss from float64 logits vs the float32 sigmoid in memory: -log p moves by <= 2^-24 / (1 - p) per row
        assert b["logloss"][t]["all"] == pytest.approx(a["logloss"][t]["all"], abs=1e-5)
    y = mem.labels["click"].numpy()
    assert b["gauc"]["click"]["all"] == pytest.approx(
        gauc(y, evaluate_probs(model, mem)["click"], mem.user.numpy()), rel=4 * users * EPS, abs=0)


def evaluate_probs(model, table):
    from dynarec.metrics import predict_table

    return predict_table(model, table, 512)


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_evaluate_streams_past_the_budget(folder, tmp_path, capsys):
    ck = tmp_path / "run"
    assert main(["train", "--model", "dnn", "--data", str(folder), "--epochs", "1", "--batch-size", "512",
                 "--out", str(ck), "--json"]) == 0
    tr = _last_json(capsys)
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(folder), "--json"]) == 0
    mem = _last_json(capsys)
    assert mem["metrics"] == tr["metrics"] and "evaluation" not in mem  # fits: today's path, unchanged
    # 0.1 MB: the tensors + scores of ~600 test rows (292 B each) do not fit, their scores (144 B) do -> streamed, exact
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(folder), "--memory-budget", "0.1", "--json"]) == 0
    ex = _last_json(capsys)
    assert ex["evaluation"]["method"] == "streamed, exact"
    ex["metrics"].pop("auc_error_bound")
    assert ex["metrics"] == tr["metrics"]
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(folder), "--memory-budget", "0.001",
                 "--json"]) == 0
    hi = _last_json(capsys)
    assert hi["evaluation"]["method"] == "streamed, histogram"
    assert abs(hi["metrics"]["auc"]["click"]["all"] - tr["metrics"]["auc"]["click"]["all"]) \
        <= hi["metrics"]["auc_error_bound"]["click"]["all"] + 1e-12
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(folder), "--memory-budget", "0.001",
                 "--mc-dropout", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mc-dropout" in err[0] and "memory budget" in err[0]
    raw = folder.parent / "raw.parquet"  # a raw file is read whole: the flag would have no effect
    assert main(["evaluate", "--checkpoint", str(ck), "--data", str(raw), "--memory-budget", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--memory-budget" in err[0] and "raw.parquet" in err[0]
