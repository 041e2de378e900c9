"""Running a benchmark suite: each dataset prepared once with its fixed split, every (dataset, model, seed)
trained with early stopping on valid and measured on test (metrics, rows/s, peak memory, parameters), and
the per-seed measurements aggregated to mean ± std.

A measurement is a record ``{dataset, model, seed, metric, task, domain, value}``; run-level measures
(:data:`RUN_MEASURES`) have empty task / domain. Synthetic data also gives the metrics of its TRUE
probabilities as the reference model :data:`BAYES` (seed -1)."""
from __future__ import annotations

import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynarec.bench.suite import DatasetSpec, ModelSpec, Suite, resolve_path
from dynarec.errors import DataError, DynarecError

RUN_MEASURES = ("train_rows_per_s", "infer_rows_per_s", "peak_mem_mb", "params", "epochs", "best_epoch",
                "train_seconds")
BAYES = "bayes-optimal"


# ---------------------------------------------------------------------------------------------- data
@dataclass
class PreparedDataset:
    """One suite dataset ready to train on: ``tables`` holds the splits only; ``truth`` (synthetic data
    only, else None) holds the true probabilities per split, row-aligned: ``truth[split]["p_<task>"]``."""

    schema: object
    tables: dict
    truth: dict | None = None


def prepare_dataset(ds: DatasetSpec, base: Path) -> PreparedDataset:
    """The schema, splits (the suite's fixed split) and, for synthetic data, the truth of one suite dataset;
    relative paths are taken from ``base`` (the suite file's folder)."""
    if ds.prepared:
        from dynarec.data.prepare import load_prepared

        return PreparedDataset(*load_prepared(resolve_path(base, ds.prepared)))
    if ds.dataset == "synthetic":
        from dynarec.data.prepare import synthetic_tables

        schema, tables, truth = synthetic_tables(ds.rows, seed=ds.split_seed)
        return PreparedDataset(schema, dict(tables), truth)
    import pyarrow as pa

    from dynarec.data.prepare import prepare_table
    from dynarec.datasets import load_dataset

    raw = resolve_path(base, ds.raw)
    if not raw.exists():
        raise DataError(f"dataset '{ds.name}': raw data '{raw}' not found (set datasets[].raw in the suite)")
    t, schema = load_dataset(ds.dataset, raw, **ds.options)
    if ds.max_rows and t.num_rows > ds.max_rows:
        keep = np.sort(np.random.default_rng(ds.split_seed).choice(t.num_rows, ds.max_rows, replace=False))
        t = t.take(pa.array(keep))
    return PreparedDataset(schema, prepare_table(t, schema, None, split=ds.split, seed=ds.split_seed))


