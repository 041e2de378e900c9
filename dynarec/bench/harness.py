"""Benchmark harness behind ``dynarec benchmark --suite FILE [--check] [--out DIR]``.

A suite (YAML, format in docs/benchmarks.md ("Datasets and the benchmark harness")) names datasets, models, seeds (>= 3) and ONE trainer
budget. Every dataset is prepared once with a fixed split (``split_seed``), so all models and seeds see the
same train / valid / test rows; each (dataset, model, seed) run trains with early stopping on valid and is
evaluated on test. Outputs in ``out``:

* ``results.csv``: long format, one row per (dataset, model, seed, metric, task, domain, value); run-level
  measures (train / inference rows/s, peak memory, parameter count, epochs) have empty task / domain.
* ``results.md``: mean ± std over seeds per task × domain (AUC by default) and a cost table.
* ``<metric>_<dataset>_<task>.png``: per-domain bars with ±std error bars (matplotlib, Agg).
* ``expected.suggested.csv``: the measured means with a tolerance of max(3 std, 0.005), a starting point
  for a suite's expected-metric file.

``check=True`` compares the means with the suite's expected-metric file (CSV ``metric,expected,tolerance``;
``metric`` = ``dataset/model/metric/task/domain`` or ``dataset/model/<run measure>``) and returns 1 when a
value leaves its band ``|mean - expected| <= tolerance`` (or is missing), printing which.
"""
from __future__ import annotations

import csv
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynarec.config import build_dataclass, read_yaml_mapping
from dynarec.errors import ConfigError, DataError, DynarecError

RUN_MEASURES = ("train_rows_per_s", "infer_rows_per_s", "peak_mem_mb", "params", "epochs", "best_epoch",
                "train_seconds")
TABLE_METRICS = ("auc", "gauc", "logloss", "rmse")


# ---------------------------------------------------------------------------------------------- suite format
@dataclass
class DatasetSpec:
    """One dataset of a suite: ``dataset: synthetic`` (built-in), a loader name from ``dynarec.datasets``
    with ``raw`` (+ ``options``), or ``prepared: DIR`` (an already prepared folder, its split is used)."""

    name: str = ""
    dataset: str = ""
    raw: str = ""
    prepared: str = ""
    options: dict = field(default_factory=dict)
    split: str = "random"  # random | temporal
    split_seed: int = 0
    rows: int = 20_000  # synthetic only
    max_rows: int = 0  # > 0: keep a fixed random subset of this many raw rows (before the split)


@dataclass
class ModelSpec:
    model: str = ""
    name: str = ""  # display name (default: model); lets a suite compare two configs of one model
    params: dict = field(default_factory=dict)


@dataclass
class Suite:
    name: str = ""
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    datasets: list[dict] = field(default_factory=list)
    models: list[Any] = field(default_factory=list)  # "dnn" or {model, name, params}
    trainer: dict = field(default_factory=dict)  # TrainerConfig keys: the same budget for every run
    metrics: list[str] = field(default_factory=lambda: ["auc"])  # tabled / plotted metrics
    expected: str = ""  # expected-metric CSV (relative to the suite file)
    threads: int = 0  # torch threads (0 = torch default)


