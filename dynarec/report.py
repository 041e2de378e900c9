"""Human-facing output: AUC tables per task × domain (rich), CSV rows and the per-domain bar plot shared by
the demo and the benchmark report."""
from __future__ import annotations

import csv
import sys
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


MIN_POSITIVES = 30  # below this many positives (or negatives) a slice's AUC is flagged as unreliable
Z95 = 1.959963984540054  # two-sided 95 % normal quantile (the interval is AUC ± Z95·DeLong s.e.)


def interactive(stderr: bool = False) -> bool:
    """Whether the stream a table goes to is a terminal (styles show there; logs and pipes get plain text)."""
    stream = sys.stderr if stderr else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def table_console(stderr: bool = False):
    """rich Console for tables: the terminal's width on a terminal; piped or redirected, wide enough that no
    cell is ever cut (rich would otherwise shrink a table to 80 columns with ``0.95…`` cells).

    Example::

        table_console().print(auc_table({"dnn": metrics}, "click"))
    """
    from rich.console import Console

    return Console(stderr=stderr, width=None if interactive(stderr) else 10_000)


def slice_counts(metrics: dict, task: str) -> tuple[dict, dict]:
    """(rows, positives) per slice of one metrics dict (:func:`dynarec.metrics.compute_metrics`); {} if absent."""
    return metrics.get("count", {}) or {}, (metrics.get("positives", {}) or {}).get(task, {}) or {}


def small_slice(n: int | None, pos: int | None) -> bool:
    """True when a slice has fewer than :data:`MIN_POSITIVES` positives or negatives (a wide, unstable AUC)."""
    return n is not None and pos is not None and min(pos, n - pos) < MIN_POSITIVES


def slice_header(s: str, n: int | None, pos: int | None, sep: str = "\n") -> str:
    """Column header of a slice: its name, rows and positives, ``!`` when :func:`small_slice`."""
    name = s.replace("domain=", "")
    if n is None:
        return name
    extra = f"n={n:,}" + ("" if pos is None else f", pos={pos:,}")
    return f"{name}{sep}({extra}){' !' if small_slice(n, pos) else ''}"


def metric_cell(m: dict, metric: str, task: str, s: str) -> str:
    """``0.8123 ± 0.0064`` (value ± the 95 % half-width from DeLong's s.e., AUC only), ``—`` when missing."""
    v = m.get(metric, {}).get(task, {}).get(s)
    if v is None:
        return "—"
    se = m.get("auc_se", {}).get(task, {}).get(s) if metric == "auc" else None
    return f"{v:.4f}" + ("" if se is None else f" ± {Z95 * se:.4f}")


def small_slice_note(slices: list[str], counts: dict, positives: dict) -> str | None:
    """One warning line naming the slices with fewer than :data:`MIN_POSITIVES` positives (or negatives)."""
    small = [s.replace("domain=", "") for s in slices if small_slice(counts.get(s), positives.get(s))]
    if not small:
        return None
    return (f"! fewer than {MIN_POSITIVES} positives (or negatives) in {', '.join(small)}: "
            "the AUC there is unreliable (see its interval)")


def is_reference(model: str) -> bool:
    """Reference rows (``bayes …``: the true probabilities of synthetic data) are shown but never 'best'."""
    return model.startswith("bayes")


def best_per_slice(results: dict[str, dict], metric: str, task: str, slices: list[str]) -> dict:
    """slice -> the best value of ``metric`` among the non-reference models (lowest for rmse / logloss)."""
    out = {}
    for s in slices:
        vals = [v for n, m in results.items() if not is_reference(n)
                and (v := m.get(metric, {}).get(task, {}).get(s)) is not None]
        out[s] = (min(vals) if metric in ("rmse", "logloss") else max(vals)) if vals else None
    return out


