"""Peak resident memory per rank of a TorchRec run's sharded resume point (``dynarec.train.sharded_resume``):
writing it at an epoch's end (every rank its own shards, dense weights, optimizer state and best-state copy
through torch.distributed.checkpoint), loading it back into 2 processes (2 -> 2, in place) and into one
(2 -> 1, resharded into the fused table), against the one-file ``model.pt`` written at the end of the same
resumed run (``trainer.checkpoint: file``: the table assembled on rank 0, serialised in memory — the old path).
dnn on synthetic data whose ``user_id`` table is widened to ``--rows`` rows, 2 gloo processes on CPU,
``trainer.sharding: column_wise``, 2 epochs (interrupted after the first one's resume point, then resumed).

Peaks are ``VmHWM`` reset just before each phase (:func:`table_memory.reset_peak`), reported above the RSS
before it.

    nice -n 10 python benchmarks/resume_memory.py [--rows 2000000] [--dim 32] [--json out.json]

Needs ``dynarec[torchrec]``."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table_memory import MB, ROOT, _status, reset_peak  # noqa: E402


def _measured(fn, seen: dict, key: str):
    def wrapped(*args, **kw):
        before = _status("VmRSS")
        reset_peak()
        out = fn(*args, **kw)
        seen[key] = {"before_mb": before, "peak_mb": _status("VmHWM")}
        return out
    return wrapped


def _setup(rows: int, dim: int):
    from dataclasses import replace

    import torch

    from dynarec.data.prepare import synthetic_tables

    torch.set_num_threads(1)
    schema, tables, _ = synthetic_tables(20_000, seed=0)
    schema.features = [replace(f, vocab_size=rows) if f.name == "user_id" else f for f in schema.features]
    cfg = {"epochs": 2, "batch_size": 1024, "patience": 2, "progress": False, "distributed": "torchrec",
           "sharding": "column_wise", "embedding_grad": "sparse", "embedding_optimizer": "adagrad",
           "checkpoint": "file"}
    return schema, tables, {"hidden": [64], "embed_dim": dim}, cfg


def worker(out: str, rows: int, dim: int, phase: str) -> None:
    """One rank: ``interrupt`` (epoch 1, its resume point measured, then stopped) or ``resume`` (the load
    and the end's model.pt measured)."""
    import torch.distributed as dist

    from dynarec.train import run, sharded_resume

    schema, tables, params, cfg = _setup(rows, dim)
    seen = {}
    if phase == "interrupt":
        save = sharded_resume.save_sharded_resume

        def once(*args, **kw):
            _measured(save, seen, "save_resume_point")(*args, **kw)
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, seen)
            if dist.get_rank() == 0:
                Path(out, "interrupt.json").write_text(json.dumps(ranks))
            raise KeyboardInterrupt
        sharded_resume.save_sharded_resume = once
        try:
            run.train_model("dnn", schema, tables, params, cfg, seed=0, out=Path(out) / "run")
        except KeyboardInterrupt:
            pass
        if dist.get_rank() == 0:
            import shutil

            shutil.copytree(Path(out) / ".run.partial" / sharded_resume.LAST_SHARDED, Path(out) / "kept")
    else:
        sharded_resume.load_sharded_resume = _measured(sharded_resume.load_sharded_resume, seen, "load_2_to_2")
        run._finish = _measured(run._finish, seen, "end_model_pt")
        run.train_model("dnn", schema, tables, params, cfg, seed=0, out=Path(out) / "run", resume=True)
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, seen)
        if dist.get_rank() == 0:
            Path(out, "resume.json").write_text(json.dumps(ranks))
    dist.destroy_process_group()


def one(folder: str, rows: int, dim: int) -> None:
    """One process: the peak of loading the resume point (2 -> 1) into a whole model."""
    from dynarec.models import build_model
    from dynarec.train.sharded_resume import load_into_one
    from dynarec.train.trainer import Trainer

    schema, _, params, cfg = _setup(rows, dim)
    model = build_model("dnn", schema, params)
    tr = Trainer(model, _cfg({**cfg, "distributed": "ddp"}), seed=0)
    seen = {}
    _measured(load_into_one, seen, "load_2_to_1")(folder, model, tr.step.optimizers)
    print(json.dumps(seen))


def _cfg(d):
    from dynarec.config import build_dataclass
    from dynarec.train.config import TrainerConfig

    return build_dataclass(TrainerConfig, d, "trainer")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the widened user_id table")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), int(a.worker[2]), a.worker[3])
        return 0
    if a.one:
        one(a.one, a.rows, a.dim)
        return 0
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    table_mb = a.rows * a.dim * 4 / MB
    print(f"dnn, user_id table {a.rows:,} x {a.dim} float32 = {table_mb:,.0f} MB, 2 processes (gloo, CPU), "
          "column_wise; peak above the RSS before the phase")
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for phase in ("interrupt", "resume"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(Path(__file__).resolve()), "--worker", d, str(a.rows), str(a.dim), phase]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            for i, rank in enumerate(json.loads(Path(d, f"{phase}.json").read_text())):
                for k, v in rank.items():
                    res.setdefault(k, {})[f"rank {i}"] = v
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", str(Path(d) / "kept"),
                            "--rows", str(a.rows), "--dim", str(a.dim)], env=env, capture_output=True, text=True,
                           cwd=ROOT)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        res["load_2_to_1"] = {"1 process": json.loads(r.stdout.strip().splitlines()[-1])["load_2_to_1"]}
        disk = sum(p.stat().st_size for p in (Path(d) / "kept").rglob("*") if p.is_file()) / MB
    for phase, ranks in res.items():
        for who, v in ranks.items():
            print(f"  {phase:<18} {who:<10} +{v['peak_mb'] - v['before_mb']:>7,.0f} MB "
                  f"(RSS before {v['before_mb']:,.0f} MB)")
    print(f"  resume point on disk: {disk:,.0f} MB")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": a.rows, "dim": a.dim, "table_mb": table_mb, "disk_mb": disk,
                                            "phases": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
