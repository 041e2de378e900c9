"""Data-parallel training with 2 gloo processes (real torch.distributed.run launches, CPU): every step applies
the gradient one process computes on the same global batch, the final metrics agree, metrics gathered over
ranks, the CLI's JSON contract.

What DDP guarantees is per step: the ranks' averaged gradient equals the one-process gradient of the global batch
at the same weights, up to the order of float32 sums. So each recorded step of the 2-process run is replayed in
this process at the recorded weights, in float32 and in float64; the DDP gradient must be as close to the float64
gradient as the one-process float32 gradient is (4x its largest error, measured on THIS CPU, so the bound follows
the machine's kernels), plus sqrt(B) float32 roundings of the tensor's largest entry (the typical error of a
B-term float32 sum in another order). Weights after several Adam / Adagrad steps are NOT compared: each step
turns rounding differences into sign flips of near-zero gradients (Adam's first steps move by lr whatever the
gradient's size), which differ from one CPU to another."""
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
U32 = 2.0 ** -24  # float32 unit roundoff


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


def _cat(batches, dtype=None):
    """One Batch of every rank's rows (rank order); ``dtype`` casts the float parts."""
    from dynarec.data.table import Batch

    f = (lambda x: x) if dtype is None else (lambda x: x.to(dtype))  # noqa: E731
    first = batches[0]
    return Batch(torch.cat([b.sparse for b in batches]), f(torch.cat([b.dense for b in batches])),
                 torch.cat([b.domain for b in batches]),
                 {t: f(torch.cat([b.labels[t] for b in batches])) for t in first.labels},
                 {n: torch.cat([b.sequences[n] for b in batches]) for n in first.sequences},
                 None if first.user is None else torch.cat([b.user for b in batches]))


def _reference_grads(name, schema, before, batch, dtype):
    """The one-process gradient of ``batch`` at weights ``before``, by the training step itself."""
    from tests.scale.ddp_worker import CASES, TRAINER, Recorder

    from dynarec.models import build_model
    from dynarec.train.config import TrainerConfig
    from dynarec.train.step import TrainStep

    params, extra = CASES[name]
    model = build_model(name, schema, params)
    model.load_state_dict(before)
    model = model.to(dtype).train()
    recorder = Recorder()
    try:
        cfg = {k: v for k, v in {**TRAINER, **extra}.items() if k != "progress"}
        TrainStep(model, TrainerConfig(**cfg)).step(batch if dtype == torch.float32 else _cat([batch], dtype))
    finally:
        recorder.close()
    return recorder.steps[0]["grads"]


@pytest.mark.parametrize("name", MODELS)
def test_every_step_applies_the_one_process_gradient(runs, name):
    from tests.scale.ddp_worker import data

    one, two = runs
    assert one["world"] == 1 and two["world"] == 2
    schema, _ = data()
    steps = two[name]["steps"]
    assert len(steps) == 8  # 2 epochs x 1024 rows / 256 per global batch
    for k, s in enumerate(steps):
        assert len(s["batches"]) == 2 and all(len(b) == 128 for b in s["batches"])
        batch = _cat(s["batches"])
        g32 = _reference_grads(name, schema, s["before"], batch, torch.float32)
        g64 = _reference_grads(name, schema, s["before"], batch, torch.float64)
        assert s["grads"].keys() == g64.keys()
        for key, got in s["grads"].items():
            ref = g64[key]
            scale = float(ref.abs().max())
            e_one = float((g32[key].double() - ref).abs().max())
            e_ddp = float((got.double() - ref).abs().max())
            bound = 4 * e_one + math.sqrt(len(batch)) * U32 * scale
            assert e_ddp <= bound, f"{name} step {k} {key}: DDP gradient off by {e_ddp:.2e} (bound {bound:.2e}, " \
                                   f"one-process float32 off by {e_one:.2e}, largest entry {scale:.2e})"


