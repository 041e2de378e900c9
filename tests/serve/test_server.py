"""`dynarec serve` as a real subprocess on 127.0.0.1 with real HTTP requests: predictions equal `dynarec predict`
for the same rows, every kind of bad request gets its 4xx and the server keeps answering, and a hot reload under
concurrent load fails no request (each answer names the version that made it and matches that model)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dynarec.cli import main

httpx = pytest.importorskip("httpx", reason="serving tests need the serve extra: pip install 'dynarec[serve]'")
pytest.importorskip("httptools", reason="serving needs the serve extra: pip install 'dynarec[serve]'")
pytest.importorskip("onnxruntime", reason="the onnx backend needs the onnx extra: pip install 'dynarec[onnx]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    assert main(["data", "synthetic", "--rows", "3000", "--out", str(d / "data")]) == 0
    for name, seed in (("a", 0), ("b", 1)):
        assert main(["train", "--model", "pepnet", "--data", str(d / "data"), "--epochs", "1", "--seed", str(seed),
                     "--set", "trainer.progress=false", "--out", str(d / f"ck_{name}")]) == 0
        assert main(["export", "--checkpoint", str(d / f"ck_{name}"), "--out", str(d / f"bundle_{name}")]) == 0
    # raw rows: the synthetic generator's columns (what a client sends)
    from dynarec.data.synthetic import generate

    t, _ = generate(200, seed=7)
    pacsv.write_csv(t, d / "rows.csv")
    return d


class Server:
    def __init__(self, bundle, backend="onnx", watch=None, extra=()):
        self.port = _free_port()
        cmd = [sys.executable, "-m", "dynarec", "serve", "--model", str(bundle), "--port", str(self.port),
               "--backend", backend, *extra] + (["--watch", str(watch)] if watch else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read())
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _rows(env, n=50):
    t = pacsv.read_csv(env / "rows.csv").slice(0, n)
    rows = t.to_pylist()
    for r in rows:  # sequences travel as lists
        r["hist_categories"] = str(r["hist_categories"]).split("|") if r["hist_categories"] else []
    return rows


@pytest.mark.parametrize("backend", ["onnx", "torch", "eager"])
def test_predictions_equal_dynarec_predict(env, backend, tmp_path):
    assert main(["predict", "--checkpoint", str(env / "ck_a"), "--data", str(env / "rows.csv"),
                 "--out", str(tmp_path / "p.parquet")]) == 0
    ref = pq.read_table(tmp_path / "p.parquet").to_pydict()
    srv = Server(env / "bundle_a", backend)
    try:
        rows = _rows(env, 50)
        r = httpx.post(srv.url + "/predict", json={"rows": rows}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        for task in ("click", "conversion"):
            got = body["predictions"][task]
            want = ref[task][:50]
            assert len(got) == 50
            assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5
        meta = httpx.get(srv.url + "/metadata").json()
        assert [t["name"] for t in meta["tasks"]] == ["click", "conversion"] and meta["backend"] == backend
        assert body["model_version"] == meta["model_version"]
    finally:
        srv.close()


def test_bad_requests_get_4xx_and_server_stays_up(env):
    srv = Server(env / "bundle_a", "onnx", extra=["--max-rows", "100"])
    try:
        good = _rows(env, 2)
        missing = [dict(good[0])]
        missing[0].pop("item_id")
        wrong = [dict(good[0], item_price="cheap")]
        cases = [
            (dict(content=b""), 400, "empty"),
            (dict(content=b"{\"rows\": [", headers={"content-type": "application/json"}), 400, "malformed"),
            (dict(json={"rows": missing}), 422, "item_id"),
            (dict(json={"rows": wrong}), 422, "item_price"),
            (dict(json={"rows": [good[0], dict(good[1], item_price=1e308)]}), 422, "item_price"),  # inf in float32
            (dict(json={"rows": "x"}), 422, "rows"),
            (dict(json={"rows": []}), 422, "rows"),
            (dict(json={"rowz": good}), 422, "rows"),
            (dict(json={"rows": [1, 2]}), 422, "rows[0]"),
            (dict(json={"rows": good * 60}), 413, "100"),
            (dict(content=b"x" * (9 << 20)), 413, "bytes"),
        ]
        for kw, status, word in cases:
            r = httpx.post(srv.url + "/predict", timeout=30, **kw)
            assert r.status_code == status, (kw.get("json", kw.get("content", b""))[:40], r.status_code, r.text)
            err = r.json()["error"]
            assert word in err and "\n" not in err
            assert httpx.post(srv.url + "/predict", json={"rows": good}, timeout=30).status_code == 200
        r = httpx.post(srv.url + "/retrieve", json={"users": ["u1"]}, timeout=30)  # no --retriever given
        assert r.status_code == 404 and "--retriever" in r.json()["error"]
        m = httpx.get(srv.url + "/metrics").text
        assert 'dynarec_requests_total{endpoint="/predict",status="422"}' in m
        assert "dynarec_request_latency_seconds_bucket" in m and "dynarec_batch_rows_bucket" in m
    finally:
        srv.close()


def test_hot_reload_under_load_fails_no_request(env, tmp_path):
    watch = tmp_path / "watch"
    watch.mkdir()
    shutil.copytree(env / "bundle_a", watch / "a")
    (watch / "current").write_text("a")
    versions = {json.loads((env / f"bundle_{n}" / "manifest.json").read_text())["model_version"]: n for n in "ab"}
    rows = _rows(env, 4)
    expected = {}
    for n in "ab":  # each bundle's own answer, from a server that serves only it
        s = Server(env / f"bundle_{n}", "onnx")
        try:
            expected[n] = httpx.post(s.url + "/predict", json={"rows": rows}, timeout=30).json()["predictions"]
        finally:
            s.close()
    srv = Server(watch / "a", "onnx", watch=watch)
    failures, seen, stop = [], [], threading.Event()

    def client():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post(srv.url + "/predict", json={"rows": rows})
                    if r.status_code != 200:
                        failures.append(r.status_code)
                        continue
                    b = r.json()
                    name = versions[b["model_version"]]
                    seen.append(name)
                    for t, v in b["predictions"].items():
                        if max(abs(x - y) for x, y in zip(v, expected[name][t])) > 1e-5:
                            failures.append(f"mixed answer from {name}")
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        tmp = watch / ".b.tmp"
        shutil.copytree(env / "bundle_b", tmp)
        os.replace(tmp, watch / "b")
        (watch / ".current.tmp").write_text("b")
        os.replace(watch / ".current.tmp", watch / "current")
        deadline = time.time() + 30
        while time.time() < deadline and (not seen or seen[-1] != "b"):
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        srv.close()
    assert not failures, failures[:5]
    assert seen[0] == "a" and set(seen[-20:]) == {"b"}  # served a, switched to b, no failed request


def _raw(port: int, data: bytes, want: int) -> list[bytes]:
    """Send raw bytes on one connection; -> the first ``want`` responses' status lines and bodies."""
    out, buf = [], b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        while len(out) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                if head.startswith(b"HTTP/1.1 100"):
                    buf = rest
                    continue
                n = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                             if line.lower().startswith(b"content-length")))
                if len(rest) < n:
                    break
                out.append((head.split(b"\r\n")[0], rest[:n]))
                buf = rest[n:]
    return out


