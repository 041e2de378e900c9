"""The verbs of the `dynarec` command line: each parses nothing, calls ONE library function with the
arguments `dynarec.cli` parsed, and prints its result."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dynarec.errors import DynarecError

def _console():
    from rich.console import Console

    return Console(stderr=True)


# ---- commands -------------------------------------------------------------------------------------
def cmd_models(a) -> int:
    from dynarec.models import list_models

    if getattr(a, "guide", False):
        from dynarec.guide import guide_table, load_guide
        from dynarec.report import table_console

        table_console().print(guide_table(load_guide()))
        return 0

    infos = list_models(kind=None)  # ranking and retrieval models
    if a.json:
        # "needs": every group the model reads by default (unchanged key); "requires" / "optional" split it
        print(json.dumps([{"name": i.name, "paper": i.paper, "needs": list(i.needs), "requires": list(i.requires),
                           "optional": list(i.optional), "multi_task": i.multi_task,
                           "multi_domain": i.multi_domain, "kind": i.kind} for i in infos]))
        return 0
    from dynarec.report import models_table, table_console

    table_console().print(models_table(infos))
    return 0


def _fractions(text: str | None):
    from dynarec.data.split import parse_fractions

    return parse_fractions(text) if text else (0.8, 0.1, 0.1)


def _finite_float(text: str) -> float:
    import math

    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def cmd_data_synthetic(a) -> int:
    from dynarec.data.prepare import write_synthetic

    if a.stream:
        from dynarec.data.stream import ID_SHARE, write_stream

        if a.passes < 1:
            raise DynarecError(f"--passes: need at least 1 pass, got {a.passes}")
        if a.rows_per_pass < 100:
            raise DynarecError(f"--rows-per-pass: need at least 100 rows, got {a.rows_per_pass}")
        share = ID_SHARE if a.id_share is None else a.id_share
        if not 0 <= share < 1:
            raise DynarecError(f"--id-share: need a number in [0, 1), got {a.id_share}")
        write_stream(a.out, a.passes, a.rows_per_pass, a.seed, id_share=share)
        print(f"wrote {a.passes} passes of {a.rows_per_pass:,} rows to {Path(a.out)} (pass-NNNN.parquet + "
              f"schema.yaml with dynamic ids; true probabilities in truth-NNNN.npz; id share {share:g} of the "
              f"click logit's variance, measured per pass in stream.yaml)")
        return 0
    if a.id_share is not None:
        raise DynarecError("--id-share: only with --stream")
    if a.rows < 100:
        raise DynarecError(f"--rows: need at least 100 rows, got {a.rows}")
    write_synthetic(a.out, a.rows, a.seed, a.split, _fractions(a.fractions))
    print(f"wrote {a.rows:,} synthetic rows to {Path(a.out)} (train/valid/test parquet + schema.json + encoders.json; "
          f"true probabilities in truth_<split>.npz)")
    return 0


def _parse_options(opts: list[str] | None) -> dict:
    from dynarec.config import key_value, parse_value

    d = {}
    for o in opts or []:
        k, v = key_value(o, "--option", DynarecError)
        d[k] = parse_value(v)
    return d


def cmd_data_prepare(a) -> int:
    from dynarec.datasets import prepare_any

    print(prepare_any(a.input, a.out, a.schema, a.raw, a.format, _parse_options(a.option), a.split,
                      _fractions(a.fractions), a.seed, a.out_of_core, a.memory_budget, a.engine))
    return 0


def _print_result(summary: dict, as_json: bool, unknown: dict | None = None) -> None:
    from dynarec.report import auc_table, gate_usage_table, table_console

    from dynarec.experiment import kind_of

    con = table_console(stderr=as_json)
    if kind_of(summary["model"]) == "retrieval":  # exact full-corpus metrics
        from dynarec.retrieval.cli import metrics_table

        con.print(metrics_table(summary["model"], summary["metrics"]))
    for task in summary["metrics"].get("auc", {}):
        con.print(auc_table({summary["model"]: summary["metrics"]}, task))
    for task in summary["metrics"].get("rmse", {}):
        con.print(auc_table({summary["model"]: summary["metrics"]}, task, metric="rmse"))
    if summary.get("gate_usage"):
        con.print(gate_usage_table(summary["gate_usage"]))
    if as_json:
        print(json.dumps(summary))


def cmd_train(a) -> int:
    from dynarec.experiment import load_experiment, load_interrupted, train_experiment
    from dynarec.train import distributed

    flags = {"model": a.model, "data.path": a.data, "seed": a.seed, "out": a.out, "trainer.epochs": a.epochs,
             "trainer.batch_size": a.batch_size, "trainer.lr": a.lr}
    if a.resume is not None:  # the run's own arguments may be repeated; differing ones are refused
        from dynarec.resume_args import check_resume_args

        cfg = load_interrupted(a.resume)
        check_resume_args(cfg, a.resume, a.config, flags, a.set)
    else:
        cfg = load_experiment(a.config, flags, a.set)
    if a.json:
        cfg.trainer.progress = cfg.trainer.progress and sys.stderr.isatty()
    if (a.nproc or 1) > 1 and not distributed.launched():  # config checked above, then N processes
        return distributed.launch_train(a, a.nproc, cfg.trainer)
    res = train_experiment(cfg, console=_console(), resume=a.resume is not None, overwrite=a.overwrite)
    if not distributed.is_main():  # several processes: rank 0 prints
        return 0
    _print_result(res.summary(cfg.model, cfg.data.path), a.json)
    for h in res.hints:
        print(h, file=sys.stderr)
    if not a.json:
        print(f"checkpoint: {res.checkpoint}  ({res.train_rows_per_s:,.0f} train rows/s, best epoch {res.history.best_epoch})")
    return 0


def cmd_retrieve(a) -> int:
    from dynarec.retrieval.cli import run_retrieve

    return run_retrieve(a)


def cmd_evaluate(a) -> int:
    from dynarec.experiment import evaluate_checkpoint

    summary = evaluate_checkpoint(a.checkpoint, a.data, a.split, a.mc_dropout, a.memory_budget)
    domain = summary.pop("domain", None)
    if domain and summary["unknown"].get(domain):
        print(f"warning: {summary['unknown'][domain]:,} row(s) have a '{domain}' value unseen in training; "
              f"mapped to id 0 and reported as domain=<unknown>", file=sys.stderr)
    _print_result(summary, a.json)
    return 0


def cmd_predict(a) -> int:
    from dynarec.experiment import predict_checkpoint

    res = predict_checkpoint(a.checkpoint, a.data, a.out, a.id_column, a.mc_dropout)
    for feat, n in res["unknown"].items():
        if feat in res["dynamic"]:
            print(f"note: {n:,} id(s) of '{feat}' hold no slot in this pass (read the default row)", file=sys.stderr)
        else:
            print(f"note: {n:,} value(s) of '{feat}' unseen in training (mapped to the unknown id)", file=sys.stderr)
    print(f"wrote {res['rows']:,} predictions to {res['out']}")
    return 0


def cmd_export(a) -> int:
    from dynarec.serve.export import export_bundle

    if not a.map_tables_mb >= 0:
        raise DynarecError(f"--map-tables-mb: expected a number >= 0, got {a.map_tables_mb}")
    m = export_bundle(a.checkpoint, a.out, a.format, map_mb=a.map_tables_mb)
    worst = {b: max(v.values()) for b, v in m["parity"].items()}
    mapped = ", ".join(f"{t['layer']} {t['shape'][0]:,} x {t['shape'][1]} mapped" for t in m.get("mapped", {}).get("tables", []))
    print(f"exported {m['model']} {m['model_version']} to {a.out} ({', '.join(m['backends'])}; max |exported - eager| "
          + (", ".join(f"{b} {v:.1e}" for b, v in worst.items()) or "n/a") + ")" + (f"; {mapped}" if mapped else ""))
    return 0


def cmd_serve(a) -> int:
    from dynarec.serve.limits import HttpLimits
    from dynarec.serve.server import ServerConfig, serve

    if a.max_body_bytes <= 0:
        raise DynarecError(f"--max-body-bytes: expected a number > 0, got {a.max_body_bytes}")
    cfg = ServerConfig(max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, max_rows=a.max_rows, queue_size=a.queue_size,
                       max_body_bytes=a.max_body_bytes, http=HttpLimits.from_args(a))
    serve(a.model, a.host, a.port, a.backend, a.watch, cfg, a.threads, a.workers, retriever=a.retriever)
    return 0


def cmd_online(a) -> int:
    from dynarec.online.command import online_command

    return online_command(a)


def cmd_demo(a) -> int:
    from dynarec.demo import run_demo

    return run_demo(a.out, quick=a.quick, seed=a.seed)


def cmd_benchmark(a) -> int:
    try:
        from dynarec.bench import run_suite
    except ImportError:
        raise DynarecError("benchmark harness is not available in this build") from None
    return run_suite(a.suite, a.out, check=a.check)


