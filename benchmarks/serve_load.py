"""Load benchmark of `dynarec serve` on loopback (bounded in requests and time), eager vs torch.export vs ONNX
Runtime, side by side in one run; plus the backends' raw inference speed at batch 1024.

    python benchmarks/serve_load.py [--requests 10000] [--concurrency 32] [--rows 1,64] [--model pepnet]

For each backend and rows-per-request: requests/s, rows/s, p50 / p95 / p99 latency (ms), errors, the server's
CPU time per request (steadier than latency on a shared machine), rows per inference call, the machine's load
average. ``--bundle DIR`` serves a bundle instead of training one; ``--serve-args`` passes options to the
server (``--workers 2``, ``--max-wait-ms 1``). The server
runs as a subprocess on 127.0.0.1 (a free port); the client is an asyncio httpx pool of ``concurrency``
connections in this process, or ``wrk`` (C, preferred when installed: the Python client saturates before the
server does). Every run stops after ``--requests`` requests or ``--max-seconds``."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, backend: str, threads: int, extra=()):
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "dynarec", "serve", "--model", str(bundle), "--port", str(port),
           "--backend", backend, "--threads", str(threads), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies, n, limit, errors = {}, 0, %d, 0
for line in io.lines("%s") do bodies[#bodies + 1] = line end
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n %% #bodies) + 1])
end
response = function(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
  if n >= limit then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %%d, "mean": %%f, "p50": %%f, "p95": %%f, "p99": %%f, "errors": %%d}\\n',
    summary.requests, latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
    latency:percentile(99) / 1e3, e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (``--workers``) so far (Linux /proc; 0
    elsewhere): the server's cost per request, which a busy machine stretches less than the latency."""
    import os

    def stat(p):
        try:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    total = 0.0
    for d in Path("/proc").iterdir():
        f = stat(d.name) if d.name.isdigit() else None
        if f and (int(d.name) == pid or int(f[1]) == pid):
            total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total


def mean_batch_rows(url: str) -> float:
    """Mean rows per inference call so far, from the server's /metrics (warm-up included)."""
    import httpx

    m = dict(line.rsplit(" ", 1) for line in httpx.get(url + "/metrics", timeout=10).text.splitlines()
             if line.startswith("dynarec_batch_rows_") and " " in line)
    return float(m.get("dynarec_batch_rows_sum", 0)) / max(float(m.get("dynarec_batch_rows_count", 1)), 1)


def load_wrk(url: str, bodies: list[bytes], n: int, concurrency: int, max_seconds: float, tmp: Path) -> dict:
    """The same load from ``wrk`` (a C client: the Python client, not the server, limits the rate otherwise):
    one thread, ``concurrency`` connections, stopped after ``n`` requests or ``max_seconds``."""
    (tmp / "bodies.jsonl").write_bytes(b"\n".join(bodies) + b"\n")
    (tmp / "load.lua").write_text(WRK_LUA % (n, tmp / "bodies.jsonl"))
    seconds = max(2, min(int(max_seconds), int(n / 500) + 2))  # time bound: ~n requests at >= 500 req/s
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(tmp / "load.lua"),
                          url + "/predict"], capture_output=True, text=True, timeout=max_seconds + 30).stdout
    r = json.loads(next(line for line in out.splitlines() if line.startswith("WRK "))[4:])
    # closed loop: each connection has one request in flight, so rate = connections / mean latency (Little's
    # law; wrk keeps its clock running after the request cap stops the thread)
    r["rps"] = concurrency / (r["mean"] / 1000)
    r["seconds"] = r["requests"] / r["rps"]
    return r


async def load(url: str, bodies: list[bytes], n: int, concurrency: int, max_seconds: float) -> dict:
    import httpx

    lat, errors, sent = [], 0, 0
    t_end = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker(k: int):
            nonlocal errors, sent
            while sent < n and time.perf_counter() < t_end:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/predict", content=body, headers={"content-type": "application/json"})
                    if r.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"requests": len(lat), "errors": errors, "seconds": wall, "rps": len(lat) / wall,
            "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99))}