def load_suite(path: str | Path) -> tuple[Suite, list[DatasetSpec], list[ModelSpec]]:
    p = Path(path)
    d = read_yaml_mapping(p, "suite")
    suite = build_dataclass(Suite, d, str(p))
    suite.name = suite.name or p.stem
    if len(set(suite.seeds)) < 3:
        raise ConfigError(f"{p}: seeds: a suite needs >= 3 distinct seeds for mean ± std, got {suite.seeds}")
    if not suite.datasets:
        raise ConfigError(f"{p}: datasets: at least one dataset is required")
    if not suite.models:
        raise ConfigError(f"{p}: models: at least one model is required")
    for m in suite.metrics:
        if m not in TABLE_METRICS:
            raise ConfigError(f"{p}: metrics: unknown metric '{m}' (expected one of {', '.join(TABLE_METRICS)})")
    datasets = []
    for i, dd in enumerate(suite.datasets):
        ds = build_dataclass(DatasetSpec, dd, f"{p}: datasets[{i}]")
        if not ds.dataset and not ds.prepared:
            raise ConfigError(f"{p}: datasets[{i}]: give 'dataset' (synthetic or a loader name) or 'prepared'")
        if ds.dataset and ds.dataset != "synthetic" and not ds.prepared:
            from dynarec.datasets import DATASETS

            if ds.dataset not in DATASETS:
                raise ConfigError(f"{p}: datasets[{i}].dataset: unknown dataset '{ds.dataset}' (expected synthetic "
                                  f"or one of {', '.join(sorted(DATASETS))})")
            if not ds.raw:
                raise ConfigError(f"{p}: datasets[{i}].raw: the raw folder of '{ds.dataset}' is required")
        if ds.split not in ("random", "temporal"):
            raise ConfigError(f"{p}: datasets[{i}].split: expected random or temporal, got '{ds.split}'")
        ds.name = ds.name or ds.dataset or Path(ds.prepared).name
        datasets.append(ds)
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{p}: datasets: names must be unique, got {names}")
    models = []
    from dynarec.models.registry import get_model_info

    for i, mm in enumerate(suite.models):
        ms = ModelSpec(model=mm) if isinstance(mm, str) else build_dataclass(ModelSpec, mm, f"{p}: models[{i}]")
        if not ms.model:
            raise ConfigError(f"{p}: models[{i}].model: a registered model name is required")
        get_model_info(ms.model)  # ConfigError with a close match for typos
        ms.name = ms.name or ms.model
        models.append(ms)
    mnames = [m.name for m in models]
    if len(set(mnames)) != len(mnames):
        raise ConfigError(f"{p}: models: display names must be unique, got {mnames} (set 'name')")
    from dynarec.config import TrainerConfig

    build_dataclass(TrainerConfig, suite.trainer, f"{p}: trainer")  # validate the budget up front
    return suite, datasets, models


def expand(s: str) -> str:
    """``$VAR`` / ``${VAR}`` / ``${VAR:-default}`` from the environment (shell semantics), then ``~``."""
    import re

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        v = os.environ.get(name)
        if v:
            return v
        if default is not None:
            return default
        raise ConfigError(f"suite path '{s}': environment variable {name} is not set")

    s = re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", sub, s)
    return os.path.expanduser(os.path.expandvars(s))


def _resolve(base: Path, s: str) -> Path:
    q = Path(expand(s))
    return q if q.is_absolute() else (base / q).resolve()


def prepare_dataset(ds: DatasetSpec, base: Path):
    """(schema, {split: TensorTable}) for one suite dataset, with the suite's fixed split."""
    if ds.prepared:
        from dynarec.data.prepare import load_prepared

        return load_prepared(_resolve(base, ds.prepared))
    if ds.dataset == "synthetic":
        from dynarec.data.prepare import synthetic_tables

        schema, tables, truth = synthetic_tables(ds.rows, seed=ds.split_seed)
        tables = dict(tables)
        tables["__truth__"] = truth  # popped by run_suite: the Bayes-optimal reference row
        return schema, tables
    import pyarrow as pa

    from dynarec.data.prepare import prepare_table
    from dynarec.datasets import load_dataset

    raw = _resolve(base, ds.raw)
    if not raw.exists():
        raise DataError(f"dataset '{ds.name}': raw data '{raw}' not found (set datasets[].raw in the suite)")
    t, schema = load_dataset(ds.dataset, raw, **ds.options)
    if ds.max_rows and t.num_rows > ds.max_rows:
        keep = np.sort(np.random.default_rng(ds.split_seed).choice(t.num_rows, ds.max_rows, replace=False))
        t = t.take(pa.array(keep))
    return schema, prepare_table(t, schema, None, split=ds.split, seed=ds.split_seed)


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


BAYES = "bayes-optimal"


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


def metric_key(dataset: str, model: str, metric: str, task: str = "", domain: str = "") -> str:
    return "/".join([dataset, model, metric] + ([task, domain] if task else []))


