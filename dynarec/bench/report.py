"""The report of a benchmark suite, from its records: ``results.csv`` (long format), ``results.md`` (mean ± std
per task × domain and a cost table), one per-domain bar plot per (metric, dataset, task) drawn with
:func:`dynarec.report.plot_slice_bars`, ``expected.suggested.csv``; and the expected-metric bands of
``--check`` (CSV ``metric,expected,tolerance``; ``metric`` = ``dataset/model/metric/task/domain`` or
``dataset/model/<run measure>``, a value passes when ``|mean - expected| <= tolerance``)."""
from __future__ import annotations

import csv
import difflib
import math
from pathlib import Path

import numpy as np

from dynarec.bench.runner import BAYES, aggregate
from dynarec.bench.suite import Suite
from dynarec.errors import ConfigError
from dynarec.report import MIN_POSITIVES, Z95, slice_header, small_slice


# ---------------------------------------------------------------------------------------------- tables
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


def _measure(agg: dict, ds: str, metric: str, task: str, domain: str) -> float | None:
    """The mean over models and seeds of a per-slice count (``count``, ``positives``), None when absent."""
    return next((v[0] for k, v in agg.items() if k[0] == ds and k[2] == metric and k[3] == task and k[4] == domain),
                None)


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
                head, small = [], []
                for d in doms:
                    n = _measure(agg, ds, "count", "", d)
                    pos = _measure(agg, ds, "positives", task, d)
                    head.append(slice_header(d, None if n is None else int(n), None if pos is None else int(pos), " "))
                    if n is not None and pos is not None and small_slice(int(n), int(pos)):
                        small.append(d)
                note = " (test rows and positives per domain in the header)" if head != doms else ""
                lower = metric in ("logloss", "rmse")
                best = {}
                for d in doms:
                    means = [agg[(ds, m, metric, task, d)][0] for m in models if m != BAYES
                             and (ds, m, metric, task, d) in agg and not math.isnan(agg[(ds, m, metric, task, d)][0])]
                    best[d] = (min(means) if lower else max(means)) if len(means) > 1 else None
                lines += [f"**{metric.upper()} — task `{task}`**{note}", "",
                          "| model | " + " | ".join(head) + " |", "|---" * (len(doms) + 1) + "|"]
                for m in models:
                    cells = []
                    for d in doms:
                        mean, std, n = agg.get((ds, m, metric, task, d), (float("nan"), float("nan"), 0))
                        se = agg.get((ds, m, "auc_se", task, d), (float("nan"),))[0] if metric == "auc" else float("nan")
                        txt = "–" if n == 0 else f"{mean:.4f}" if m == BAYES else f"{mean:.4f} ± {std:.4f}"
                        if n and not math.isnan(se):
                            txt += f" (CI ± {Z95 * se:.4f})"
                        cells.append(f"**{txt}**" if n and m != BAYES and mean == best[d] else txt)
                    lines.append(f"| {m} | " + " | ".join(cells) + " |")
                lines.append("")
                if metric == "auc":
                    lines += ["± std over seeds; CI ± the half-width of the 95 % DeLong interval of one run (mean "
                              "over seeds); best model per column in bold.", ""]
                if small:
                    lines += [f"**Warning:** fewer than {MIN_POSITIVES} positives (or negatives) in "
                              f"{', '.join(small)}: the {metric.upper()} there is unreliable.", ""]
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
    """``<metric>_<dataset>_<task>.png`` for each tabled metric: per-domain bars (from 0.5 for AUC / gAUC), slices
    labelled with rows and positives, error bars the 95 % DeLong half-width for AUC (± std over seeds otherwise)."""
    from dynarec.report import plot_slice_bars

    files = []
    for ds in datasets:
        for metric in suite.metrics:
            for task in sorted({k[3] for k in agg if k[0] == ds and k[2] == metric}):
                doms = _domain_order(agg, ds, metric, task)
                values, errors = {}, {}
                for m in models:
                    vals = [agg.get((ds, m, metric, task, d), (np.nan, np.nan, 0)) for d in doms]
                    values[m] = np.array([v[0] for v in vals])
                    errors[m] = np.array([v[1] for v in vals])
                    if metric == "auc":  # the 95 % DeLong half-width (mean over seeds) where it is known
                        se = np.array([agg.get((ds, m, "auc_se", task, d), (np.nan,))[0] for d in doms])
                        errors[m] = np.where(np.isfinite(se), Z95 * se, errors[m])
                auc_like = metric in ("auc", "gauc")
                ylim = (0.5, 1.0) if auc_like else None
                labels = []
                for d in doms:
                    n, pos = _measure(agg, ds, "count", "", d), _measure(agg, ds, "positives", task, d)
                    labels.append(slice_header(d, None if n is None else int(n), None if pos is None else int(pos)))
                f = out / f"{metric}_{ds}_{task}.png".replace("/", "_")
                plot_slice_bars(f, doms, values, errors=errors, ylim=ylim, tick_rotation=20, title_size=10,
                                baseline=0.5 if auc_like else 0.0, tick_labels=labels,
                                ylabel=f"{metric.upper()} (mean{', ± 95 % CI' if metric == 'auc' else ' ± std'})"
                                + (", from 0.5 = chance" if auc_like else ""),
                                title=f"{ds} — {task}",
                                figsize=(min(12.0, 2.5 + 0.35 * len(doms) * max(1, len(models))), 3.4))
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
            close = difflib.get_close_matches(key, list(means), n=1)
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


# ---------------------------------------------------------------------------------------------- files
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


def read_results(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{**r, "seed": int(r["seed"]), "value": float(r["value"])} for r in csv.DictReader(f)]
