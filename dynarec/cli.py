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
    import numpy as np

    from dynarec.data.prepare import prepare_table, split_indices
    from dynarec.data.synthetic import generate, synthetic_schema

    if a.rows < 100:
        raise DynarecError(f"--rows: need at least 100 rows, got {a.rows}")
    t, truth = generate(a.rows, a.seed)
    out = Path(a.out)
    schema = synthetic_schema()
    prepare_table(t, schema, out, split=a.split, seed=a.seed)
    idx = split_indices(t, schema, a.split, seed=a.seed)
    for s, ix in idx.items():  # the true probabilities, row-aligned with each prepared split
        np.savez(out / f"truth_{s}.npz", p_click=truth["p_click"][ix], p_conversion=truth["p_conversion"][ix])
    print(f"wrote {a.rows:,} synthetic rows to {out} (train/valid/test parquet + schema.json + encoders.json; "
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
    from dynarec.data.prepare import prepare_table, read_table
    from dynarec.data.schema import Schema

    if a.raw:  # a named public dataset
        from dynarec.datasets import load_dataset

        table, schema = load_dataset(a.input, a.raw, **_parse_options(a.option))
    else:
        if not a.schema:
            raise DynarecError("data prepare: --schema FILE is required for a data file (or give a dataset name and --raw DIR)")
        schema = Schema.load(a.schema)
        table = read_table(a.input, a.format, columns=schema.columns())
    tables = prepare_table(table, schema, a.out, split=a.split, seed=a.seed)
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
    from dynarec.config import load_experiment, to_dict
    from dynarec.data.prepare import load_prepared
    from dynarec.train.run import train_model

    trainer_over = {"trainer.epochs": a.epochs, "trainer.batch_size": a.batch_size, "trainer.lr": a.lr}
    cfg = load_experiment(a.config, {"model": a.model, "data.path": a.data, "seed": a.seed, "out": a.out,
                                     **trainer_over}, a.set)
    if not cfg.data.path:
        raise DynarecError("train: no data; give --data DIR (a prepared folder) or data.path in the config")
    schema, tables = load_prepared(cfg.data.path)
    enc = json.loads((Path(cfg.data.path) / "encoders.json").read_text())
    if a.json:
        cfg.trainer.progress = cfg.trainer.progress and sys.stderr.isatty()
    res = train_model(cfg.model, schema, tables, cfg.params, cfg.trainer, cfg.seed, cfg.out, enc, console=_console())
    Path(cfg.out, "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    _print_result(res.summary(cfg.model, cfg.data.path), a.json)
    if not a.json:
        print(f"checkpoint: {res.checkpoint}  ({res.train_rows_per_s:,.0f} train rows/s, best epoch {res.history.best_epoch})")
    return 0


def load_eval_table(data: str, split: str, schema, encoders: dict):
    """A prepared folder (its ``split``) or a raw csv/parquet file encoded with the checkpoint's encoders.
    Returns (table, unknown counts per feature)."""
    from dynarec.data.encode import Encoders
    from dynarec.data.prepare import load_prepared, read_table, to_tensor_table

    p = Path(data)
    if p.is_dir():
        ps, tables = load_prepared(p, (split,))
        if [f.vocab_size for f in ps.fields] != [f.vocab_size for f in schema.fields]:
            raise DynarecError(f"{p}: prepared with other encoders than the checkpoint's (vocab sizes differ); "
                               "pass the raw data file instead")
        return tables[split], {}
    if encoders is None:
        raise DynarecError("checkpoint has no encoders; evaluate it on a prepared folder")
    enc = Encoders.from_dict(schema, encoders)
    cols = [f.name for f in schema.features] + schema.task_names + ([schema.user] if schema.user else [])
    t = read_table(p, columns=list(dict.fromkeys(cols)))
    encoded = enc.transform(t, str(p))
    return to_tensor_table(schema, encoded), enc.unknown_counts


def cmd_evaluate(a) -> int:
    from dynarec.metrics import evaluate_model
    from dynarec.train.checkpoint import load_checkpoint

    model, blob = load_checkpoint(a.checkpoint)
    table, unknown = load_eval_table(a.data, a.split, model.schema, blob.get("encoders"))
    metrics = evaluate_model(model, table)
    summary = {"model": blob["model"], "data": a.data, "metrics": metrics, "checkpoint": str(a.checkpoint),
               "rows": len(table), "unknown": {k: v for k, v in unknown.items() if v}}
    dom_unknown = unknown.get(model.schema.domain, 0)
    if dom_unknown:
        print(f"warning: {dom_unknown:,} row(s) have a '{model.schema.domain}' value unseen in training; "
              f"mapped to id 0 and reported as domain=<unknown>", file=sys.stderr)
    if a.mc_dropout:
        from dynarec.uncertainty import mc_dropout_report

        summary["mc_dropout"] = mc_dropout_report(model, table, a.mc_dropout)
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
