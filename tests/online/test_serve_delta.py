"""``dynarec serve`` follows an online run by applying each pass's ``delta.pt`` to the served model in place
(:mod:`dynarec.serve.delta_apply`): after each delta the served weights and id -> slot lookups are the pass's
own (bitwise), over passes with evictions and re-admitted ids, so answers equal ``dynarec predict`` with that
pass folder; a corrupted, missing or dense-less delta falls back to a full reload (one log line saying why)
and still answers as the pass's model."""
from __future__ import annotations

import asyncio
import logging
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.cli import main
from dynarec.online.delta import read_delta
from dynarec.online.marker import pass_dir, write_current
from dynarec.online.serving import SERVING
from dynarec.serve.sources import read_serving

from tests.online.conftest import online

pytest.importorskip("prometheus_client", reason="the serving engine needs the serve extra: pip install 'dynarec[serve]'")

SETS = ["online.max_rows=120", "online.expiry_passes=1"]


@pytest.fixture(scope="module")
def run4(stream, tmp_path_factory):
    """A 4-pass run with a table small enough to evict every pass (dense weights in every delta)."""
    run = tmp_path_factory.mktemp("serve_delta") / "run"
    rows = online(stream, run, *SETS)
    return {"run": run, "rows": rows, "stream": stream}


def _engine(src, tmp_path, start: int):
    from dynarec.serve.engine import Engine
    from dynarec.serve.server import ServerConfig
    from dynarec.serve.served import load_served

    run = tmp_path / "run"
    shutil.copytree(src, run)
    write_current(run, start)
    return run, Engine(load_served(run), ServerConfig())


def _rows(path, n=300):
    rows = pq.read_table(path).slice(0, n).to_pylist()
    for r in rows:
        r["hist_categories"] = r["hist_categories"].split("|") if r["hist_categories"] else []
    return rows


def _check_is_pass(served, run, k, rows, tmp_path, stream):
    """The served model after a delta is pass k's own: weights and lookups bitwise, answers bitwise on the
    same batch, and equal to `dynarec predict --checkpoint RUN/passes/k` to float32 rounding."""
    from dynarec.serve.rows import rows_to_columns
    from dynarec.serve.served import load_served

    ref = load_served(run / pass_dir(k))  # a fresh full load of the pass
    assert served.version == ref.version and served.manifest["online"]["pass"] == k
    got_sd, want_sd = served.predictor.model.state_dict(), ref.predictor.model.state_dict()
    assert got_sd.keys() == want_sd.keys()
    for key in want_sd:  # the delta carries the changed rows' float32 values: equal bit for bit
        assert torch.equal(got_sd[key], want_sd[key]), (k, key)
    blob, _ = read_serving(run / pass_dir(k) / SERVING)
    for e in blob["dynamic"]:  # the re-assigned slots: the lookup is the pass's
        _, mine = served.predictor.dynamic.entries[e["feature"]]
        if e["kind"] == "hash":
            assert mine == e
            continue
        assert torch.equal(mine["keys"], e["keys"]) and torch.equal(mine["slots"], e["slots"]), (k, e["feature"])
    cols = rows_to_columns(rows, served.schema)
    (a, ua), (b, ub) = served.predict_columns(cols), ref.predict_columns(cols)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and np.array_equal(ua, ub)  # same weights, same batch
    # `dynarec predict` scores the file in its own batch: the same float32 model, summed in other blockings,
    # agrees to float32 rounding (a few ulp of p <= 1: 1.2e-7 each)
    src = tmp_path / f"req{k}.parquet"
    pq.write_table(pq.read_table(stream / "pass-0003.parquet").slice(0, len(rows)), src)
    out = tmp_path / f"pred{k}.parquet"
    assert main(["predict", "--checkpoint", str(run / pass_dir(k)), "--data", str(src), "--out", str(out)]) == 0
    pred = pq.read_table(out).to_pydict()
    for t, o in zip(served.tasks, a):
        np.testing.assert_allclose(o, pred[t], rtol=0, atol=1e-6)