def _fmt_num(x: float, scale_of: float | None = None) -> str:
    """Compact number; ``scale_of`` formats ``x`` (a std) in the unit of its mean."""
    ref = abs(x if scale_of is None else scale_of)
    if math.isnan(x):
        return "–"
    if ref >= 1e6:
        return f"{x / 1e6:.2f}M"
    if ref >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.1f}" if ref >= 10 else f"{x:.2f}"


def _domain_order(agg: dict, ds: str, metric: str, task: str) -> list[str]:
    """'all' first, then domains by test rows (largest first), then name."""
    doms = {k[4] for k in agg if k[0] == ds and k[2] == metric and k[3] == task}
    n = {k[4]: v[0] for k, v in agg.items() if k[0] == ds and k[2] == "count"}
    return sorted(doms, key=lambda d: (d != "all", -n.get(d, 0), d))


def markdown_tables(suite: Suite, agg: dict, datasets: list[str], models: list[str]) -> str:
    lines = [f"# Benchmark suite `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    lines += [f"Seeds: {', '.join(map(str, suite.seeds))} (mean ± std over seeds, test split). "
              f"Trainer: `{suite.trainer}`.", ""]
    for ds in datasets:
        lines += [f"## {ds}", ""]
        for metric in suite.metrics:
            tasks = sorted({k[3] for k in agg if k[0] == ds and k[2] == metric})
            for task in tasks:
                doms = _domain_order(agg, ds, metric, task)
                head = []
                for d in doms:
                    n = next((v[0] for k, v in agg.items() if k[0] == ds and k[2] == "count" and k[4] == d), None)
                    head.append(d if n is None else f"{d} (n={int(n):,})")
                note = " (test rows per domain in the header)" if head != doms else ""
                lines += [f"**{metric.upper()} — task `{task}`**{note}", "",
                          "| model | " + " | ".join(head) + " |", "|---" * (len(doms) + 1) + "|"]
                for m in models:
                    cells = []
                    for d in doms:
                        mean, std, n = agg.get((ds, m, metric, task, d), (float("nan"), float("nan"), 0))
                        cells.append("–" if n == 0 else f"{mean:.4f}" if m == BAYES else f"{mean:.4f} ± {std:.4f}")
                    lines.append(f"| {m} | " + " | ".join(cells) + " |")
                lines.append("")
        lines += ["**Cost**", "", "| model | train rows/s | inference rows/s | peak mem Δ (MB) | parameters | epochs |",
                  "|---|---|---|---|---|---|"]
        for m in models:
            if m == BAYES:
                continue

            def ms(name, fmt=_fmt_num):
                mean, std, n = agg.get((ds, m, name, "", ""), (float("nan"), float("nan"), 0))
                if n == 0:
                    return "–"
                if name in ("params", "epochs") and std == 0:
                    return f"{mean:,.0f}"
                return f"{fmt(mean)} ± {fmt(std, mean)}"
            lines.append(f"| {m} | {ms('train_rows_per_s')} | {ms('infer_rows_per_s')} | {ms('peak_mem_mb')} | "
                         f"{ms('params')} | {ms('epochs')} |")
        lines.append("")
    return "\n".join(lines)


