"""kill -9 INSIDE an epoch after a mid-epoch resume point (``trainer.checkpoint_every_steps``), then the same
command with ``--resume``: the run ends bit for bit where the uninterrupted one does, streamed and in memory,
through real ``python -m dynarec`` processes.

Why bitwise and not a tolerance: the resumed run restores the weights, optimizer and random states exactly
(``torch.save``), replays the interrupted epoch's batch order from the generator's state at its start, and
runs the same ops on the same batches in the same order with one thread, so nothing can differ."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from dynarec.data.outofcore import prepare_out_of_core
from dynarec.data.synthetic import generate, synthetic_schema
from dynarec.train.checkpoint import read_checkpoint, read_sealed
from dynarec.train.resume import FORMAT

ROOT = Path(__file__).resolve().parents[2]
EVERY = 7
COMMON = ["--model", "dnn", "--epochs", "2", "--batch-size", "64", "--seed", "3", "--set", "trainer.threads=1",
          "--set", "trainer.progress=false", "--set", f"trainer.checkpoint_every_steps={EVERY}",
          "--set", "trainer.patience=5"]
LOADING = {"stream": ["--set", "data.loading=stream", "--set", "data.shuffle_buffer=700"],
           "memory": ["--set", "data.loading=memory"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("midepoch")
    t, _ = generate(4000, 2)
    pq.write_table(t, d / "raw.parquet")
    prepare_out_of_core(d / "raw.parquet", synthetic_schema(), d / "p", "random", progress=False,
                        row_group_rows=300, shard_rows=1000)  # 11 row groups of train in 4 files
    return d / "p"


def _cli(*argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dynarec", "train", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _log(folder):
    with open(folder / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("loading", ["stream", "memory"])
def test_sigkill_inside_epoch_one_then_resume_is_bitwise_uninterrupted(folder, tmp_path, loading):
    args = ["--data", str(folder), *COMMON, *LOADING[loading]]
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = _cli(*args, "--out", str(ref))
    assert p.wait(timeout=600) == 0, p.stderr.read()

    p = _cli(*args, "--out", str(run))
    last = tmp_path / ".run.partial" / "last.pt"
    t0 = time.time()
    while not last.exists() and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.002)
    assert p.poll() is None, "the run ended before its first resume point"
    os.kill(p.pid, signal.SIGKILL)  # right after the first mid-epoch resume point (step 7 of epoch 1)
    p.wait()
    assert p.returncode == -signal.SIGKILL and not run.exists()
    saved, _ = read_sealed(last, FORMAT, "resume point", "")  # sealed: its checksum verified
    pos = saved["loop"]["position"]
    assert pos is not None and pos["epoch"] == 1 and pos["step"] % EVERY == 0, pos  # killed inside epoch 1
    assert saved["loop"]["epoch"] == 0 and pos["global_step"] == pos["step"]

    q = _cli(*args, "--out", str(run), "--resume", str(run))
    assert q.wait(timeout=600) == 0, q.stderr.read()
    assert (run / "metrics.json").read_text() == (ref / "metrics.json").read_text()
    a, b = read_checkpoint(ref / "model.pt")["state_dict"], read_checkpoint(run / "model.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _log(ref), _log(run)
    assert [r["epoch"] for r in lb] == [r["epoch"] for r in la] == ["1", "2"]
    for ra, rb in zip(la, lb):
        assert {k: v for k, v in ra.items() if k.startswith(("valid_", "train_loss"))} == \
            {k: v for k, v in rb.items() if k.startswith(("valid_", "train_loss"))}
    m = json.loads((run / "metrics.json").read_text())
    assert m["auc"]["click"]["all"] > 0.5


def test_checkpoint_every_steps_without_an_out_folder_is_refused(small_synth):
    from dynarec.errors import ConfigError
    from dynarec.train.run import train_model

    schema, tables, _ = small_synth
    with pytest.raises(ConfigError, match="trainer.checkpoint_every_steps"):
        train_model("dnn", schema, tables, {}, {"epochs": 1, "progress": False, "checkpoint_every_steps": 5})


def test_a_corrupted_resume_point_is_one_data_error(tmp_path):
    from dynarec.errors import DataError
    from dynarec.train.resume import load_state, save_state

    class _Loop:
        def state_dict(self):
            return {"epoch": 1, "weights": torch.arange(1000.0)}

    f = tmp_path / "last.pt"
    save_state(f, _Loop(), {"model": "dnn"})
    assert torch.equal(load_state(f, {"model": "dnn"})["weights"], torch.arange(1000.0))
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the payload
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch|not a readable"):
        load_state(f, {"model": "dnn"})