def markdown_auc_table(results: dict[str, dict], task: str, metric: str = "auc",
                       extra: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Markdown lines of :func:`auc_table`: slices headed by rows and positives, value ± 95 % half-width,
    the best non-reference model per column in **bold**, then a warning line for small slices.
    ``extra``: column name -> {model: text} appended at the right (e.g. train rows/s).

    Example::

        Path("report.md").write_text("\\n".join(markdown_auc_table({"dnn": res.metrics}, "click")))
    """
    slices: list[str] = []
    counts, positives = {}, {}
    for m in results.values():
        slices += [s for s in m.get(metric, {}).get(task, {}) if s not in slices]
        c, p = slice_counts(m, task)
        counts, positives = {**c, **counts}, {**p, **positives}
    best = best_per_slice(results, metric, task, slices)
    mark = sum(not is_reference(n) for n in results) > 1
    extra = extra or {}
    lines = ["| model | " + " | ".join(slice_header(s, counts.get(s), positives.get(s), " ") for s in slices)
             + "".join(f" | {c}" for c in extra) + " |", "|---" * (len(slices) + len(extra) + 1) + "|"]
    for name, m in results.items():
        cells = []
        for s in slices:
            txt, v = metric_cell(m, metric, task, s), m.get(metric, {}).get(task, {}).get(s)
            cells.append(f"**{txt}**" if mark and v is not None and v == best[s] and not is_reference(name) else txt)
        lines.append(f"| {name} | " + " | ".join(cells) + "".join(f" | {col.get(name, '')}" for col in extra.values())
                     + " |")
    notes = ["± the half-width of the 95 % confidence interval (DeLong)."] if metric == "auc" else []
    if mark:
        notes.append("Best model per column in bold.")
    small = small_slice_note(slices, counts, positives)
    lines += [""] + ([" ".join(notes)] if notes else []) + ([f"**Warning:** {small.lstrip('! ')}"] if small else [])
    return lines


def auc_table(results: dict[str, dict], task: str, title: str | None = None, metric: str = "auc",
              plain: bool | None = None):
    """rich Table: one row per model, one column per slice ('all', domains) headed by its rows and positives,
    cells ``metric`` of ``task`` (AUC ± the half-width of its 95 % DeLong interval). With several models the
    best per column is bold on a terminal and marked ``*`` in plain output (``plain``: None = stdout is not a
    terminal); slices with fewer than :data:`MIN_POSITIVES` positives are marked ``!`` and named in the caption.

    Example::

        table_console().print(auc_table({"dnn": res.metrics}, "click"))
    """
    from rich.table import Table

    plain = (not interactive()) if plain is None else plain
    slices: list[str] = []
    for m in results.values():
        for s in m.get(metric, {}).get(task, {}):
            if s not in slices:
                slices.append(s)
    counts, positives = {}, {}
    for m in results.values():
        c, p = slice_counts(m, task)
        counts, positives = {**c, **counts}, {**p, **positives}
    best = best_per_slice(results, metric, task, slices)
    mark = sum(not is_reference(n) for n in results) > 1
    notes = [n for n in (small_slice_note(slices, counts, positives),) if n]
    if mark and plain:
        notes.append("* best per column")
    if metric == "auc":
        notes.append("± half-width of the 95 % confidence interval (DeLong)")
    t = Table(title=title or f"{metric.upper()} — {task}", show_lines=False, caption="\n".join(notes) or None)
    t.add_column("model", no_wrap=True)
    for s in slices:
        t.add_column(slice_header(s, counts.get(s), positives.get(s)), justify="right", no_wrap=True)
    for name, m in results.items():
        cells = []
        for s in slices:
            txt = metric_cell(m, metric, task, s)
            v = m.get(metric, {}).get(task, {}).get(s)
            if mark and v is not None and v == best[s] and not is_reference(name):
                txt = f"{txt} *" if plain else f"[bold]{txt}[/bold]"
            cells.append(txt)
        t.add_row(name, *cells)
    return t


def models_table(infos: list):
    """rich Table of ``dynarec models`` (:func:`dynarec.models.list_models` infos): names and kinds are never cut
    (as wide as the widest); the group lists and the paper wrap on a narrow terminal.

    Example::

        table_console().print(models_table(list_models(kind=None)))
    """
    from rich.table import Table

    t = Table(title=f"dynarec models ({len(infos)})")
    rows = [(i.name, i.kind, ", ".join(i.requires) or "—", ", ".join(i.optional) or "—",
             "yes" if i.multi_task else "no", "yes" if i.multi_domain else "no", i.paper) for i in infos]
    t.add_column("name", no_wrap=True, min_width=max(len(r[0]) for r in rows))
    t.add_column("kind", no_wrap=True, min_width=max(len(r[1]) for r in rows))
    for c in ("requires groups", "uses when present"):
        t.add_column(c, overflow="fold")
    t.add_column("multi-\ntask", no_wrap=True)
    t.add_column("multi-\ndomain", no_wrap=True)
    t.add_column("paper", overflow="fold")
    for r in rows:
        t.add_row(*r)
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


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10
HATCHES = ("", "//", "..", "xx", "\\\\", "++")


def model_styles(models: list[str], hatched: tuple[str, ...] = ()) -> dict[str, dict]:
    """A distinct bar style per model: the 10 palette colours, then the same colours hatched (``//``, ``..``, …),
    so no two models of up to 60 look alike (matplotlib's default cycle repeats after 10: the 11th model
    had the 1st's colour). Models in ``hatched`` (references such as the true probabilities) are grey ``//``.

    Example::

        styles = model_styles(["bayes (true p)", "dnn", "m2m"], hatched=("bayes (true p)",))
        ax.bar(x, heights, **styles["dnn"])
    """
    out, i = {}, 0
    for name in models:
        if name in hatched:
            out[name] = {"color": "0.8", "hatch": "//", "edgecolor": "0.5"}
            continue
        out[name] = {"color": PALETTE[i % len(PALETTE)], "hatch": HATCHES[(i // len(PALETTE)) % len(HATCHES)],
                     "edgecolor": "white" if i < len(PALETTE) else "black"}
        i += 1
    return out


def bar_figure(slices: list[str], values: dict[str, list[float]], *, ylabel: str, title: str,
               figsize: tuple[float, float], errors: dict[str, list[float]] | None = None,
               ylim: tuple[float, float] | None = None, tick_labels: list[str] | None = None,
               tick_rotation: float | None = None, title_size: float | None = None, grid: bool = False,
               hatched: tuple[str, ...] = (), baseline: float = 0.0):
    """The figure of :func:`plot_slice_bars` (matplotlib, Agg; the caller closes it). Bars rise from
    ``baseline`` (0; 0.5 = chance for AUC), which is also the bottom of the y-axis whatever ``ylim`` says.

    Example::

        fig = bar_figure(["all", "d1"], {"dnn": [0.81, 0.78]}, ylabel="AUC", title="t", figsize=(6, 4), baseline=0.5)
        fig.savefig("auc.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(values)
    styles = model_styles(models, hatched)
    x = np.arange(len(slices))
    w = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=figsize)
    for i, name in enumerate(models):
        heights = np.asarray(values[name], dtype=float) - baseline
        ax.bar(x + (i - (len(models) - 1) / 2) * w, heights, w, bottom=baseline, yerr=(errors or {}).get(name),
               label=name, capsize=2, **styles[name])
    top = ylim[1] if ylim is not None else None
    ax.set_ylim(bottom=baseline, top=top)
    ax.set_xticks(x, tick_labels or slices, fontsize=8, **({} if tick_rotation is None else {"rotation": tick_rotation}))
    ax.set_ylabel(ylabel)
    ax.set_title(title, **({} if title_size is None else {"fontsize": title_size}))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(models) // 16)  # beside the bars
    if grid:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_slice_bars(path: str | Path, slices: list[str], values: dict[str, list[float]], **kw) -> None:
    """The one bar plot of dynarec's reports (demo and benchmark): grouped bars, x = slices ('all' and the
    domains), one distinct colour / hatch per model (:func:`model_styles`), written as a PNG.

    Args (keywords of :func:`bar_figure`):
        path: the PNG to write. slices: the x positions, in order. values: model -> one value per slice (NaN:
        no bar). errors: model -> one error-bar half-height per slice (models left out get none).
        ylabel, title, figsize; ylim (only its top is used: the axis starts at ``baseline``), tick_labels,
        tick_rotation, title_size, grid; hatched: reference models drawn grey; baseline: where bars start.

    Example::

        plot_slice_bars("auc.png", ["all", "d1"], {"dnn": [0.81, 0.78]}, ylabel="AUC", title="AUC",
                        figsize=(6, 4), baseline=0.5)
    """
    import matplotlib.pyplot as plt

    fig = bar_figure(slices, values, **kw)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_domain_auc(results: dict[str, dict], task: str, path: str | Path, counts: dict | None = None,
                    errors: dict[str, dict] | None = None, title: str | None = None) -> None:
    """AUC of ``task`` per slice (all + domains, rows and positives in the labels, ``!`` under
    :data:`MIN_POSITIVES`), one bar per model of ``results`` (model -> metrics dict), bars from 0.5 (chance).
    Error bars: ``errors`` (model -> slice -> half-height) when given, else each model's 95 % DeLong interval."""
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
    if errors is None:
        errors = {name: {s: Z95 * se for s, se in results[name].get("auc_se", {}).get(task, {}).items() if se}
                  for name in models}
    errs = {name: [errors[name].get(s, 0.0) or 0.0 for s in slices] for name in models if errors and name in errors}
    n, pos = {}, {}
    for m in results.values():
        c, p = slice_counts(m, task)
        n, pos = {**c, **n}, {**p, **pos}
    n = {**n, **(counts or {})}
    labels = [slice_header(s, n.get(s), pos.get(s)) for s in slices]
    note = small_slice_note(slices, n, pos)
    plot_slice_bars(path, slices, values, errors=errs, ylim=(0.5, 1.0), tick_labels=labels, baseline=0.5,
                    ylabel=f"AUC ({task}), from 0.5 = chance; ± 95 % CI", grid=True,
                    title=(title or f"AUC per domain — {task}") + (f"\n{note}" if note else ""),
                    title_size=9 if note else None,
                    figsize=(max(6, 1.2 * len(slices) + 0.3 * len(models)), 4),
                    hatched=tuple(m for m in models if m.startswith("bayes")))