# ---------------------------------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak resident memory of this process during a block, sampled from /proc/self/statm every 5 ms
    (tracemalloc misses torch's C++ allocations). ``peak_mb`` = peak RSS - RSS at entry. Falls back to
    ``resource.ru_maxrss`` (a process-lifetime peak) where /proc is not available."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self._rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def bayes_rows(schema, tables, truth) -> list[tuple[str, str, str, float]]:
    """Metrics of the TRUE probabilities on the test split (synthetic data only): the ceiling a model can
    reach per domain, shown as the row ``bayes-optimal``."""
    from dynarec.metrics import compute_metrics

    test = tables.get("test") or tables["valid"]
    split = "test" if tables.get("test") is not None else "valid"
    preds = {t: np.asarray(truth[split][f"p_{t}"], np.float64) for t in schema.task_names if f"p_{t}" in truth[split]}
    if not preds:
        return []
    labels = {t: test.labels[t].double().numpy() for t in preds}
    m = compute_metrics(labels, preds, test.domain.numpy(), schema.domain_values)
    return [(metric, task, dom.removeprefix("domain="), float("nan") if v is None else float(v))
            for metric, per_task in m.items() if metric != "count"
            for task, per_dom in per_task.items() for dom, v in per_dom.items()]


def run_one(model: ModelSpec, schema, tables, trainer: dict, seed: int) -> list[tuple[str, str, str, float]]:
    """Train + evaluate one (model, seed); -> [(metric, task, domain, value)]."""
    import torch

    from dynarec.metrics import predict_table
    from dynarec.train.run import train_model

    with PeakMemory() as mem:
        res = train_model(model.model, schema, tables, dict(model.params), dict(trainer), seed=seed)
    test = tables.get("test") or tables["valid"]
    bs = int(trainer.get("eval_batch_size", 65536))
    predict_table(res.model, test.subset(torch.arange(min(len(test), bs))), bs)  # warm-up
    t0 = time.perf_counter()
    predict_table(res.model, test, bs)
    infer = len(test) / max(time.perf_counter() - t0, 1e-9)
    rows = []
    for metric, per_task in res.metrics.items():
        if metric == "count":  # test rows per domain (the same for every model and seed)
            rows += [("count", "", dom.removeprefix("domain="), float(v)) for dom, v in per_task.items()]
            continue
        for task, per_dom in per_task.items():
            for dom, v in per_dom.items():
                rows.append((metric, task, dom.removeprefix("domain="), float("nan") if v is None else float(v)))
    n_params = sum(p.numel() for p in res.model.parameters())
    rows += [("train_rows_per_s", "", "", float(res.train_rows_per_s)), ("infer_rows_per_s", "", "", infer),
             ("peak_mem_mb", "", "", mem.peak_mb), ("params", "", "", float(n_params)),
             ("epochs", "", "", float(len(res.history.epochs))), ("best_epoch", "", "", float(res.history.best_epoch)),
             ("train_seconds", "", "", float(res.history.train_seconds))]
    return rows


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class SuiteRun:
    """What running a suite gave: the records, one message per failed dataset / run, runs done of total."""

    records: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    done: int = 0
    total: int = 0
    elapsed: float = 0.0


def run_all(suite: Suite, datasets: list[DatasetSpec], models: list[ModelSpec], base: Path, out: Path,
            progress: bool, console) -> SuiteRun:
    """Every (dataset, model, seed) of a suite; a failing dataset or run is recorded in ``failures`` (with
    its traceback in ``out/errors.log`` unless it is a user mistake) and never hides the others' results."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    trainer = {"progress": False, **suite.trainer}
    if suite.threads:
        import torch

        torch.set_num_threads(suite.threads)
    run = SuiteRun(total=len(datasets) * len(models) * len(suite.seeds))
    t_start = time.perf_counter()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=not progress, transient=False)

    def record(ds, model, seed, metric, task, dom, v):
        run.records.append({"dataset": ds, "model": model, "seed": seed, "metric": metric, "task": task,
                            "domain": dom, "value": v})

    with bar:
        job = bar.add_task(f"suite {suite.name}", total=run.total)
        for ds in datasets:
            bar.update(job, description=f"{suite.name}: preparing {ds.name}")
            try:
                prep = prepare_dataset(ds, base)
            except DynarecError as e:
                run.failures.append(f"{ds.name}: {e}")
                bar.advance(job, len(models) * len(suite.seeds))
                continue
            if prep.truth is not None:
                for metric, task, dom, v in bayes_rows(prep.schema, prep.tables, prep.truth):
                    record(ds.name, BAYES, -1, metric, task, dom, v)
            for m in models:
                for seed in suite.seeds:
                    bar.update(job, description=f"{suite.name}: {ds.name} · {m.name} · seed {seed}")
                    try:
                        t_run = time.perf_counter()
                        got = run_one(m, prep.schema, prep.tables, trainer, seed)
                        run.done += 1
                        for metric, task, dom, v in got:
                            record(ds.name, m.name, seed, metric, task, dom, v)
                        if progress and not console.is_terminal:  # a log file: one line per run instead of a bar
                            first = next((f"{mt} {t} {v:.4f}" for mt, t, d, v in got if d == "all" and mt != "count"), "")
                            console.print(f"[{int(bar.tasks[0].completed) + 1}/{run.total}] {ds.name} · "
                                          f"{m.name} · seed {seed}: {first} ({time.perf_counter() - t_run:.0f} s)")
                    except Exception as e:  # noqa: BLE001 - a failing model must not hide the others' results
                        msg = f"{ds.name} · {m.name} · seed {seed}: {type(e).__name__}: {e}"
                        run.failures.append(msg)
                        if not isinstance(e, DynarecError):
                            with open(out / "errors.log", "a") as f:
                                f.write(msg + "\n" + traceback.format_exc() + "\n")
                    bar.advance(job)
    run.elapsed = time.perf_counter() - t_start
    return run


# ---------------------------------------------------------------------------------------------- aggregation
def aggregate(records: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """(dataset, model, metric, task, domain) -> (mean, std over seeds (ddof=1), n); NaNs are skipped."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["model"], r["metric"], r["task"], r["domain"]), []).append(r["value"])
    out = {}
    for k, vs in groups.items():
        a = np.array([v for v in vs if not math.isnan(v)], dtype=np.float64)
        if len(a) == 0:
            out[k] = (float("nan"), float("nan"), 0)
        else:
            out[k] = (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a))
    return out
