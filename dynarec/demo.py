"""`dynarec demo`: the main job on the built-in synthetic data (known ground truth).

Generates multi-domain two-task data, trains the registered models that suit it with default
hyper-parameters, prints AUC per task × domain side by side (with the Bayes-optimal AUC of the true
probabilities as the ceiling) and writes a report folder: metrics.json, metrics.csv, report.md and
one PNG of per-domain AUC per task."""
from __future__ import annotations

import json
import time
from pathlib import Path

# models trained by the demo, in order; those not registered in this build are skipped
FULL_MODELS = ["dnn", "shared_bottom", "mmoe", "ple", "lhuc", "ppnet", "epnet", "pepnet", "poso", "star", "m2m",
               "can", "apg_dnn"]
QUICK_MODELS = ["dnn", "mmoe", "pepnet", "apg_dnn"]


def run_demo(out: str | Path = "dynarec-demo", quick: bool = False, seed: int = 0) -> int:
    import warnings

    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    from rich.console import Console

    from dynarec.data.prepare import synthetic_tables
    from dynarec.metrics import compute_metrics
    from dynarec.models import REGISTRY, list_models
    from dynarec.report import auc_table, metric_rows, plot_domain_auc, table_console, write_csv
    from dynarec.train.run import train_model

    con = table_console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    list_models()
    rows = 30_000 if quick else 150_000
    trainer = {"epochs": 2 if quick else 3, "batch_size": 1024 if quick else 2048, "lr": 2e-3, "patience": 1}
    names = [m for m in (QUICK_MODELS if quick else FULL_MODELS) if m in REGISTRY]
    t0 = time.perf_counter()
    con.print(f"[bold]dynarec demo[/bold]: {rows:,} synthetic rows, 6 domains (45 % … 1.5 %), tasks click + conversion; "
              f"models: {', '.join(names)}")
    schema, tables, truth = synthetic_tables(rows, seed)
    test = tables["test"]
    labels = {t: v.double().numpy() for t, v in test.labels.items()}
    bayes = compute_metrics(labels, {"click": truth["test"]["p_click"], "conversion": truth["test"]["p_conversion"]},
                            test.domain.numpy(), schema.domain_values)
    results = {"bayes (true p)": bayes}
    speed = {}
    for name in names:
        r = train_model(name, schema, tables, None, trainer, seed, console=Console(stderr=True))
        results[name] = r.metrics
        speed[name] = r.train_rows_per_s
        con.print(f"  {name:<14} click AUC {r.metrics['auc']['click']['all']:.4f}   {r.train_rows_per_s:>9,.0f} rows/s")
    for task in schema.task_names:
        con.print(auc_table(results, task, f"Test AUC — {task}"))
    counts = bayes["count"]
    all_rows = []
    for name, m in results.items():
        all_rows += metric_rows(name, m, train_rows_per_s=speed.get(name, ""))
    write_csv(out / "metrics.csv", all_rows)
    (out / "metrics.json").write_text(json.dumps({"rows": rows, "trainer": trainer, "seed": seed, "counts": counts,
                                                  "train_rows_per_s": speed, "metrics": results}, indent=2))
    for task in schema.task_names:
        plot_domain_auc(results, task, out / f"auc_by_domain_{task}.png", counts,
                        title=f"dynarec demo — test AUC per domain ({task})")
    _write_report(out, results, speed, counts, rows, trainer)
    con.print(f"report written to [bold]{out}/[/bold] (metrics.json, metrics.csv, report.md, auc_by_domain_*.png) "
              f"in {time.perf_counter() - t0:.0f} s")
    return 0


def _write_report(out: Path, results: dict, speed: dict, counts: dict, rows: int, trainer: dict) -> None:
    from dynarec.report import markdown_auc_table

    lines = ["# dynarec demo report", "", f"{rows:,} synthetic rows, trainer {trainer}.", "",
             "Rows per test slice: " + ", ".join(f"{k.replace('domain=', '')} {v:,}" for k, v in counts.items()), ""]
    for task in next(iter(results.values()))["auc"]:
        extra = {"train rows/s": {name: f"{speed[name]:,.0f}" for name in speed}}
        lines += [f"## AUC — {task}", ""] + markdown_auc_table(results, task, extra=extra)
        lines += ["", f"![AUC per domain]({'auc_by_domain_' + task + '.png'})", ""]
    (out / "report.md").write_text("\n".join(lines))
