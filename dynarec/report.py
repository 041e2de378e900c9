"""Human-facing output: AUC tables per task × domain (rich), CSV rows and per-domain bar plots."""
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


def plot_domain_auc(results: dict[str, dict], task: str, path: str | Path, counts: dict | None = None,
                    errors: dict[str, dict] | None = None, title: str | None = None) -> None:
    """Grouped bars: x = slice (all + domains, with row counts), one bar per model (+ error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(results)
    slices = []
    for m in results.values():
        for s in m.get("auc", {}).get(task, {}):
            if s not in slices:
                slices.append(s)
    if not slices:
        return
    x = np.arange(len(slices))
    w = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(slices) + 0.3 * len(models)), 4))
    lo = 1.0
    for i, name in enumerate(models):
        vals = [results[name].get("auc", {}).get(task, {}).get(s) or np.nan for s in slices]
        err = None
        if errors and name in errors:
            err = [errors[name].get(s, 0.0) or 0.0 for s in slices]
        style = {"color": "0.8", "hatch": "//", "edgecolor": "0.5"} if name.startswith("bayes") else {}
        ax.bar(x + (i - (len(models) - 1) / 2) * w, vals, w, yerr=err, label=name, capsize=2, **style)
        finite = [v for v in vals if not np.isnan(v)]
        lo = min([lo] + finite)
    labels = [s.replace("domain=", "") + (f"\n(n={counts[s]:,})" if counts and s in counts else "") for s in slices]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel(f"AUC ({task})")
    ax.set_title(title or f"AUC per domain — {task}")
    ax.legend(fontsize=7, ncol=min(len(models), 4))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
