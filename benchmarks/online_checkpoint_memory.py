"""Peak resident memory while an online pass checkpoint is written: the sealed in-memory format the runner
wrote before (``dynarec-checkpoint-2``: ``torch.save`` into a ``BytesIO``, copied into a tensor, saved again)
against writing from the tensors' storage (``dynarec-checkpoint-3``, :mod:`dynarec.train.streamed_checkpoint`).

A one-pass online run (PEPNet defaults, ``online.max_rows`` = ``--max-rows``: the tables, their Adagrad
state and the index's slot arrays) is trained first. Then, in a FRESH process per measurement, its state is
restored (:func:`dynarec.online.state.restore_state`) and written the old way or the new way; the peak is
``VmHWM`` after resetting it (``/proc/self/clear_refs``, Linux) just before the write, minus ``VmRSS`` then.

    .venv/bin/python benchmarks/online_checkpoint_memory.py [--max-rows 1000000] [--repeat 2]
        [--json benchmarks/results/online_checkpoint_memory.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from online_delta_serve import _cpu, status  # noqa: E402


def measure(run: Path, mode: str, max_rows: int) -> dict:
    import torch

    from dynarec.online.config import load_online_config
    from dynarec.online.marker import pass_dir
    from dynarec.online.state import restore_state
    from dynarec.train.checkpoint import read_checkpoint, save_checkpoint
    from dynarec.train.streamed_checkpoint import checkpoint_dict, save_streamed

    torch.set_num_threads(1)
    cfg = load_online_config(None, [f"online.max_rows={max_rows}", "trainer.threads=1"], "pepnet")
    f = run / pass_dir(0) / "model.pt"
    st = restore_state(cfg, read_checkpoint(f), str(f))
    out = run.parent / f"out-{mode}"
    out.mkdir(exist_ok=True)
    extra = {"online": st.extra(), "pass": 0}
    base = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    if mode == "old":
        save_checkpoint(out, st.model, dict(cfg.params), None, extra)
    else:
        save_streamed(out / "model.pt", checkpoint_dict(st.model, dict(cfg.params), None, extra))
    secs = time.perf_counter() - t0
    peak = status("VmHWM")
    return {"mode": mode, "seconds": secs, "file_mb": (out / "model.pt").stat().st_size / 1e6,
            "rss_before_mb": base, "peak_extra_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-rows", type=int, default=1_000_000)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_measure", choices=["old", "new"], default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._measure:
        print(json.dumps(measure(a.run, a._measure, a.max_rows)))
        return
    from online_delta_serve import train

    with tempfile.TemporaryDirectory(prefix="ckpt_mem_") as tmp:
        run = Path(tmp) / "run"
        train(run, a.max_rows, a.rows, 1)
        out = []
        for _ in range(a.repeat):
            for mode in ("old", "new"):
                p = subprocess.run([sys.executable, __file__, "--run", str(run), "--_measure", mode, "--max-rows",
                                    str(a.max_rows)], capture_output=True, text=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
                if p.returncode:
                    raise SystemExit(p.stderr)
                out.append(json.loads(p.stdout.strip().splitlines()[-1]))
                r = out[-1]
                print(f"{mode}: {r['file_mb']:.0f} MB file in {r['seconds']:.2f} s, state {r['rss_before_mb']:.0f} MB, "
                      f"peak +{r['peak_extra_mb']:.0f} MB")
    res = {"max_rows": a.max_rows, "cpu": _cpu(), "runs": out}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
