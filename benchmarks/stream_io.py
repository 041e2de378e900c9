"""Peak RSS of the streamed verbs against the size of their input (docs/out_of_core.md, "Evaluate, predict and
online passes"): `dynarec predict` on a raw CSV read in chunks vs read whole, and one online pass read in chunks
(online.chunk_mb) vs whole, each at two sizes, each measured in its own process (VmHWM: the process's peak,
Python + torch + pyarrow included).

    nice -n 10 python benchmarks/stream_io.py --predict-rows 200000 2000000 --online-rows 100000 1000000 \
        --out benchmarks/results/stream_io.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    """This process's peak RSS: VmHWM (its own memory map's high-water mark). Not ru_maxrss, which Linux carries
    over exec from the forking parent (a child of a 1 GB parent reports >= 1 GB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_predict(a) -> dict:
    from dynarec.serve.predict_file import write_predictions

    t0 = time.perf_counter()
    res = write_predictions(a.ck, a.data, a.dest, chunk_bytes=a.chunk_bytes)
    return {"rows": res["rows"], "seconds": time.perf_counter() - t0}


def child_online(a) -> dict:
    from dynarec.data.schema import Schema
    from dynarec.online.config import load_online_config
    from dynarec.online.runner import run_online

    sets = ["model.embed_dim=8", "model.tower_hidden=[16]", "model.gate_emb_dim=8", "trainer.batch_size=1024",
            "trainer.threads=1", "online.max_rows=50000", f"online.chunk_mb={a.chunk_mb}"]
    if a.chunk_mb and a.online_eval_mb:
        sets.append(f"online.eval_budget_mb={a.online_eval_mb}")
    cfg = load_online_config(None, sets, "pepnet")
    t0 = time.perf_counter()
    rows = list(run_online(Schema.load(Path(a.data) / "schema.yaml"), a.data, a.dest, cfg))
    return {"rows": rows[-1]["rows"], "seconds": time.perf_counter() - t0, "auc": rows[-1]["auc"]["click"]["all"],
            "auc_bound": rows[-1].get("auc_error_bound", {}).get("click", {}).get("all", 0.0)}


def child_evaluate(a) -> dict:
    from dynarec.experiment import evaluate_checkpoint

    t0 = time.perf_counter()
    m = evaluate_checkpoint(a.ck, a.data, "test", memory_budget_mb=a.chunk_mb)
    return {"rows": m["rows"], "seconds": time.perf_counter() - t0, "auc": m["metrics"]["auc"]["click"]["all"],
            "gauc": m["metrics"]["gauc"]["click"]["all"], "method": m.get("evaluation", {}).get("method", "memory"),
            "bound": m["metrics"].get("auc_error_bound", {}).get("click", {}).get("all", 0.0)}


def _child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--predict-rows", type=int, nargs="*", default=[200_000, 2_000_000])
    p.add_argument("--online-rows", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--out", default="benchmarks/results/stream_io.json")
    p.add_argument("--eval-rows", type=int, nargs="*", default=[])
    p.add_argument("--modes", nargs="*", default=["chunked", "whole"], help="read modes of predict / online")
    p.add_argument("--child", choices=["predict", "online", "evaluate"])
    p.add_argument("--ck"), p.add_argument("--data"), p.add_argument("--dest")
    p.add_argument("--chunk-bytes", type=int, default=4 << 20)
    p.add_argument("--chunk-mb", type=float, default=0.0)
    p.add_argument("--online-eval-mb", type=float, default=0.0, help="online.eval_budget_mb of chunked passes")
    p.add_argument("--online-chunk-mb", type=float, default=16.0, help="online.chunk_mb of chunked passes")
    a = p.parse_args()
    if a.child:
        r = {"predict": child_predict, "online": child_online, "evaluate": child_evaluate}[a.child](a)
        print(json.dumps({**r, "peak_rss_mb": _peak_mb()}))
        return
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from dynarec.cli import main as cli
    from dynarec.data.stream import generate_stream
    from dynarec.data.synthetic import generate

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        assert cli(["data", "synthetic", "--rows", "20000", "--out", str(d / "data")]) == 0
        assert cli(["train", "--model", "dnn", "--data", str(d / "data"), "--epochs", "1",
                    "--set", "trainer.progress=false", "--out", str(d / "ck")]) == 0
        for n in a.eval_rows:  # a prepared folder of n rows (test: 10 %), evaluated by the three paths
            assert cli(["data", "synthetic", "--rows", str(n), "--out", str(d / f"ev{n}")]) == 0
            assert cli(["train", "--model", "dnn", "--data", str(d / f"ev{n}"), "--epochs", "1", "--set",
                        "trainer.progress=false", "--out", str(d / f"ck{n}")]) == 0
            from dynarec.data.loader import open_split, table_bytes_per_row
            from dynarec.evalstream import exact_row_bytes

            st = open_split(d / f"ev{n}", "test")  # budgets for the three paths of dynarec/evalstream.py
            eb, tb = len(st) * exact_row_bytes(st.schema) / 2**20, len(st) * table_bytes_per_row(st.schema) / 2**20
            for budget in (4096.0, round(eb + tb / 2, 2), round(eb / 2, 2)):
                r = _child(["evaluate", "--ck", str(d / f"ck{n}"), "--data", str(d / f"ev{n}"), "--chunk-mb", str(budget)])
                results.append({"verb": "evaluate", "budget_mb": budget, **r})
                print(json.dumps(results[-1]), flush=True)
        for n in a.predict_rows:
            t, _ = generate(n, seed=1)
            pacsv.write_csv(t.drop_columns(["click", "conversion"]), d / "rows.csv")
            mb = (d / "rows.csv").stat().st_size / 2**20
            for mode, cb in (("chunked", a.chunk_bytes), ("whole", 1 << 30)):
                if mode not in a.modes:
                    continue
                r = _child(["predict", "--ck", str(d / "ck"), "--data", str(d / "rows.csv"),
                            "--dest", str(d / f"p-{mode}.parquet"), "--chunk-bytes", str(cb)])
                results.append({"verb": "predict", "mode": mode, "csv_mb": round(mb, 1), **r})
                print(json.dumps(results[-1]), flush=True)
        for n in a.online_rows:
            s = d / f"stream{n}"
            s.mkdir()
            gen = generate_stream(2, n, seed=3)
            small, _ = next(gen)  # pass 0: 20k rows (the encoders are fitted on it, read whole)
            pq.write_table(small.slice(0, 20_000), s / "pass-0000.parquet")
            big, _ = next(gen)
            pq.write_table(big, s / "pass-0001.parquet", row_group_size=65536)
            from dynarec.data.stream import write_stream

            write_stream(d / "schema-src", 1, 10, seed=3)
            (s / "schema.yaml").write_text((d / "schema-src" / "schema.yaml").read_text())
            for mode, cm in (("chunked", a.online_chunk_mb), ("whole", 0.0)):
                if mode not in a.modes:
                    continue
                r = _child(["online", "--data", str(s), "--dest", str(d / f"run-{n}-{mode}"), "--chunk-mb", str(cm),
                            "--online-eval-mb", str(a.online_eval_mb)])
                results.append({"verb": "online pass", "mode": mode, "chunk_mb": cm, "eval_budget_mb": a.online_eval_mb,
                                **r})
                print(json.dumps(results[-1]), flush=True)
    Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
