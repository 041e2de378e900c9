"""Every pass of an online run is servable (``RUN/passes/NNNN/serving.pt``): the pass-k serving copy scores
pass k+1's raw rows exactly as the runner's progressive evaluation did (scores and AUC, also with
``dense_every`` > 1: the pass's full model is what is served); ids without a slot read the default row; a
real ``dynarec serve --model RUN`` on 127.0.0.1 answers like ``Predictor.predict`` and moves to the next pass
when ``dynarec online --resume`` writes it, without a restart and without failing a request; client mistakes
get a 4xx with a one-line error; a corrupt, missing or foreign pass is a one-line error with exit code 2."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.cli import main
from dynarec.data.schema import Schema
from dynarec.online.config import load_online_config
from dynarec.online.marker import pass_dir, write_current
from dynarec.online.runner import run_online
from dynarec.online.serving import SERVING
from dynarec.serve.sources import pass_folder, read_serving
from dynarec.serve.predictor import Predictor
from dynarec.train.checkpoint import read_checkpoint

from tests.online.conftest import SMALL

ROOT = Path(__file__).resolve().parents[2]
SETS = SMALL + ["online.max_rows=150", "online.expiry_passes=1", "online.dense_every=2"]
TASKS = ("click", "conversion")


def _run(passes: Path, out: Path, sets=SETS, resume=False) -> tuple[list[dict], dict]:
    """``dynarec online`` in process -> (its rows, {pass: the progressive evaluation's scores {task: [N]}})."""
    evals = {}

    def on_eval(k, preds, table, raw):
        evals[k] = {t: np.asarray(v, dtype=np.float64).copy() for t, v in preds.items()}

    cfg = load_online_config(None, list(sets), "pepnet")
    rows = list(run_online(Schema.load(passes / "schema.yaml"), passes, out, cfg, resume=resume, on_eval=on_eval))
    return rows, evals


@pytest.fixture(scope="module")
def live(stream, tmp_path_factory):
    """A run over the first 3 passes of the stream (the 4th arrives later, in the server test)."""
    d = tmp_path_factory.mktemp("serve_pass")
    passes = d / "passes"
    passes.mkdir()
    shutil.copy(stream / "schema.yaml", passes)
    for k in range(3):
        shutil.copy(stream / f"pass-{k:04d}.parquet", passes)
    rows, evals = _run(passes, d / "run")
    return {"dir": d, "passes": passes, "run": d / "run", "rows": rows, "evals": evals, "stream": stream}


@pytest.mark.parametrize("k", [0, 1])
def test_pass_k_scores_pass_k1_as_the_progressive_evaluation(live, k, tmp_path, capsys):
    run, stream = live["run"], live["stream"]
    p = Predictor.load(run / pass_dir(k))
    enc = p.encode_file(stream / f"pass-{k + 1:04d}.parquet")
    got = p.predict(enc)
    for t in TASKS:
        assert got[t].shape == live["evals"][k + 1][t].shape
        np.testing.assert_allclose(got[t], live["evals"][k + 1][t], rtol=0, atol=1e-6)
    # the same AUC through `dynarec evaluate --json` on the pass folder
    assert main(["evaluate", "--checkpoint", str(run / pass_dir(k)), "--data",
                 str(stream / f"pass-{k + 1:04d}.parquet"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for t in TASKS:
        assert abs(summary["metrics"]["auc"][t]["all"] - live["rows"][k + 1]["auc"][t]["all"]) < 1e-9
    # the served weights are the pass checkpoint's full model, dense part included (dense_every=2: pass 1's delta
    # carries no dense weights, its serving file still does)
    blob, _ = read_serving(run / pass_dir(k) / SERVING)
    full = read_checkpoint(run / pass_dir(k) / "model.pt")["state_dict"]
    assert blob["state_dict"].keys() == full.keys()
    assert all(torch.equal(blob["state_dict"][x], full[x]) for x in full)
    assert live["rows"][1]["dense_in_delta"] is False


def test_predict_on_the_run_folder_follows_current(live, tmp_path, capsys):
    run, stream = live["run"], live["stream"]
    assert (run / "current").read_text().strip() == pass_dir(2)
    out = tmp_path / "p.parquet"
    assert main(["predict", "--checkpoint", str(run), "--data", str(stream / "pass-0003.parquet"),
                 "--out", str(out)]) == 0
    got = pq.read_table(out).to_pydict()
    want = Predictor.load(run / pass_dir(2))
    ref = want.predict(want.encode_file(stream / "pass-0003.parquet", labels=False))
    other = Predictor.load(run / pass_dir(1))
    old = other.predict(other.encode_file(stream / "pass-0003.parquet", labels=False))
    for t in TASKS:
        np.testing.assert_allclose(got[t], ref[t], rtol=0, atol=1e-7)
        assert np.abs(np.asarray(got[t]) - old[t]).max() > 1e-4  # a different pass scores differently


def test_ids_without_a_slot_read_the_default_row(live):
    run, stream = live["run"], live["stream"]
    p = Predictor.load(run)  # pass 2
    blob, _ = read_serving(run / pass_dir(2) / SERVING)
    keys = {e["feature"]: set(e["keys"].tolist()) for e in blob["dynamic"]}
    seen = set(pq.read_table(stream / "pass-0000.parquet").column("user_id").to_pylist())
    gone = sorted(seen - keys["user_id"])  # seen in pass 0, expired / evicted by pass 2 (expiry_passes=1)
    assert gone, "no user id left the table"
    held = sorted(keys["user_id"])
    row = pq.read_table(stream / "pass-0003.parquet").slice(0, 1).to_pylist()[0]
    variants = {"unseen_a": 10 ** 12 + 1, "unseen_b": 10 ** 12 + 7, "evicted": gone[0], "held": held[0],
                "held2": held[-1]}
    rows = [dict(row, user_id=v) for v in variants.values()]
    pred, unknown = p.predict_rows(rows)
    assert unknown["user_id"] == 3  # the two unseen ids and the evicted one
    for t in TASKS:
        a, b, ev, h, h2 = pred[t]
        assert a == b == ev  # bitwise: the same default row
        assert abs(h - a) > 1e-6 and abs(h2 - a) > 1e-6  # ids with a slot read their own rows
    # the server's encoding (dictionary lookups on request values) gives the same slots as the table encoding
    from dynarec.serve.rows import rows_to_columns

    cols = rows_to_columns(rows, p.schema)
    fast, table = p.encode_columns(cols), p.encode_rows(rows, labels=False)
    assert torch.equal(fast.table.sparse, table.table.sparse)
    assert all(torch.equal(fast.table.sequences[n], table.table.sequences[n]) for n in table.table.sequences)
    assert fast.unknown == table.unknown
    assert fast.unknown_rows[:, [f.name for f in p.schema.fields].index("user_id")].tolist() == [1, 1, 1, 0, 0]


@pytest.mark.parametrize("table", ["hash", "static"])
def test_baseline_tables_serve_too(stream, tmp_path, table):
    passes = tmp_path / "passes"
    passes.mkdir()
    shutil.copy(stream / "schema.yaml", passes)
    for k in range(2):
        shutil.copy(stream / f"pass-{k:04d}.parquet", passes)
    _, evals = _run(passes, tmp_path / "run", SMALL + ["online.max_rows=100", f"online.table={table}"])
    p = Predictor.load(tmp_path / "run" / pass_dir(0))
    got = p.predict(p.encode_file(stream / "pass-0001.parquet"))
    for t in TASKS:
        np.testing.assert_allclose(got[t], evals[1][t], rtol=0, atol=1e-6)


def test_text_ids_are_hashed_as_in_training(stream, tmp_path):
    """String ids ('u17'): a request's value hashes to the id training hashed, on both encodings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from dynarec.serve.rows import rows_to_columns

    passes = tmp_path / "passes"
    passes.mkdir()
    shutil.copy(stream / "schema.yaml", passes)
    for k in range(2):
        t = pq.read_table(stream / f"pass-{k:04d}.parquet")
        i = t.schema.get_field_index("user_id")
        t = t.set_column(i, "user_id", pc.binary_join_element_wise("u", pc.cast(t.column("user_id"), pa.string()), ""))
        pq.write_table(t, passes / f"pass-{k:04d}.parquet")
    _, evals = _run(passes, tmp_path / "run", SMALL + ["online.max_rows=400"])
    p = Predictor.load(tmp_path / "run" / pass_dir(0))
    got = p.predict(p.encode_file(passes / "pass-0001.parquet"))
    for t in TASKS:
        np.testing.assert_allclose(got[t], evals[1][t], rtol=0, atol=1e-6)
    p = Predictor.load(tmp_path / "run")  # pass 1
    blob, _ = read_serving(tmp_path / "run" / pass_dir(1) / SERVING)
    assert {e["feature"]: e["ints"] for e in blob["dynamic"]} == {"user_id": False, "item_id": True, "author_id": True}
    rows = _requests(passes / "pass-0001.parquet", 200) + [dict(_requests(passes / "pass-0001.parquet", 1)[0],
                                                                user_id="never-seen")]
    fast, table = p.encode_columns(rows_to_columns(rows, p.schema)), p.encode_rows(rows, labels=False)
    assert torch.equal(fast.table.sparse, table.table.sparse) and fast.unknown == table.unknown
    assert 0 < fast.unknown["user_id"] < len(rows)  # some request ids hold slots, the unseen one does not


def test_bad_pass_is_a_one_line_error_exit_2(live, tmp_path, capsys):
    run, stream = tmp_path / "run", live["stream"]
    shutil.copytree(live["run"], run)
    data = str(stream / "pass-0003.parquet")
    f = run / pass_dir(2) / SERVING
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    nothing = tmp_path / "nothing"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    cases = [
        (["predict", "--checkpoint", str(run), "--data", data, "--out", str(tmp_path / "p.parquet")], str(f)),
        (["evaluate", "--checkpoint", str(run / pass_dir(2)), "--data", data], str(f)),
        (["serve", "--model", str(run), "--port", "1"], str(f)),
        (["predict", "--checkpoint", str(nothing), "--data", data, "--out", str(tmp_path / "p.parquet")], str(nothing)),
        (["serve", "--model", str(run / pass_dir(1)), "--backend", "onnx", "--port", "1"], "eager"),
        (["serve", "--model", str(run / pass_dir(1)), "--watch", str(run), "--port", "1"], "--watch"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert needle in err, (argv, err)
    (run / pass_dir(2) / SERVING).unlink()  # the pass `current` names lost its serving file
    assert main(["evaluate", "--checkpoint", str(run), "--data", data]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run / pass_dir(2) / SERVING) in err
    (run / "current").unlink()  # a run with no completed pass
    assert main(["evaluate", "--checkpoint", str(run), "--data", data]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run / "current") in err and "no completed pass" in err


# ---- a real server on 127.0.0.1 ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _requests(path: Path, n: int) -> list[dict]:
    rows = pq.read_table(path).slice(0, n).to_pylist()
    for r in rows:
        r["hist_categories"] = r["hist_categories"].split("|") if r["hist_categories"] else []
    return rows


def _expected(pred: Predictor, rows: list[dict]) -> dict:
    return pred.predict_rows(rows)[0]


def test_server_follows_current_to_the_next_pass(live, tmp_path):
    httpx = pytest.importorskip("httpx", reason="serving tests need the serve extra: pip install 'dynarec[serve]'")
    pytest.importorskip("httptools", reason="serving needs the serve extra: pip install 'dynarec[serve]'")
    run, passes, stream = tmp_path / "run", tmp_path / "passes", live["stream"]
    shutil.copytree(live["run"], run)
    shutil.copytree(live["passes"], passes)
    rows = _requests(stream / "pass-0003.parquet", 40)
    p2 = Predictor.load(run / pass_dir(2))
    want2 = _expected(p2, rows)

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    srv = subprocess.Popen([sys.executable, "-m", "dynarec", "serve", "--model", str(run), "--port", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert srv.poll() is None, srv.stderr.read()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(0.2)
        meta = httpx.get(url + "/metadata").json()
        assert meta["model_version"] == p2.version and meta["backend"] == "eager"
        assert meta["online"]["pass"] == 2
        r = httpx.post(url + "/predict", json={"rows": rows}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == p2.version
        for t in TASKS:
            assert np.abs(np.asarray(body["predictions"][t]) - want2[t]).max() < 1e-5

        # (d) client mistakes: a 4xx with a one-line JSON error, and the server keeps answering
        missing = [dict(rows[0])]
        missing[0].pop("user_id")
        cases = [
            (dict(content=b""), 400, "empty"),
            (dict(content=b"{\"rows\": [", headers={"content-type": "application/json"}), 400, "malformed"),
            (dict(json={"rows": missing}), 422, "user_id"),
            (dict(json={"rows": [dict(rows[0], user_id=[1, 2])]}), 422, "user_id"),
            (dict(json={"rows": [dict(rows[0], user_id=3.5)]}), 422, "user_id"),
            (dict(json={"rows": [dict(rows[0], item_price="cheap")]}), 422, "item_price"),
            (dict(json={"rowz": rows}), 422, "rows"),
        ]
        for kw, status, needle in cases:
            e = httpx.post(url + "/predict", timeout=10, **kw)
            assert e.status_code == status, (kw, e.text)
            msg = e.json()["error"]
            assert needle in msg and "\n" not in msg, msg

        # the next pass arrives: `dynarec online --resume` (a real process) writes pass 3 and moves `current`;
        # meanwhile a client keeps asking: every answer is 200 and comes whole from one pass
        shutil.copy(stream / "pass-0003.parquet", passes)
        answers, stop = [], threading.Event()

        def client():
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    a = c.post(url + "/predict", json={"rows": rows[:8]})
                    answers.append((a.status_code, a.json()))
                    time.sleep(0.01)

        th = threading.Thread(target=client)
        th.start()
        try:
            q = subprocess.run([sys.executable, "-m", "dynarec", "online", "--passes", str(passes), "--out", str(run),
                                "--resume", "--json"], capture_output=True, text=True, env=env, timeout=600)
            assert q.returncode == 0, q.stderr
            assert (run / "current").read_text().strip() == pass_dir(3)
            p3 = Predictor.load(run / pass_dir(3))
            deadline = time.time() + 60
            while httpx.get(url + "/healthz").json()["model_version"] != p3.version:
                assert time.time() < deadline, "the server did not pick up pass 3"
                time.sleep(0.1)
            time.sleep(0.2)  # a few answers from the new pass too
        finally:
            stop.set()
            th.join(60)
        r = httpx.post(url + "/predict", json={"rows": rows}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == p3.version
        want3 = _expected(p3, rows)
        for t in TASKS:
            got = np.asarray(r.json()["predictions"][t])
            assert np.abs(got - want3[t]).max() < 1e-5
            assert np.abs(got - want2[t]).max() > 1e-4  # the answers did change
        versions = {p2.version: _expected(p2, rows[:8]), p3.version: _expected(p3, rows[:8])}
        assert answers and all(s == 200 for s, _ in answers), [a for a in answers if a[0] != 200][:2]
        for _, a in answers:  # each answer is wholly one pass's, the pass it names
            ref = versions[a["model_version"]]
            for t in TASKS:
                assert np.abs(np.asarray(a["predictions"][t]) - ref[t]).max() < 1e-5
        assert {a["model_version"] for _, a in answers} == set(versions)  # answers from both sides of the swap
        metrics = httpx.get(url + "/metrics").text
        assert 'dynarec_reloads_total{result="ok"} 1.0' in metrics
        assert "dynarec_reload_seconds_count 1.0" in metrics
        swap = float(next(x for x in metrics.splitlines() if x.startswith("dynarec_reload_seconds_sum")).split()[-1])
        print(f"pass 2 -> 3 load + swap: {swap * 1e3:.0f} ms")

        # a pass that cannot be loaded (corrupt serving file) is skipped: the served pass stays, requests succeed
        bad = run / pass_dir(4)
        shutil.copytree(run / pass_dir(3), bad)
        b = bytearray((bad / SERVING).read_bytes())
        b[len(b) // 3] ^= 0xFF
        (bad / SERVING).write_bytes(bytes(b))
        write_current(run, 4)
        deadline = time.time() + 30
        while 'dynarec_reloads_total{result="failed"} 1.0' not in httpx.get(url + "/metrics").text:
            assert time.time() < deadline, "the server did not try the corrupt pass"
            time.sleep(0.1)
        r = httpx.post(url + "/predict", json={"rows": rows}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == p3.version
    finally:
        srv.terminate()
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()


def test_server_predict_and_evaluate_agree_on_a_bad_id(live, tmp_path):
    """One bad id ('abc') turns a pass's integer user_id column into text. ``predict`` and ``evaluate`` still key
    every other id as the integer the pass recorded (``ints``), as the server does, through the one encoder:
    the server's scores, ``dynarec predict``'s and ``evaluate``'s AUC agree (up to 0.179 apart before)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from dynarec.metrics import auc
    from dynarec.serve.rows import rows_to_columns
    from dynarec.serve.served import load_served

    run, stream = live["run"], live["stream"]
    t = pq.read_table(stream / "pass-0003.parquet").slice(0, 400)
    uid = pc.cast(t.column("user_id"), pa.string()).to_pylist()
    uid[5] = "abc"
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id", pa.array(uid))
    f = tmp_path / "bad.csv"
    pacsv.write_csv(t, f)
    assert main(["predict", "--checkpoint", str(run), "--data", str(f), "--out", str(tmp_path / "p.parquet")]) == 0
    predicted = pq.read_table(tmp_path / "p.parquet").to_pydict()
    served = load_served(run)
    rows = t.to_pylist()
    for r in rows:
        r["hist_categories"] = r["hist_categories"].split("|") if r["hist_categories"] else []
    outs, unknown_rows = served.predict_columns(rows_to_columns(rows, served.schema))
    held = [f.name for f in served.schema.fields].index("user_id")
    blob, _ = read_serving(pass_folder(run) / SERVING)
    keys = {e["feature"]: set(e["keys"].tolist()) for e in blob["dynamic"]}["user_id"]
    by_hand = [int(not v.isdigit() or int(v) not in keys) for v in uid]  # ids read as the integers recorded
    assert unknown_rows[:, held].tolist() == by_hand and by_hand[5] == 1 and 0 in by_hand
    summary = Predictor.load(run).evaluate(f)
    for k, task in enumerate(served.tasks):
        # the same eager float32 model on the same ids: equal to float32 rounding (a few ulp of p <= 1)
        np.testing.assert_allclose(predicted[task], outs[k], rtol=0, atol=1e-6)
        y = np.asarray(t.column(task).to_pylist(), dtype=np.float64)
        assert summary["metrics"]["auc"][task]["all"] == pytest.approx(auc(y, outs[k].astype(np.float64)), abs=1e-6)