def test_http_pipelining_chunked_expect_and_bad_http(env):
    """The lean HTTP server: pipelined requests are answered in order, chunked bodies and Expect: 100-continue
    work, unknown routes / methods get 404 / 405, malformed HTTP a 400, and the server keeps answering."""
    srv = Server(env / "bundle_a", "onnx")
    try:
        rows = _rows(env, 3)
        bodies = [json.dumps({"rows": rows[:k]}).encode() for k in (1, 3, 2)]
        req = b"".join(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                       b"content-length: %d\r\n\r\n%s" % (len(b), b) for b in bodies)
        got = _raw(srv.port, req + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 4)
        assert [s for s, _ in got] == [b"HTTP/1.1 200 OK"] * 4
        assert [len(json.loads(b)["predictions"]["click"]) for _, b in got[:3]] == [1, 3, 2]  # in request order
        assert json.loads(got[3][1])["status"] == "ok"
        want = httpx.post(srv.url + "/predict", json={"rows": rows[:3]}).json()
        assert json.loads(got[1][1]) == want
        b = bodies[1]
        chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, b[:10], len(b) - 10, b[10:])
        got = _raw(srv.port, b"POST /predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + chunked, 1)
        assert got[0][0] == b"HTTP/1.1 200 OK" and json.loads(got[0][1]) == want
        got = _raw(srv.port, b"POST /predict HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                   b"content-length: %d\r\n\r\n%s" % (len(b), b), 1)
        assert json.loads(got[0][1]) == want
        assert httpx.get(srv.url + "/nope").status_code == 404
        r = httpx.get(srv.url + "/predict")
        assert r.status_code == 405 and "POST" in r.json()["error"]
        got = _raw(srv.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n", 1)
        assert got[0][0] == b"HTTP/1.1 200 OK"  # answered, no protocol switch
        got = _raw(srv.port, b"NOT HTTP AT ALL\r\n\r\n", 1)
        assert got[0][0].startswith(b"HTTP/1.1 400") and "malformed HTTP" in json.loads(got[0][1])["error"]
        assert httpx.post(srv.url + "/predict", json={"rows": rows}).status_code == 200
    finally:
        srv.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_processes_share_the_port_and_end_with_the_server(env):
    srv = Server(env / "bundle_a", "onnx", extra=["--workers", "2"])
    try:
        rows = _rows(env, 2)
        want = httpx.post(srv.url + "/predict", json={"rows": rows}).json()
        for _ in range(20):  # new connections: the kernel spreads them over both processes
            with httpx.Client() as c:
                assert c.post(srv.url + "/predict", json={"rows": rows}).json() == want
        kids = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == srv.proc.pid]
        assert len(kids) >= 1
    finally:
        srv.close()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.2)
    assert not any(_alive(k) for k in kids)


def _stat(pid: str) -> list[str]:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _ppid(pid: str) -> int:
    f = _stat(pid)
    return int(f[1]) if f else -1


def _alive(pid: str) -> bool:
    f = _stat(pid)
    return bool(f) and f[0] != "Z"
