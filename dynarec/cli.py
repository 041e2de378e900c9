"""`dynarec` command line: demo, models, data prepare / synthetic, train, evaluate, predict, export, serve,
online, benchmark. Each verb parses its arguments, calls ONE library function and prints its result.

User mistakes (bad data, schema, config, arguments) print one line on stderr and exit with code 2."""
from __future__ import annotations

import argparse
import sys

from dynarec.errors import DynarecError
from dynarec.quiet import one_line_data_warnings, silence

silence()  # the warnings a user should not see (dynarec.quiet), before any noisy import
one_line_data_warnings()  # a DataWarning is one stderr line, as errors are

from dynarec.cli_commands import (  # noqa: E402  (after silence(): the verbs import torch lazily)
    cmd_models,
    _finite_float,
    cmd_data_synthetic,
    cmd_data_prepare,
    _print_result,  # noqa: F401  (re-exported: tests print a result the CLI's way)
    cmd_train,
    cmd_retrieve,
    cmd_evaluate,
    cmd_predict,
    cmd_export,
    cmd_serve,
    cmd_online,
    cmd_demo,
    cmd_benchmark,
)

# ---- parser ---------------------------------------------------------------------------------------
class UsageError(DynarecError):
    """A bad command line (argparse's own errors, turned into the one-line form)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, like every other user mistake
        where = self.prog.removeprefix("dynarec").strip()
        raise UsageError(f"{where}: {message}" if where else message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dynarec", description="Multi-domain, multi-task CTR prediction with dynamic weights")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="generate the built-in synthetic data, train models, write a report")
    d.add_argument("--quick", action="store_true", help="small run (< 60 s on 2 cores)")
    d.add_argument("--out", default="dynarec-demo")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo)

    m = sub.add_parser("models", help="list registered models")
    m.add_argument("--json", action="store_true")
    m.add_argument("--guide", action="store_true", help="which model to try first, with the studies' numbers")
    m.set_defaults(fn=cmd_models)

    data = sub.add_parser("data", help="prepare data")
    dsub = data.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)
    pr = dsub.add_parser("prepare", help="encode a csv/parquet file (with --schema) or a public dataset (with --raw)")
    pr.add_argument("input", help="data file, or a dataset name with --raw")
    pr.add_argument("--format", choices=["csv", "parquet"], default=None)
    pr.add_argument("--schema", help="schema YAML/JSON (features, tasks, domain, user, timestamp)")
    pr.add_argument("--raw", help="folder with a public dataset's raw files")
    pr.add_argument("--option", action="append", metavar="KEY=VALUE", help="dataset loader option")
    pr.add_argument("--out", required=True)
    pr.add_argument("--split", default="random", metavar="METHOD",
                    help="random | temporal[:COL] | stratified[:TASK|COL] | group[:COL] | column:COL | "
                         "leave_last_out[:TASK]")
    pr.add_argument("--fractions", metavar="TRAIN,VALID,TEST", help="default 0.8,0.1,0.1")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out-of-core", action="store_true",
                    help="stream the input (a file, glob or folder) in bounded memory; writes sharded parquet")
    pr.add_argument("--memory-budget", type=float, default=None, metavar="MB",
                    help="with --out-of-core: memory budget of the passes (1024)")
    pr.add_argument("--engine", default=None, metavar="NAME",
                    help="out of core on an engine: local (this process, the default) | dask (2 local workers, or "
                         "DASK_SCHEDULER_ADDRESS; the dask extra)")
    pr.set_defaults(fn=cmd_data_prepare)
    sy = dsub.add_parser("synthetic", help="write the built-in synthetic data as a prepared folder")
    sy.add_argument("--rows", type=int, default=100_000)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--split", default="random", metavar="METHOD", help="random | temporal | stratified[:TASK]")
    sy.add_argument("--fractions", metavar="TRAIN,VALID,TEST", help="default 0.8,0.1,0.1")
    sy.add_argument("--out", required=True)
    sy.add_argument("--stream", action="store_true",
                    help="write a drifting stream of raw pass files (ids born and retired, a new domain midway)")
    sy.add_argument("--passes", type=int, default=10, help="with --stream: number of passes (10)")
    sy.add_argument("--rows-per-pass", type=int, default=100_000, help="with --stream: rows per pass (100000)")
    sy.add_argument("--id-share", type=_finite_float, metavar="SHARE",
                    help="with --stream: share of the click logit's variance carried by the user / item / author "
                         "ids, in [0, 1) (0.5)")
    sy.set_defaults(fn=cmd_data_synthetic)

    t = sub.add_parser("train", help="train a model on a prepared folder")
    t.add_argument("--config", help="experiment YAML")
    t.add_argument("--model")
    t.add_argument("--data", help="prepared data folder")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--out", help="run folder (written aside and swapped in when the run succeeds)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.hidden=[128,64]")
    t.add_argument("--resume", metavar="DIR", help="continue the interrupted run whose --out was DIR after its "
                   "last completed epoch (its config is reused; other options must equal the run's)")
    t.add_argument("--overwrite", action="store_true", help="replace a run in --out even when its validation "
                   "score is better than this run's (refused otherwise)")
    t.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    t.add_argument("--nproc", type=int, help="data-parallel processes on this machine (torch.distributed.run)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="score data with a checkpoint")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder, or an online run / pass folder")
    e.add_argument("--data", required=True, help="prepared folder or raw csv/parquet file")
    e.add_argument("--split", default=None, choices=["train", "valid", "test"],
                   help="split of a prepared folder (default test)")
    e.add_argument("--mc-dropout", type=int, default=0, metavar="N", help="MC-dropout passes (ECE + variance)")
    e.add_argument("--memory-budget", type=float, metavar="MB", help="stream a split larger than this "
                   "(default: the run's data.memory_budget_mb); docs/out_of_core.md")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_evaluate)

    pd = sub.add_parser("predict", help="score an unlabeled raw file: one row per input row, one column per task")
    pd.add_argument("--checkpoint", required=True, help="checkpoint folder, or an online run / pass folder")
    pd.add_argument("--data", required=True, help="raw csv/parquet file (labels not needed)")
    pd.add_argument("--out", required=True, help="FILE.parquet or FILE.csv")
    pd.add_argument("--id-column", help="copy this input column to the output (default: _row, the raw row index)")
    pd.add_argument("--mc-dropout", type=int, default=0, metavar="N", help="MC-dropout passes: mean + <task>_var")
    pd.set_defaults(fn=cmd_predict)

    ex = sub.add_parser("export", help="export a checkpoint to a serving bundle (torch.export + ONNX)")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True, help="bundle folder")
    from dynarec.serve.backends import BACKENDS, formats

    ex.add_argument("--format", default="all", choices=formats())
    ex.add_argument("--map-tables-mb", type=float, default=64.0, metavar="MB",
                    help="feature tables of at least MB MiB become memory-mapped files, their lookup outside the "
                         "exported graph (default 64; a sharded run's tables are streamed from its shards)")
    ex.set_defaults(fn=cmd_export)

    sv = sub.add_parser("serve", help="HTTP predictor on raw feature values over an exported bundle")
    sv.add_argument("--model", required=True, help="bundle folder (from `dynarec export`), or an online run folder "
                    "(serves the pass its current marker names and follows it) or one pass folder")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--backend", default=None, choices=list(BACKENDS),
                    help="default: onnx for a bundle, eager for an online run")
    sv.add_argument("--watch", help="folder where new bundles appear (hot reload)")
    sv.add_argument("--max-batch", type=int, default=256, help="rows per inference call (micro-batching)")
    sv.add_argument("--max-wait-ms", type=float, default=0.0,
                    help="after taking the queued requests, wait at most this long for more (0: run at once)")
    sv.add_argument("--max-rows", type=int, default=4096, help="rows per request")
    sv.add_argument("--queue-size", type=int, default=1024, help="pending requests before 503")
    sv.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime threads (0 = default)")
    sv.add_argument("--workers", type=int, default=1, help="server processes sharing the port (SO_REUSEPORT)")
    sv.add_argument("--retriever", help="a two_tower checkpoint: also answer POST /retrieve (top-k unseen items)")
    sv.add_argument("--max-body-bytes", type=int, default=8 << 20, metavar="N",
                    help="bytes of a request body (413 and close; default 8 MiB)")
    from dynarec.serve.limits import add_flags

    add_flags(sv)
    sv.set_defaults(fn=cmd_serve)

    on = sub.add_parser("online", help="train by passes over a stream of raw pass files (dynamic ids, deltas)")
    on.add_argument("--schema", help="schema YAML/JSON of the raw pass files (features marked dynamic: true)")
    on.add_argument("--passes", required=True, help="folder of pass files (csv / parquet, in name order)")
    on.add_argument("--model", help="registered model name")
    on.add_argument("--out", required=True, help="run folder (passes/NNNN, current marker, summary.json)")
    on.add_argument("--config", help="experiment YAML (model, params, trainer, online, seed)")
    on.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. online.max_rows=100000")
    on.add_argument("--json", action="store_true", help="one JSON object per pass per line, then a summary line")
    on.add_argument("--resume", action="store_true", help="continue after the last completed pass of --out")
    on.set_defaults(fn=cmd_online)
    rt = sub.add_parser("retrieve", help="top-k unseen items for a user from a retrieval checkpoint")
    rt.add_argument("--checkpoint", required=True)
    rt.add_argument("--user", required=True, action="append", help="raw user id (repeat for several)")
    rt.add_argument("--k", type=int, default=20)
    rt.add_argument("--index", default="flat", choices=["exact", "flat", "hnsw"], help="exact (torch), FAISS flat / HNSW")
    rt.add_argument("--domain", help="the query's domain (default: the user's domain with most training positives)")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(fn=cmd_retrieve)

    b = sub.add_parser("benchmark", help="run a benchmark suite (models × datasets × seeds)")
    b.add_argument("--suite", required=True)
    b.add_argument("--out", default="runs/benchmark")
    b.add_argument("--check", action="store_true", help="exit non-zero when a metric leaves its expected band")
    b.set_defaults(fn=cmd_benchmark)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.fn(args) or 0)
    except (DynarecError, FloatingPointError) as e:  # a user's mistake, a diverging loss: one line
        from dynarec.train.rank_errors import report

        report(f"dynarec: error: {e}")
        return 2
    except KeyboardInterrupt:
        print("dynarec: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # torch.compile's backend failing on this machine: one line, not a traceback
        if type(e).__name__ != "BackendCompilerFailed":
            raise
        print(f"dynarec: error: trainer.compile: torch.compile could not build this model here "
              f"({str(e).strip().splitlines()[-1][:160]}); set trainer.compile: false", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