def _auc(p, y):
    pos, neg = p[y == 1], p[y == 0]
    d = pos[:, None] - neg[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


@pytest.mark.parametrize("name", MODELS)
def test_final_metrics_agree_within_the_pairs_the_runs_can_order_differently(runs, name):
    """Both runs' test AUC from their own predictions: predictions that differ by at most d can only reorder a
    (positive, negative) pair whose scores lie within 2d, so the AUCs differ by at most that share of pairs."""
    from tests.scale.ddp_worker import data

    one, two = runs
    _, tables = data()
    assert one[name]["epochs"] == two[name]["epochs"]
    for t, y in tables["test"].labels.items():
        y = y.double().numpy()
        p1, p2 = one[name]["test_preds"][t], two[name]["test_preds"][t]
        d = float(np.abs(p1 - p2).max())
        pos, neg = p1[y == 1], p1[y == 0]
        can_flip = float((np.abs(pos[:, None] - neg[None, :]) <= 2 * d).mean())
        assert abs(_auc(p1, y) - _auc(p2, y)) <= can_flip + 1e-12, (name, t, d, can_flip)


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


def test_cli_nproc_2_a_collapsed_fit_is_one_line_exit_2(tmp_path):
    """Every rank stops on the collapse; the launcher prints ONE error line (not one per rank, nor torch's
    elastic log) and exits 2, as a one-process run does; nothing is written to --out."""
    from dynarec.cli import main

    data = tmp_path / "data"
    assert main(["data", "synthetic", "--rows", "1200", "--out", str(data)]) == 0
    two = subprocess.run([sys.executable, "-m", "dynarec", "train", "--model", "dnn", "--data", str(data),
                          "--epochs", "2", "--batch-size", "200", "--set", "trainer.lr=1e6", "--set",
                          "trainer.progress=false", "--nproc", "2", "--out", str(tmp_path / "two")],
                         env=_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = [x for x in two.stderr.splitlines() if x.strip()]
    assert two.returncode == 2, two.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("dynarec: error: training collapsed") and "trainer.lr 1e+06" \
        in lines[0], lines
    assert not (tmp_path / "two" / "model.pt").exists()


def _kill_all(token: str) -> int:
    """SIGKILL every process whose command line holds ``token`` -> how many."""
    import signal

    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if token in cmd.split():
                    os.kill(int(d.name), signal.SIGKILL)
                    n += 1
            except (OSError, ProcessLookupError):
                pass
    return n


def test_cli_nproc_2_killed_mid_epoch_resumes_every_rank(tmp_path):
    """kill -9 of a 2-process run (its whole process group) inside epoch 1, then the same command with
    --resume: every rank continues from rank 0's resume point (a rank that started over would train other
    epochs than rank 0 and the metrics would differ), and the run ends where the uninterrupted one does."""
    import time

    from dynarec.cli import main

    data = tmp_path / "data"
    assert main(["data", "synthetic", "--rows", "3000", "--out", str(data)]) == 0
    common = [sys.executable, "-m", "dynarec", "train", "--model", "dnn", "--data", str(data), "--epochs", "2",
              "--batch-size", "64", "--seed", "1", "--set", "model.hidden=[8]", "--set", "trainer.progress=false",
              "--set", "trainer.checkpoint_every_steps=4", "--nproc", "2"]
    ref = subprocess.run([*common, "--out", str(tmp_path / "ref")], env=_env(), capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    assert ref.returncode == 0, ref.stderr[-3000:]
    p = subprocess.Popen([*common, "--out", str(tmp_path / "run")], env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    last, t0 = tmp_path / ".run.partial" / "last.pt", time.time()
    while not last.exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before its first resume point"
    killed = _kill_all(str(tmp_path / "run"))  # the launcher and both ranks (torchrun gives them own sessions)
    p.wait()
    assert killed >= 3, killed
    assert not (tmp_path / "run" / "model.pt").exists()
    res = subprocess.run([*common, "--out", str(tmp_path / "run"), "--resume", str(tmp_path / "run")], env=_env(),
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    a = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    b = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert a["auc"]["click"]["all"] == pytest.approx(b["auc"]["click"]["all"], abs=1e-6)
    assert a["logloss"]["click"]["all"] == pytest.approx(b["logloss"]["click"]["all"], abs=1e-6)
