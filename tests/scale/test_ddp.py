"""Data-parallel training with 2 gloo processes (real torch.distributed.run launches, CPU): the same weights
as one process at the same global batch, metrics gathered over ranks, the CLI's JSON contract."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
MODELS = ["dnn", "mmoe", "pepnet", "star", "apg_dnn"]
# the 2-process step sums the two half-batch gradients in another order than one process: float32
# rounding, amplified a little by Adam over 8 steps. Tables: Adagrad's first step on a row is
# lr * g / (|g| + 1e-10), which turns the rounding of a near-zero gradient into up to lr * 1e-2; so at most
# 0.1% of a table's numbers may differ by more, and none by more than TABLE_MAX.
ATOL, RTOL = 2e-5, 1e-4
TABLE_SHARE, TABLE_MAX = 1e-3, 5e-3


def _close(name, key, got, want):
    if not key.startswith("tables."):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name} {key}: {m}")
        return
    diff = (got - want).abs()
    off = diff > ATOL + RTOL * want.abs()
    assert off.float().mean() <= TABLE_SHARE and diff.max() <= TABLE_MAX, \
        f"{name} {key}: {int(off.sum())} of {off.numel()} differ, max {float(diff.max()):.2e}"


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _torchrun(*args, timeout=120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    two = _torchrun(str(WORKER), str(d / "two.pt"), ",".join(MODELS))
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(WORKER), str(d / "one.pt"), ",".join(MODELS)], env=_env(),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    return torch.load(d / "one.pt", weights_only=False), torch.load(d / "two.pt", weights_only=False)


@pytest.mark.parametrize("name", MODELS)
def test_two_processes_end_with_the_weights_of_one(runs, name):
    one, two = runs
    assert one["world"] == 1 and two["world"] == 2
    a, b = one[name]["state"], two[name]["state"]
    assert a.keys() == b.keys()
    for k in a:
        _close(name, k, b[k], a[k])
    assert len(one[name]["history"]) == len(two[name]["history"])  # same early-stopping decisions
    for h1, h2 in zip(one[name]["history"], two[name]["history"]):
        assert math.isclose(h1["valid_auc"], h2["valid_auc"], abs_tol=1e-5)
    assert one[name]["best_epoch"] == two[name]["best_epoch"]
    for t, v in one[name]["metrics"]["auc"].items():
        assert math.isclose(v["all"], two[name]["metrics"]["auc"][t]["all"], abs_tol=1e-5)


def test_gathered_predictions_and_metrics_equal_single_process(runs):
    from dynarec.metrics import compute_metrics
    from tests.scale.ddp_worker import data

    _, two = runs
    g = two["gathered"]
    for t in g["preds"]:  # rank 0's slice + rank 1's slice == every row, predicted by one process
        assert g["preds"][t].shape == g["local"][t].shape == (333,)
        np.testing.assert_allclose(g["preds"][t], g["local"][t], rtol=0, atol=1e-6)
    schema, tables = data()
    v = tables["valid"]
    labels = {t: x.double().numpy() for t, x in v.labels.items()}
    assert g["metrics"] == compute_metrics(labels, g["preds"], v.domain.numpy(), schema.domain_values)


def test_cli_nproc_2_prints_the_json_contract_of_one_process(tmp_path):
    from dynarec.cli import main

    data = tmp_path / "data"
    assert main(["data", "synthetic", "--rows", "1200", "--out", str(data)]) == 0
    common = ["--model", "dnn", "--data", str(data), "--epochs", "1", "--batch-size", "200", "--json",
              "--set", "model.hidden=[8]"]
    run = lambda *extra: subprocess.run([sys.executable, "-m", "dynarec", "train", *common, *extra],  # noqa: E731
                                        env=_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    one, two = run("--out", str(tmp_path / "one")), run("--out", str(tmp_path / "two"), "--nproc", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert "find_unused_parameters" not in two.stderr  # DDP's C++ performance warning, once per rank before
    j1, j2 = json.loads(one.stdout.strip().splitlines()[-1]), json.loads(two.stdout.strip().splitlines()[-1])
    assert j1.keys() == j2.keys() and j1["metrics"].keys() == j2["metrics"].keys()
    assert j2["checkpoint"] == str(tmp_path / "two") and (tmp_path / "two" / "model.pt").exists()
    assert abs(j1["metrics"]["auc"]["click"]["all"] - j2["metrics"]["auc"]["click"]["all"]) < 1e-4
    assert sum(line.startswith("{") for line in two.stdout.splitlines()) == 1  # rank 0 prints, once
