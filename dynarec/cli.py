"""`dynarec` command line: demo, models, data prepare / synthetic, train, evaluate, benchmark.

User mistakes (bad data, schema, config) print one line on stderr and exit with code 2."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from dynarec.errors import DynarecError

warnings.filterwarnings("ignore", message="Sparse invariant checks")


def _console():
    from rich.console import Console

    return Console(stderr=True)


# ---- commands -------------------------------------------------------------------------------------
def cmd_models(a) -> int:
    from dynarec.models import list_models

    infos = list_models()
    if a.json:
        print(json.dumps([{"name": i.name, "paper": i.paper, "needs": list(i.needs), "multi_task": i.multi_task,
                           "multi_domain": i.multi_domain} for i in infos]))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"dynarec models ({len(infos)})")
    for c in ("name", "needs groups", "multi-task", "multi-domain"):
        t.add_column(c, no_wrap=True)
    t.add_column("paper", overflow="ellipsis", no_wrap=True, max_width=90)
    for i in infos:
        t.add_row(i.name, ", ".join(i.needs) or "—", "yes" if i.multi_task else "no",
                  "yes" if i.multi_domain else "no", i.paper)
    Console(width=None if sys.stdout.isatty() else 180).print(t)
    return 0


def cmd_data_synthetic(a) -> int:
    from dynarec.bench.workflow import write_synthetic

    if a.rows < 100:
        raise DynarecError(f"--rows: need at least 100 rows, got {a.rows}")
    write_synthetic(a.out, a.rows, a.seed, a.split)
    print(f"wrote {a.rows:,} synthetic rows to {Path(a.out)} (train/valid/test parquet + schema.json + encoders.json; "
          f"true probabilities in truth_<split>.npz)")
    return 0


def _parse_options(opts: list[str] | None) -> dict:
    from dynarec.config import parse_value

    d = {}
    for o in opts or []:
        if "=" not in o:
            raise DynarecError(f"--option '{o}': expected key=value")
        k, v = o.split("=", 1)
        d[k] = parse_value(v)
    return d


def cmd_data_prepare(a) -> int:
    from dynarec.bench.workflow import prepare_input

    tables = prepare_input(a.input, a.out, a.schema, a.raw, a.format, _parse_options(a.option), a.split, a.seed)
    print(f"prepared {sum(len(t) for t in tables.values()):,} rows into {a.out}: "
          + ", ".join(f"{k} {len(v):,}" for k, v in tables.items()))
    return 0


def _print_result(summary: dict, as_json: bool, unknown: dict | None = None) -> None:
    from rich.console import Console

    from dynarec.report import auc_table, gate_usage_table

    con = Console(stderr=as_json)
    for task in summary["metrics"].get("auc", {}):
        con.print(auc_table({summary["model"]: summary["metrics"]}, task))
    for task in summary["metrics"].get("rmse", {}):
        con.print(auc_table({summary["model"]: summary["metrics"]}, task, metric="rmse"))
    if summary.get("gate_usage"):
        con.print(gate_usage_table(summary["gate_usage"]))
    if as_json:
        print(json.dumps(summary))


def cmd_train(a) -> int:
    from dynarec.bench.workflow import train_experiment
    from dynarec.config import load_experiment

    trainer_over = {"trainer.epochs": a.epochs, "trainer.batch_size": a.batch_size, "trainer.lr": a.lr}
    cfg = load_experiment(a.config, {"model": a.model, "data.path": a.data, "seed": a.seed, "out": a.out,
                                     **trainer_over}, a.set)
    if a.json:
        cfg.trainer.progress = cfg.trainer.progress and sys.stderr.isatty()
    res = train_experiment(cfg, console=_console())
    _print_result(res.summary(cfg.model, cfg.data.path), a.json)
    if not a.json:
        print(f"checkpoint: {res.checkpoint}  ({res.train_rows_per_s:,.0f} train rows/s, best epoch {res.history.best_epoch})")
    return 0


def cmd_evaluate(a) -> int:
    from dynarec.serve.predictor import Predictor

    predictor = Predictor.load(a.checkpoint)
    summary = predictor.evaluate(a.data, a.split, a.mc_dropout)
    domain = predictor.schema.domain
    if summary["unknown"].get(domain):
        print(f"warning: {summary['unknown'][domain]:,} row(s) have a '{domain}' value unseen in training; "
              f"mapped to id 0 and reported as domain=<unknown>", file=sys.stderr)
    _print_result(summary, a.json)
    return 0


def cmd_demo(a) -> int:
    from dynarec.demo import run_demo

    return run_demo(a.out, quick=a.quick, seed=a.seed)


def cmd_benchmark(a) -> int:
    try:
        from dynarec.bench import run_suite
    except ImportError:
        raise DynarecError("benchmark harness is not available in this build") from None
    return run_suite(a.suite, a.out, check=a.check)


# ---- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynarec", description="Multi-domain, multi-task CTR prediction with dynamic weights")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="generate the built-in synthetic data, train models, write a report")
    d.add_argument("--quick", action="store_true", help="small run (< 60 s on 2 cores)")
    d.add_argument("--out", default="dynarec-demo")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo)

    m = sub.add_parser("models", help="list registered models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models)

    data = sub.add_parser("data", help="prepare data")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    pr = dsub.add_parser("prepare", help="encode a csv/parquet file (with --schema) or a public dataset (with --raw)")
    pr.add_argument("input", help="data file, or a dataset name with --raw")
    pr.add_argument("--format", choices=["csv", "parquet"], default=None)
    pr.add_argument("--schema", help="schema YAML/JSON (features, tasks, domain, user, timestamp)")
    pr.add_argument("--raw", help="folder with a public dataset's raw files")
    pr.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset loader option")
    pr.add_argument("--out", required=True)
    pr.add_argument("--split", choices=["random", "temporal"], default="random")
    pr.add_argument("--seed", type=int, default=0)
    pr.set_defaults(fn=cmd_data_prepare)
    sy = dsub.add_parser("synthetic", help="write the built-in synthetic data as a prepared folder")
    sy.add_argument("--rows", type=int, default=100_000)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--split", choices=["random", "temporal"], default="random")
    sy.add_argument("--out", required=True)
    sy.set_defaults(fn=cmd_data_synthetic)

    t = sub.add_parser("train", help="train a model on a prepared folder")
    t.add_argument("--config", help="experiment YAML")
    t.add_argument("--model")
    t.add_argument("--data", help="prepared data folder")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--out")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.hidden=[128,64]")
    t.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="score data with a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True, help="prepared folder or raw csv/parquet file")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--mc-dropout", type=int, default=0, metavar="N", help="MC-dropout passes (ECE + variance)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_evaluate)

    b = sub.add_parser("benchmark", help="run a benchmark suite (models × datasets × seeds)")
    b.add_argument("--suite", required=True)
    b.add_argument("--out", default="runs/benchmark")
    b.add_argument("--check", action="store_true", help="exit non-zero when a metric leaves its expected band")
    b.set_defaults(fn=cmd_benchmark)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except DynarecError as e:
        print(f"dynarec: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"dynarec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynarec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
