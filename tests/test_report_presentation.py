"""Metrics tables and plots as a user sees them: full values when piped, the best model marked where bold
cannot show, rows / positives / 95 % intervals per slice, a warning under 30 positives, one look per model
in plots, AUC bars from 0.5, and `dynarec models` names never cut."""
import io
import re
import sys

import numpy as np
import pytest
from rich.console import Console

from dynarec.metrics import compute_metrics
from dynarec.report import MIN_POSITIVES, Z95, auc_table, bar_figure, markdown_auc_table, model_styles


def _metrics(seed: int, n_domains: int = 8, small: int | None = None):
    rng = np.random.default_rng(seed)
    dom = np.repeat(np.arange(1, n_domains + 1), 400)
    y = (rng.random(len(dom)) < 0.3).astype(float)
    if small is not None:                       # the last domain: only `small` positives
        last = dom == n_domains
        y[last] = 0.0
        y[np.flatnonzero(last)[:small]] = 1.0
    p = np.clip(0.3 + 0.2 * (y - 0.3) + rng.normal(0, 0.2, len(y)), 0.001, 0.999)
    names = [f"a_rather_long_domain_name_{i}" for i in range(n_domains)]
    return compute_metrics({"click": y}, {"click": p}, dom, names)


def test_piped_tables_print_every_value_in_full(capsys):
    from dynarec.cli import _print_result

    m = _metrics(0)
    _print_result({"model": "dnn", "metrics": m}, False)   # under pytest stdout is not a terminal
    out = capsys.readouterr().out
    assert "…" not in out
    for s, v in m["auc"]["click"].items():
        assert f"{v:.4f} ± {Z95 * m['auc_se']['click'][s]:.4f}" in out
        assert f"pos={m['positives']['click'][s]:,}" in out and s.replace("domain=", "") in out


def test_best_model_is_marked_in_plain_text_and_bold_in_markdown():
    a, b = _metrics(1), _metrics(2)
    ref = {"auc": {"click": {s: 0.999 for s in a["auc"]["click"]}}}   # a reference row is never "best"
    results = {"bayes (true p)": ref, "m1": a, "m2": b}
    buf = io.StringIO()
    Console(file=buf, width=10_000).print(auc_table(results, "click", plain=True))
    text = buf.getvalue()
    best = {s: max(a["auc"]["click"][s], b["auc"]["click"][s]) for s in a["auc"]["click"]}
    for s, v in best.items():
        assert re.search(rf"{v:.4f} ± \d\.\d{{4}} \*", text), s
    assert "0.9990 *" not in text and "* best per column" in text
    md = "\n".join(markdown_auc_table(results, "click"))
    for v in best.values():
        assert re.search(rf"\*\*{v:.4f} ± \d\.\d{{4}}\*\*", md)
    assert "**0.9990" not in md and md.count("**") == 2 * len(best)


def test_small_slices_show_counts_and_a_warning():
    m = _metrics(3, n_domains=3, small=5)
    md = "\n".join(markdown_auc_table({"dnn": m}, "click"))
    assert "a_rather_long_domain_name_2 (n=400, pos=5) !" in md
    assert f"fewer than {MIN_POSITIVES} positives (or negatives) in a_rather_long_domain_name_2" in md
    buf = io.StringIO()
    Console(file=buf, width=10_000).print(auc_table({"dnn": m}, "click", plain=True))
    assert "pos=5) !" in buf.getvalue() and "unreliable" in buf.getvalue()


def test_thirteen_models_get_thirteen_looks_and_auc_bars_start_at_chance():
    import matplotlib.pyplot as plt

    names = [f"model{i}" for i in range(13)]
    styles = model_styles(names, hatched=("model0",))
    assert len({(s["color"], s["hatch"]) for s in styles.values()}) == 13
    fig = bar_figure(["all", "d1"], {n: [0.8, 0.75] for n in names}, ylabel="AUC", title="t", figsize=(6, 4),
                     ylim=(0.74, 1.0), baseline=0.5, hatched=("model0",))
    ax = fig.axes[0]
    looks = {(tuple(c.patches[0].get_facecolor()), c.patches[0].get_hatch()) for c in ax.containers}
    assert len(ax.containers) == 13 and len(looks) == 13
    assert ax.get_ylim()[0] == 0.5 and ax.containers[0].patches[0].get_y() == 0.5  # bars rise from 0.5
    plt.close(fig)


def test_domain_plot_labels_carry_rows_positives_and_intervals(monkeypatch, tmp_path):
    import dynarec.report as report

    seen = {}
    monkeypatch.setattr(report, "plot_slice_bars", lambda path, slices, values, **kw: seen.update(kw, values=values))
    m = _metrics(4, n_domains=2, small=3)
    report.plot_domain_auc({"dnn": m}, "click", tmp_path / "x.png")
    assert seen["tick_labels"][2] == "a_rather_long_domain_name_1\n(n=400, pos=3) !"
    assert seen["baseline"] == 0.5 and "fewer than 30" in seen["title"]
    assert seen["errors"]["dnn"][0] == pytest.approx(Z95 * m["auc_se"]["click"]["all"], rel=1e-12)


def test_models_listing_never_cuts_a_name(monkeypatch, capsys):
    from dynarec.cli import cmd_models
    from dynarec.models import list_models

    class Args:
        json = False

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)   # a narrow terminal
    monkeypatch.setenv("COLUMNS", "80")
    cmd_models(Args())
    out = capsys.readouterr().out
    cells = {c.strip() for line in out.splitlines() for c in line.split("│")[1:2]}
    assert {i.name for i in list_models(kind=None)} <= cells


def _bench_agg():
    """aggregate()-shaped records: (dataset, model, metric, task, domain) -> (mean, std, n)."""
    agg = {("ds", "", "count", "", "all"): (500.0, 0.0, 3), ("ds", "", "count", "", "tiny"): (40.0, 0.0, 3)}
    for m, a in (("dnn", 0.80), ("mmoe", 0.82)):
        for d, pos in (("all", 150.0), ("tiny", 6.0)):
            agg[("ds", m, "auc", "click", d)] = (a, 0.01, 3)
            agg[("ds", m, "auc_se", "click", d)] = (0.02, 0.0, 3)
            agg[("ds", m, "positives", "click", d)] = (pos, 0.0, 3)
    return agg


def test_benchmark_markdown_and_plots_show_counts_intervals_and_the_best(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import dynarec.report as report
    from dynarec.bench.report import markdown_tables, plot_domains

    suite = SimpleNamespace(name="s", description="", seeds=[0, 1, 2], trainer={}, metrics=["auc"])
    md = markdown_tables(suite, _bench_agg(), ["ds"], ["dnn", "mmoe"])
    assert "| model | all (n=500, pos=150) | tiny (n=40, pos=6) ! |" in md
    assert f"| mmoe | **0.8200 ± 0.0100 (CI ± {Z95 * 0.02:.4f})** |" in md and "| dnn | 0.8000 ± 0.0100 (CI" in md
    assert "**Warning:** fewer than 30 positives (or negatives) in tiny" in md
    seen = {}
    monkeypatch.setattr(report, "plot_slice_bars", lambda path, slices, values, **kw: seen.update(kw))
    plot_domains(_bench_agg(), suite, ["ds"], ["dnn", "mmoe"], tmp_path)
    assert seen["baseline"] == 0.5 and seen["tick_labels"][1] == "tiny\n(n=40, pos=6) !"
    assert seen["errors"]["dnn"].tolist() == pytest.approx([Z95 * 0.02] * 2)
