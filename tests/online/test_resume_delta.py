"""kill -9 in the middle of a stream then ``--resume`` gives the same next passes as an uninterrupted run (real
``python -m dynarec online`` processes); the deltas hold exactly the rows that changed, and applied in order
to the first pass's serving copy they reproduce every later pass's weights."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynarec.cli import main
from dynarec.data.stream import write_stream
from dynarec.online.delta import apply_delta, from_state_dict, owners, read_delta, state_dict_of
from dynarec.online.marker import pass_dir, read_current
from dynarec.train.checkpoint import read_checkpoint

from tests.online.conftest import SMALL, online

ROOT = Path(__file__).resolve().parents[2]


def _cli(*argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "dynarec", "online", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _args(data, out):
    sets = [x for s in SMALL + ["online.max_rows=150", "online.expiry_passes=2", "online.shuffle=true"]
            for x in ("--set", s)]
    return ["--schema", str(data / "schema.yaml"), "--passes", str(data), "--model", "pepnet", "--out", str(out),
            "--json", *sets]


def _rows(stdout):
    return [json.loads(x) for x in stdout.strip().splitlines()]


def test_sigkill_mid_stream_then_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    data = tmp_path / "data"
    write_stream(data, 6, 2000, seed=5)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["online", *_args(data, ref)]) == 0  # the uninterrupted run, in process
    want = _rows(capsys.readouterr().out)
    assert len(want) == 7 and want[-1]["passes"] == want[:-1]

    p = _cli(*_args(data, run))
    t0 = time.time()
    while (read_current(run) or 0) < 1 and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.002)
    assert p.poll() is None, "the run ended before it could be killed"
    time.sleep(0.05)  # into the next pass (a pass of 2,000 rows takes ~0.1-0.5 s)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = read_current(run)
    # the last good pass survived; later ones were never started or never completed; passes are left to resume
    assert 1 <= done <= 4
    assert (run / pass_dir(done) / "model.pt").exists()

    assert main(["online", "--passes", str(data), "--out", str(run), "--resume", "--set", "online.max_rows=99"]) == 2
    err = capsys.readouterr().err
    assert "online.max_rows differs" in err and len(err.strip().splitlines()) == 1
    q = _cli("--passes", str(data), "--out", str(run), "--json", "--resume")
    out, err = q.communicate(timeout=600)
    assert q.returncode == 0, err
    got = _rows(out)
    assert [r["pass"] for r in got[:-1]] == list(range(done + 1, 6))
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "train_rows_per_s"} for r in rows]  # noqa: E731
    assert untimed(got[-1]["passes"]) == untimed(want[-1]["passes"])  # the summary: every pass, resumed ones equal
    for a, b in zip(want[done + 1:6], got[:-1]):
        for k in ("auc", "logloss", "table_rows", "admitted", "evicted", "expired", "delta_rows", "train_loss"):
            assert b[k] == a[k], (a["pass"], k)


def _state(run, k):
    return read_checkpoint(run / pass_dir(k) / "model.pt")


@pytest.mark.parametrize("dense_every", [1, 2])
def test_deltas_replayed_on_the_first_pass_copy_reproduce_the_weights(stream, tmp_path, dense_every):
    run = tmp_path / "run"
    rows = online(stream, run, "online.max_rows=120", "online.expiry_passes=1", f"online.dense_every={dense_every}")
    from dynarec.models import build_model
    from dynarec.data.schema import Schema

    blobs = [_state(run, k) for k in range(4)]
    model = build_model(blobs[0]["model"], Schema.from_dict(blobs[0]["schema"]), blobs[0]["params"])
    serving = from_state_dict(model, blobs[0]["state_dict"])
    from dynarec.online.state import restore_state
    from dynarec.online.config import load_online_config
    cfg = load_online_config(None, SMALL + ["online.max_rows=120", "online.expiry_passes=1"], "pepnet")
    serving["owners"] = owners(restore_state(cfg, blobs[0], "p0").index)
    keys = {f"tables.{n}.weight" for n in model.tables.specs}
    evicted = 0
    for k in range(1, 4):
        delta = read_delta(run / pass_dir(k) / "delta.pt")
        prev, cur = blobs[k - 1]["state_dict"], blobs[k]["state_dict"]
        for key in keys:  # exactly the rows that changed
            name = key[len("tables."):-len(".weight")]
            changed = torch.nonzero((prev[key] != cur[key]).any(1)).flatten()
            assert torch.equal(delta["tables"][name][0], changed), (k, name)
        assert rows[k]["delta_rows"] == sum(len(r) for r, _ in delta["tables"].values())
        apply_delta(serving, delta)
        sd = state_dict_of(serving)
        due = k % dense_every == 0
        assert (delta["dense"] is not None) == due
        for key, v in cur.items():
            if key in keys or due:
                assert torch.equal(sd[key], v), (k, key)
        if not due:  # the dense part stays at the last due pass
            assert all(torch.equal(sd[x], blobs[k - 1]["state_dict"][x]) for x in cur if x not in keys)
        f, i = owners(restore_state(cfg, blobs[k], f"p{k}").index)
        assert torch.equal(serving["owners"][0], f) and torch.equal(serving["owners"][1], i)
        evicted += len(delta["evicted"][0])
    assert evicted > 0


@pytest.mark.parametrize("extra", [[], ["online.preset=pepnet_online"]])
def test_resume_picks_up_passes_that_arrive_later(stream, tmp_path, extra):
    """The streaming use: passes land in the folder over time; ``--resume`` trains the new ones and gives the
    same passes as one run over the whole folder (with the preset too: its table groups are restored)."""
    import shutil

    from dynarec.data.schema import Schema
    from dynarec.online.config import load_online_config
    from dynarec.online.runner import run_online

    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(stream / "schema.yaml", live)
    cfg = load_online_config(None, SMALL + ["online.max_rows=100", "online.expiry_passes=1"] + extra, "pepnet")
    schema = Schema.load(stream / "schema.yaml")
    whole = list(run_online(schema, stream, tmp_path / "whole", cfg))
    got = []
    for k in range(4):
        shutil.copy(stream / f"pass-{k:04d}.parquet", live)
        got += list(run_online(schema, live, tmp_path / "run", cfg, resume=k > 0))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_rows_per_s"} for r in rows]  # noqa: E731
    assert strip(got) == strip(whole)