def backend_speed(bundle: Path, backends: list[str], batch: int = 1024, reps: int = 30,
                  threads: int | None = None) -> tuple[dict, dict]:
    """-> ({backend: rows/s}, {backend: rows per CPU-second}) on one batch of ``batch`` rows, in process,
    interleaved repetitions (machine noise hits every backend alike), medians; ``threads`` torch / ORT threads
    (None: torch's default). CPU time is the steadier measure on a shared machine (1 thread: no spinning)."""
    import torch

    from dynarec.serve.backends import load_backend
    from dynarec.serve.loader import read_bundle
    from dynarec.serve.entry import batch_inputs, example_batch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    _, model, _ = read_bundle(bundle)
    args = batch_inputs(model.schema, example_batch(model.schema, batch))
    runs = {b: load_backend(bundle, b, model=model) for b in backends}
    for b, run in runs.items():
        for _ in range(3):
            run(args)
    wall, cpu = {b: [] for b in backends}, {b: [] for b in backends}
    for _ in range(reps):
        for b, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run(args)
            wall[b].append(time.perf_counter() - t0)
            cpu[b].append(time.process_time() - c0)
    torch.set_num_threads(before)
    return ({b: batch / float(np.median(wall[b])) for b in backends},
            {b: batch / float(np.median(cpu[b])) for b in backends})


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rows", default="1,64")
    ap.add_argument("--model", default="pepnet")
    ap.add_argument("--backends", default="eager,torch,onnx")
    ap.add_argument("--threads", type=int, default=1, help="torch / ORT threads in the server (the client takes a core)")
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--bundle", type=Path, help="serve this bundle instead of training + exporting one")
    ap.add_argument("--serve-args", default="", help="extra `dynarec serve` arguments, e.g. '--max-wait-ms 1'")
    ap.add_argument("--no-speed", action="store_true", help="skip the batch-1024 backend speed")
    ap.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx",
                    help="load generator (default: wrk when installed: apt-get install wrk)")
    a = ap.parse_args()
    from dynarec.cli import main as cli

    backends = a.backends.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = a.bundle or tmp / "bundle"
        if a.bundle is None:
            assert cli(["data", "synthetic", "--rows", "20000", "--out", str(tmp / "data")]) == 0
            assert cli(["train", "--model", a.model, "--data", str(tmp / "data"), "--epochs", "1",
                        "--set", "trainer.progress=false", "--out", str(tmp / "ck")]) == 0
            assert cli(["export", "--checkpoint", str(tmp / "ck"), "--out", str(bundle)]) == 0
        from dynarec.data.synthetic import generate

        t, _ = generate(2048, seed=5)
        rows = t.to_pylist()
        for r in rows:
            r["hist_categories"] = str(r["hist_categories"]).split("|") if r["hist_categories"] else []
        results = []
        for k in [int(x) for x in a.rows.split(",")]:
            bodies = [json.dumps({"rows": rows[i:i + k]}).encode() for i in range(0, len(rows) - k + 1, max(k, 1))][:256]
            for be in backends:
                proc, url = start_server(bundle, be, a.threads, a.serve_args.split())
                try:
                    asyncio.run(load(url, bodies[:8], 200, a.concurrency, 30))  # warm-up
                    cpu0, load1 = cpu_seconds(proc.pid), os.getloadavg()[0]
                    if a.client == "wrk":
                        r = load_wrk(url, bodies, a.requests, a.concurrency, a.max_seconds, tmp)
                    else:
                        r = asyncio.run(load(url, bodies, a.requests, a.concurrency, a.max_seconds))
                    cpu = cpu_seconds(proc.pid) - cpu0
                    batch = mean_batch_rows(url)
                finally:
                    proc.terminate()
                    proc.wait(10)
                r.update(backend=be, rows_per_request=k, rows_per_s=r["rps"] * k,
                         server_cpu_ms_per_request=1000 * cpu / max(r["requests"], 1), mean_batch_rows=batch,
                         machine_load_1min=load1)
                results.append(r)
                print(f"{be:6s} rows/request {k:3d}: {r['requests']:6d} requests in {r['seconds']:5.1f} s  "
                      f"{r['rps']:7.0f} req/s {r['rows_per_s']:8.0f} rows/s  p50 {r['p50']:5.1f}  p95 {r['p95']:5.1f}  "
                      f"p99 {r['p99']:5.1f} ms  errors {r['errors']}  "
                      f"server CPU {r['server_cpu_ms_per_request']:.3f} ms/request  "
                      f"{batch:.1f} rows/batch",
                      flush=True)
        speed = {} if a.no_speed else backend_speed(bundle, backends)[0]
        cpu1 = {} if a.no_speed else backend_speed(bundle, backends, threads=1)[1]

    def show(title, d, unit):
        base = d.get("eager")
        print(title + "  ".join(f"{b} {v:,.0f}" + (f" ({v / base:.2f}x eager)" if base else "") for b, v in d.items())
              + unit)

    show(f"inference at batch 1024, {torch_threads()} threads, wall: ", speed, " rows/s")
    show("inference at batch 1024, 1 thread, CPU time: ", cpu1, " rows per CPU-second")
    if a.json:
        a.json.write_text(json.dumps({"load": results, "batch1024_rows_per_s": speed,
                                      "batch1024_1thread_rows_per_cpu_s": cpu1, "args": vars(a)}, default=str,
                                     indent=1))


if __name__ == "__main__":
    main()
