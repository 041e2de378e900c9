"""A server following an online run: applying a pass's ``delta.pt`` in place against loading the whole pass
(time, and the server process's peak resident memory during the swap), at ``--max-rows`` slots.

A run of ``--passes`` passes of ``--rows`` rows (the synthetic stream, PEPNet defaults, ``online.max_rows``
= ``--max-rows``) is trained first (or ``--run`` names one). Then, in a FRESH process per measurement and
``--repeat`` times each, the server's state is pass 0 of the run (:func:`dynarec.serve.served.load_served`)
and the marker moves to pass 1:

* ``reload``: the pass loaded beside the served one (``load_served``, the old one still referenced, as the
  server does until the swap), then swapped;
* ``delta``: :func:`dynarec.serve.delta_apply.prepare` (the loader thread's part: read and check the delta,
  the new lookups) then :func:`~dynarec.serve.delta_apply.apply` (the part between two batches).

Peak memory is ``VmHWM`` after resetting it (``/proc/self/clear_refs``, Linux) right before the swap, minus
the ``VmRSS`` of the served state before it.

    .venv/bin/python benchmarks/online_delta_serve.py [--max-rows 1000000] [--rows 20000] [--repeat 3]
        [--run DIR] [--json benchmarks/results/online_delta_serve.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def train(run: Path, max_rows: int, rows: int, passes: int) -> None:
    from dynarec.data.schema import Schema
    from dynarec.data.stream import write_stream
    from dynarec.online.config import load_online_config
    from dynarec.online.runner import run_online

    data = run.parent / "stream"
    write_stream(data, passes, rows, seed=3)
    cfg = load_online_config(None, [f"online.max_rows={max_rows}", "trainer.threads=1"], "pepnet")
    for r in run_online(Schema.load(data / "schema.yaml"), data, run, cfg):
        print(f"  pass {r['pass']}: {r['delta_rows']} changed rows, {r['table_rows']} slots", file=sys.stderr)


def measure(run: Path, mode: str) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from dynarec.online.marker import write_current
    from dynarec.serve.delta_apply import apply, prepare
    from dynarec.serve.served import load_served

    torch.set_num_threads(1)
    write_current(run, 0)
    served = load_served(run)
    write_current(run, 1)
    base = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    if mode == "reload":
        new = load_served(run)
        t1 = t2 = time.perf_counter()
    else:
        prep = prepare(served, run, "passes/0001")
        assert not isinstance(prep, str), prep
        t1 = time.perf_counter()
        new = apply(served, prep)
        t2 = time.perf_counter()
    peak = status("VmHWM")
    served = new  # the swap
    return {"mode": mode, "seconds": t2 - t0, "loader_s": t1 - t0, "between_batches_s": t2 - t1,
            "rss_before_mb": base, "peak_extra_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-rows", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--run", type=Path, default=None, help="an existing online run (at least 2 passes)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_measure", choices=["reload", "delta"], default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._measure:
        print(json.dumps(measure(a.run, a._measure)))
        return
    tmp = None
    if a.run is None:
        tmp = tempfile.TemporaryDirectory(prefix="delta_serve_")
        a.run = Path(tmp.name) / "run"
        t0 = time.perf_counter()
        train(a.run, a.max_rows, a.rows, 2)
        print(f"trained 2 passes in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    sizes = {f: (a.run / "passes/0001" / f).stat().st_size / 1e6 for f in ("model.pt", "serving.pt", "delta.pt")}
    out = []
    for _ in range(a.repeat):
        for mode in ("reload", "delta"):  # alternated: a noisy neighbour slows both alike
            p = subprocess.run([sys.executable, __file__, "--run", str(a.run), "--_measure", mode],
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if p.returncode:
                raise SystemExit(p.stderr)
            out.append(json.loads(p.stdout.strip().splitlines()[-1]))
            r = out[-1]
            print(f"{mode:6s} {r['seconds']:.3f} s (loader {r['loader_s']:.3f}, between batches "
                  f"{r['between_batches_s']:.4f}), served {r['rss_before_mb']:.0f} MB, peak +{r['peak_extra_mb']:.0f} MB")
    res = {"max_rows": a.max_rows, "rows_per_pass": a.rows, "files_mb": sizes, "cpu": _cpu(), "runs": out}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    if tmp is not None:
        tmp.cleanup()


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    return "unknown"


if __name__ == "__main__":
    main()