def plot_domains(agg: dict, suite: Suite, datasets: list[str], models: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for ds in datasets:
        for metric in suite.metrics:
            for task in sorted({k[3] for k in agg if k[0] == ds and k[2] == metric}):
                doms = _domain_order(agg, ds, metric, task)
                fig, ax = plt.subplots(figsize=(min(12.0, 2.5 + 0.35 * len(doms) * max(1, len(models))), 3.4))
                w = 0.8 / max(len(models), 1)
                x = np.arange(len(doms))
                lo, hi = [], []
                for i, m in enumerate(models):
                    vals = [agg.get((ds, m, metric, task, d), (np.nan, np.nan, 0)) for d in doms]
                    mean = np.array([v[0] for v in vals])
                    std = np.array([v[1] for v in vals])
                    ax.bar(x + (i - (len(models) - 1) / 2) * w, mean, w, yerr=std, capsize=2, label=m)
                    ok = np.isfinite(mean)
                    lo.extend((mean - np.nan_to_num(std))[ok].tolist())
                    hi.extend((mean + np.nan_to_num(std))[ok].tolist())
                if lo and metric in ("auc", "gauc"):
                    pad = 0.15 * max(max(hi) - min(lo), 0.02)
                    ax.set_ylim(max(0.0, min(lo) - pad), min(1.0, max(hi) + 2 * pad))
                ax.set_xticks(x, doms, rotation=20, fontsize=8)
                ax.set_ylabel(f"{metric.upper()} (mean ± std)")
                ax.set_title(f"{ds} — {task}", fontsize=10)
                ax.legend(fontsize=7, ncol=min(len(models), 4))
                fig.tight_layout()
                f = out / f"{metric}_{ds}_{task}.png".replace("/", "_")
                fig.savefig(f, dpi=110)
                plt.close(fig)
                files.append(f)
    return files


# ---------------------------------------------------------------------------------------------- expected
def read_expected(path: Path) -> list[tuple[str, float, float]]:
    if not path.exists():
        raise ConfigError(f"{path}: expected-metric file not found")
    out = []
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    if not rows or [c.strip() for c in rows[0]] != ["metric", "expected", "tolerance"]:
        raise ConfigError(f"{path}: expected a CSV with header 'metric,expected,tolerance'")
    for i, r in enumerate(rows[1:], start=2):
        try:
            out.append((r[0].strip(), float(r[1]), float(r[2])))
        except (IndexError, ValueError):
            raise ConfigError(f"{path}: line {i}: expected 'metric,expected,tolerance' with numbers, got {r}") from None
    return out


def check_expected(agg: dict, expected: list[tuple[str, float, float]]) -> list[str]:
    """Messages for every expected metric that is missing or outside ``|mean - expected| <= tolerance``."""
    means = {metric_key(k[0], k[1], k[2], k[3], k[4]): v[0] for k, v in agg.items()}
    bad = []
    for key, exp, tol in expected:
        if key not in means:
            close = __import__("difflib").get_close_matches(key, list(means), n=1)
            bad.append(f"{key}: not measured" + (f" (did you mean '{close[0]}'?)" if close else ""))
            continue
        v = means[key]
        if math.isnan(v) or abs(v - exp) > tol:
            bad.append(f"{key}: {v:.4f} outside {exp:.4f} ± {tol:.4f}")
    return bad


def suggested_expected(agg: dict, suite: Suite) -> list[tuple[str, float, float]]:
    out = []
    for k, (mean, std, n) in sorted(agg.items()):
        if k[2] in suite.metrics and k[4] and not math.isnan(mean):
            out.append((metric_key(*k), round(mean, 4), round(max(3 * std, 0.005), 4)))
    return out


# ---------------------------------------------------------------------------------------------- driver
def run_suite(suite_yaml_path: str | Path, out_dir: str | Path, check: bool = False, progress: bool = True,
              console=None) -> int:
    """Run a suite and write its outputs to ``out_dir``; -> exit code (0 ok, 1 a run failed or, with
    ``check``, a metric left its expected band)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    path = Path(suite_yaml_path)
    suite, datasets, models = load_suite(path)
    base = path.resolve().parent
    expected = None
    if check:
        exp_path = _resolve(base, suite.expected) if suite.expected else path.with_suffix(".expected.csv")
        expected = read_expected(exp_path)  # fail before spending the budget
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = {"progress": False, **suite.trainer}
    if suite.threads:
        import torch

        torch.set_num_threads(suite.threads)
    total = len(datasets) * len(models) * len(suite.seeds)
    records: list[dict] = []
    failures: list[str] = []
    done = 0
    t_start = time.perf_counter()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=not progress, transient=False)
    with bar:
        job = bar.add_task(f"suite {suite.name}", total=total)
        for ds in datasets:
            bar.update(job, description=f"{suite.name}: preparing {ds.name}")
            try:
                schema, tables = prepare_dataset(ds, base)
            except DynarecError as e:
                failures.append(f"{ds.name}: {e}")
                bar.advance(job, len(models) * len(suite.seeds))
                continue
            truth = tables.pop("__truth__", None)
            if truth is not None:
                for metric, task, dom, v in bayes_rows(schema, tables, truth):
                    records.append({"dataset": ds.name, "model": BAYES, "seed": -1, "metric": metric,
                                    "task": task, "domain": dom, "value": v})
            for m in models:
                for seed in suite.seeds:
                    bar.update(job, description=f"{suite.name}: {ds.name} · {m.name} · seed {seed}")
                    try:
                        t_run = time.perf_counter()
                        got = run_one(m, schema, tables, trainer, seed)
                        done += 1
                        for metric, task, dom, v in got:
                            records.append({"dataset": ds.name, "model": m.name, "seed": seed, "metric": metric,
                                            "task": task, "domain": dom, "value": v})
                        if progress and not console.is_terminal:  # a log file: one line per run instead of a bar
                            first = next((f"{mt} {t} {v:.4f}" for mt, t, d, v in got if d == "all" and mt != "count"), "")
                            console.print(f"[{int(bar.tasks[0].completed) + 1}/{total}] {ds.name} · "
                                          f"{m.name} · seed {seed}: {first} ({time.perf_counter() - t_run:.0f} s)")
                    except Exception as e:  # noqa: BLE001 - a failing model must not hide the others' results
                        msg = f"{ds.name} · {m.name} · seed {seed}: {type(e).__name__}: {e}"
                        failures.append(msg)
                        if not isinstance(e, DynarecError):
                            with open(out / "errors.log", "a") as f:
                                f.write(msg + "\n" + traceback.format_exc() + "\n")
                    bar.advance(job)
    elapsed = time.perf_counter() - t_start
    write_results(out / "results.csv", records)
    m_names = [m.name for m in models] + ([BAYES] if any(r["model"] == BAYES for r in records) else [])
    agg, plots = write_outputs(out, suite, records, [d.name for d in datasets], m_names, elapsed)
    console.print(f"suite {suite.name}: {len(records)} measurements from {done} / {total} runs in "
                  f"{elapsed:.0f} s -> {out / 'results.csv'}, {out / 'results.md'}, {len(plots)} plot(s)")
    code = 0
    for f in failures:
        console.print(f"[red]FAILED[/red] {escape(f)}")
        code = 1
    if expected is not None:
        bad = check_expected(agg, expected)
        for b in bad:
            console.print(f"[red]OUT OF BAND[/red] {escape(b)}")
        if bad:
            code = 1
        else:
            console.print(f"check: all {len(expected)} expected metric(s) within their bands")
    return code


def read_results(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{**r, "seed": int(r["seed"]), "value": float(r["value"])} for r in csv.DictReader(f)]


def render_results(suite_yaml_path: str | Path, out_dir: str | Path) -> Path:
    """Rebuild ``results.md``, the plots and ``expected.suggested.csv`` from an existing ``results.csv``
    (no training); -> the markdown path."""
    suite, datasets, models = load_suite(suite_yaml_path)
    out = Path(out_dir)
    records = read_results(out / "results.csv")
    old = (out / "results.md").read_text() if (out / "results.md").exists() else ""
    wall = [line for line in old.splitlines() if line.startswith("Wall time:")]
    elapsed = float(wall[0].split()[2]) if wall else None
    m_names = [m.name for m in models] + ([BAYES] if any(r["model"] == BAYES for r in records) else [])
    write_outputs(out, suite, records, [d.name for d in datasets], m_names, elapsed)
    return out / "results.md"


def write_outputs(out: Path, suite: Suite, records: list[dict], datasets: list[str], models: list[str],
                  elapsed: float | None = None) -> tuple[dict, list[Path]]:
    agg = aggregate(records)
    ds_names = [d for d in datasets if any(r["dataset"] == d for r in records)]
    md = markdown_tables(suite, agg, ds_names, models)
    if elapsed is not None:
        md += f"\nWall time: {elapsed:.0f} s.\n"
    (out / "results.md").write_text(md)
    plots = plot_domains(agg, suite, ds_names, models, out) if records else []
    with open(out / "expected.suggested.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "expected", "tolerance"])
        w.writerows(suggested_expected(agg, suite))
    return agg, plots


def write_results(path: Path, records: list[dict]) -> None:
    cols = ["dataset", "model", "seed", "metric", "task", "domain", "value"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in records:
            w.writerow({**r, "value": f"{r['value']:.6g}"})
