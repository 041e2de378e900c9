"""kill -9 during an epoch, ``dynarec train --resume``, and the run ends exactly where an uninterrupted one
does (metrics to 1e-6, log.csv with each epoch once), through real ``python -m dynarec`` processes."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynarec.cli import main

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--model", "mmoe", "--epochs", "5", "--batch-size", "64", "--set", "model.hidden=[16]",
        "--set", "model.num_experts=2", "--set", "trainer.progress=false", "--set", "trainer.threads=1",
        "--set", "trainer.patience=2", "--set", "trainer.task_weighting=uncertainty", "--seed", "4"]


def _cli(*argv, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dynarec", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _log(folder):
    with open(folder / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _flat(d, pre=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{pre}{k}/") if isinstance(v, dict) else {pre + k: v})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume") / "data"
    assert main(["data", "synthetic", "--rows", "12000", "--out", str(d)]) == 0
    return d


def test_sigkill_during_an_epoch_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = _cli("train", "--data", str(data), "--out", str(ref), *ARGS)
    assert p.wait(timeout=600) == 0, p.stderr.read()

    p = _cli("train", "--data", str(data), "--out", str(run), *ARGS)
    last = tmp_path / ".run.partial" / "last.pt"
    t0 = time.time()
    while not last.exists() and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before its first resume point"
    time.sleep(0.05)  # into the next epoch
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (run / "model.pt").exists()  # killed before the end: nothing swapped in
    done = len(_log(tmp_path / ".run.partial"))
    assert 1 <= done < len(_log(ref))

    # the config comes from the saved run: an option with another value is refused, naming it; the same
    # command with --resume appended continues the run
    q = _cli("train", "--resume", str(run), "--epochs", "9")
    assert q.wait(timeout=60) == 2 and "--epochs (9; the interrupted run has" in q.stderr.read()
    q = _cli("train", "--data", str(data), "--out", str(run), *ARGS, "--resume", str(run))
    assert q.wait(timeout=600) == 0, q.stderr.read()

    a, b = json.loads((ref / "metrics.json").read_text()), json.loads((run / "metrics.json").read_text())
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys() and len(fa) > 4
    for k in fa:
        assert fb[k] == pytest.approx(fa[k], abs=1e-6), k
    la, lb = _log(ref), _log(run)
    assert [r["epoch"] for r in lb] == [r["epoch"] for r in la] == [str(i) for i in range(1, len(la) + 1)]
    for ra, rb in zip(la, lb):
        for k in ra:
            if k.startswith(("valid_", "train_loss")):
                assert float(rb[k]) == pytest.approx(float(ra[k]), abs=1e-6), (ra["epoch"], k)
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert not (run / "last.pt").exists() and not (tmp_path / ".run.partial").exists()
    assert json.loads((run / "config.json").read_text())["trainer"] == json.loads((ref / "config.json").read_text())["trainer"]


def test_resume_without_an_interrupted_run_is_one_line(data, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no interrupted run to resume" in err[0] and "nothing" in err[0]


def test_in_process_interrupt_keeps_the_resume_point_and_resume_is_exact(small_synth, tmp_path, monkeypatch):
    """``train_model(resume=True)`` after a KeyboardInterrupt in epoch 3 (early stopping and the learned
    uncertainty weights carried over); a resume point from other data is refused."""
    import torch

    from dynarec.errors import DataError
    from dynarec.train.run import train_model
    from dynarec.train.step import TrainStep

    schema, tables, _ = small_synth
    args = ("mmoe", schema, tables, {"hidden": [8], "num_experts": 2},
            {"epochs": 4, "batch_size": 256, "lr": 0.02, "patience": 2, "progress": False,
             "task_weighting": "uncertainty"})
    ref = train_model(*args, seed=2, out=tmp_path / "ref")
    real, calls = TrainStep.step, []

    def flaky(self, batch):
        calls.append(1)
        if len(calls) == 2 * 13 + 5:  # 13 steps per epoch: inside epoch 3
            raise KeyboardInterrupt
        return real(self, batch)
    monkeypatch.setattr(TrainStep, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_model(*args, seed=2, out=tmp_path / "run")
    monkeypatch.setattr(TrainStep, "step", real)
    work = tmp_path / ".run.partial"
    assert (work / "last.pt").exists() and not (tmp_path / "run").exists()
    assert [r["epoch"] for r in _log(work)] == ["1", "2"]
    other = {**tables, "train": tables["train"].subset(torch.arange(1000))}
    with pytest.raises(DataError, match="train_rows"):
        train_model(*args[:2], other, *args[3:], seed=2, out=tmp_path / "run", resume=True)
    # same row counts, other rows or order (e.g. another split seed): refused by the content fingerprint
    perm = torch.randperm(len(tables["train"]), generator=torch.Generator().manual_seed(5))
    shuffled = {**tables, "train": tables["train"].subset(perm)}
    with pytest.raises(DataError, match="train_data"):
        train_model(*args[:2], shuffled, *args[3:], seed=2, out=tmp_path / "run", resume=True)
    got = train_model(*args, seed=2, out=tmp_path / "run", resume=True)
    assert got.metrics == ref.metrics and got.history.best_epoch == ref.history.best_epoch
    assert [r["epoch"] for r in _log(tmp_path / "run")] == [r["epoch"] for r in _log(tmp_path / "ref")]