def test_deltas_applied_in_place_equal_each_pass(run4, tmp_path):
    src, stream = run4["run"], run4["stream"]
    run, eng = _engine(src, tmp_path, 0)
    model = eng.served.predictor.model
    rows = _rows(stream / "pass-0003.parquet")
    # the passes evict, and ids evicted in one pass are admitted again later (to another slot or the same)
    gone, back = set(), 0
    for k in range(1, 4):
        d = read_delta(src / pass_dir(k) / "delta.pt")
        back += len({(int(f), int(i)) for f, i in zip(d["assigned"][1], d["assigned"][2])} & gone)
        gone |= {(int(f), int(i)) for f, i in zip(*d["evicted"])}
    assert gone and back > 0, "the run must evict and re-admit ids"
    for k in range(1, 4):
        write_current(run, k)
        assert asyncio.run(_follow(eng)) == "delta"
        assert eng.served.predictor.model is model  # applied in place, not reloaded
        _check_is_pass(eng.served, run, k, rows, tmp_path, stream)
    assert eng.reloads.labels("delta")._value.get() == 3 and eng.reloads.labels("ok")._value.get() == 0


def test_several_deltas_at_once(run4, tmp_path):
    """The marker jumps two passes: both deltas are applied in order."""
    run, eng = _engine(run4["run"], tmp_path, 1)
    write_current(run, 3)
    assert asyncio.run(_follow(eng)) == "delta"
    _check_is_pass(eng.served, run, 3, _rows(run4["stream"] / "pass-0003.parquet", 100), tmp_path, run4["stream"])


@pytest.mark.parametrize("damage", ["corrupt", "missing", "wrong_pass"])
def test_a_bad_delta_falls_back_to_a_full_reload(run4, tmp_path, caplog, damage):
    run, eng = _engine(run4["run"], tmp_path, 1)
    model = eng.served.predictor.model
    f = run / pass_dir(2) / "delta.pt"
    if damage == "corrupt":
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        f.write_bytes(bytes(b))
    elif damage == "missing":
        f.unlink()
    else:  # pass 3's delta in pass 2's folder: out of order
        shutil.copy(run / pass_dir(3) / "delta.pt", f)
    write_current(run, 2)
    with caplog.at_level(logging.WARNING, logger="dynarec.serve.server"):
        assert asyncio.run(_follow(eng)) == "reload"
    lines = [r.getMessage() for r in caplog.records if "full reload" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and str(f) in lines[0], lines
    assert {"corrupt": "checksum", "missing": "missing", "wrong_pass": "out of order"}[damage] in lines[0]
    assert eng.served.predictor.model is not model  # a new model, loaded whole
    assert eng.reloads.labels("ok")._value.get() == 1 and eng.reloads.labels("delta")._value.get() == 0
    _check_is_pass(eng.served, run, 2, _rows(run4["stream"] / "pass-0003.parquet", 100), tmp_path, run4["stream"])


def test_a_delta_without_dense_weights_reloads(stream, tmp_path, caplog):
    """online.dense_every=2: pass 1's delta has no dense part, so only the pass's serving.pt gives its model."""
    src = tmp_path / "src"
    online(stream, src, *SETS, "online.dense_every=2")
    run, eng = _engine(src, tmp_path, 0)
    write_current(run, 1)
    with caplog.at_level(logging.WARNING, logger="dynarec.serve.server"):
        assert asyncio.run(_follow(eng)) == "reload"
    assert any("no dense weights" in r.getMessage() for r in caplog.records)
    write_current(run, 2)  # pass 2's delta carries them again
    assert asyncio.run(_follow(eng)) == "delta"
    _check_is_pass(eng.served, run, 2, _rows(stream / "pass-0003.parquet", 100), tmp_path, stream)


async def _follow(eng):
    from dynarec.serve.reload import follow_once

    return await follow_once(eng)


@pytest.mark.parametrize("table", ["hash", "static"])
def test_baseline_tables_follow_by_delta(stream, tmp_path, table):
    """The hashing trick and the static table have no owners to re-assign: their deltas are rows + dense."""
    src = tmp_path / "src"
    online(stream, src, "online.max_rows=100", f"online.table={table}")
    run, eng = _engine(src, tmp_path, 0)
    write_current(run, 1)
    assert asyncio.run(_follow(eng)) == "delta"
    _check_is_pass(eng.served, run, 1, _rows(stream / "pass-0003.parquet", 100), tmp_path, stream)
