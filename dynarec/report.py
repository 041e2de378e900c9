"""Human-facing output: AUC tables per task × domain (rich), CSV rows and the per-domain bar plot shared by
the demo and the benchmark report."""
from __future__ import annotations

import csv
from pathlib import Path


def metric_rows(model: str, metrics: dict, **extra) -> list[dict]:
    """Flatten a metrics dict into rows: model, metric, task, slice, value."""
    rows = []
    for metric, per_task in metrics.items():
        if metric == "count":
            continue
        for task, per_slice in per_task.items():
            for sl, v in per_slice.items():
                rows.append({"model": model, "metric": metric, "task": task, "slice": sl, "value": v, **extra})
    return rows


def write_csv(path: str | Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def auc_table(results: dict[str, dict], task: str, title: str | None = None, metric: str = "auc"):
    """rich Table: one row per model, one column per slice ('all', domains), ``metric`` of ``task``."""
    from rich.table import Table

    slices: list[str] = []
    for m in results.values():
        for s in m.get(metric, {}).get(task, {}):
            if s not in slices:
                slices.append(s)
    best = {s: max((m.get(metric, {}).get(task, {}).get(s) or -1) for m in results.values()) for s in slices}
    t = Table(title=title or f"{metric.upper()} — {task}", show_lines=False)
    t.add_column("model")
    for s in slices:
        t.add_column(s.replace("domain=", ""), justify="right")
    for name, m in results.items():
        cells = []
        for s in slices:
            v = m.get(metric, {}).get(task, {}).get(s)
            txt = "—" if v is None else f"{v:.4f}"
            cells.append(f"[bold]{txt}[/bold]" if v is not None and v == best[s] else txt)
        t.add_row(name, *cells)
    return t


def gate_usage_table(usage: dict[str, dict]):
    """rich Table of MoE gate usage (``Result.gate_usage``): one row per gate, the mean weight of each
    expert, its top-1 share, the normalised entropy and a warning when a gate has polarised."""
    from rich.table import Table

    t = Table(title="gate usage on the test split: mean weight/top-1 share per expert")
    t.add_column("gate", no_wrap=True)
    n = max(len(u["mean_weight"]) for u in usage.values())
    for i in range(n):
        t.add_column(f"e{i}", justify="right", no_wrap=True)
    t.add_column("entropy", justify="right", no_wrap=True)
    t.add_column("polarised", no_wrap=True)
    for name, u in usage.items():
        cells = [f"{w:.2f}/{s:.2f}" for w, s in zip(u["mean_weight"], u["top1_share"])]
        cells += [""] * (n - len(cells))
        t.add_row(name, *cells, f"{u['entropy']:.2f}", "[red]yes[/red]" if u["polarised"] else "no")
    return t


def plot_slice_bars(path: str | Path, slices: list[str], values: dict[str, list[float]], *, ylabel: str,
                    title: str, figsize: tuple[float, float], errors: dict[str, list[float]] | None = None,
                    ylim: tuple[float, float] | None = None, tick_labels: list[str] | None = None,
                    tick_rotation: float | None = None, title_size: float | None = None, grid: bool = False,
                    hatched: tuple[str, ...] = ()) -> None:
    """The one bar plot of dynarec's reports (demo and benchmark): grouped bars, x = slices ('all' and the
    domains), one bar per model, written as a PNG (matplotlib, Agg).

    Args:
        path: the PNG to write.
        slices: the x positions, in order.
        values: model -> one value per slice (NaN: no bar).
        errors: model -> one error-bar half-height per slice (models left out get no error bars).
        ylim / tick_labels / tick_rotation / title_size / grid: axis details (matplotlib defaults when None).
        hatched: models drawn grey and hatched (reference rows such as the true probabilities).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(values)
    x = np.arange(len(slices))
    w = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=figsize)
    for i, name in enumerate(models):
        style = {"color": "0.8", "hatch": "//", "edgecolor": "0.5"} if name in hatched else {}
        ax.bar(x + (i - (len(models) - 1) / 2) * w, values[name], w, yerr=(errors or {}).get(name), label=name,
               capsize=2, **style)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xticks(x, tick_labels or slices, fontsize=8, **({} if tick_rotation is None else {"rotation": tick_rotation}))
    ax.set_ylabel(ylabel)
    ax.set_title(title, **({} if title_size is None else {"fontsize": title_size}))
    ax.legend(fontsize=7, ncol=min(len(models), 4))
    if grid:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_domain_auc(results: dict[str, dict], task: str, path: str | Path, counts: dict | None = None,
                    errors: dict[str, dict] | None = None, title: str | None = None) -> None:
    """AUC of ``task`` per slice (all + domains, with row counts in the labels), one bar per model of
    ``results`` (model -> metrics dict), ``errors`` (model -> slice -> error) as error bars."""
    import numpy as np

    models = list(results)
    slices = []
    for m in results.values():
        for s in m.get("auc", {}).get(task, {}):
            if s not in slices:
                slices.append(s)
    if not slices:
        return
    values = {name: [results[name].get("auc", {}).get(task, {}).get(s) or np.nan for s in slices] for name in models}
    errs = {name: [errors[name].get(s, 0.0) or 0.0 for s in slices] for name in models if errors and name in errors}
    lo = min([1.0] + [v for vs in values.values() for v in vs if not np.isnan(v)])
    labels = [s.replace("domain=", "") + (f"\n(n={counts[s]:,})" if counts and s in counts else "") for s in slices]
    plot_slice_bars(path, slices, values, errors=errs, ylim=(max(0.0, lo - 0.05), 1.0), tick_labels=labels,
                    ylabel=f"AUC ({task})", title=title or f"AUC per domain — {task}", grid=True,
                    figsize=(max(6, 1.2 * len(slices) + 0.3 * len(models)), 4),
                    hatched=tuple(m for m in models if m.startswith("bayes")))
