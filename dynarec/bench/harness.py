"""``dynarec benchmark --suite FILE [--check] [--out DIR]``: load a suite (:mod:`dynarec.bench.suite`), run
it (:mod:`dynarec.bench.runner`), write its report and check its bands (:mod:`dynarec.bench.report`).

Every dataset is prepared once with a fixed split (``split_seed``), so all models and seeds see the same
train / valid / test rows; each (dataset, model, seed) run trains with early stopping on valid and is
evaluated on test. Outputs in ``out``: ``results.csv``, ``results.md``, ``<metric>_<dataset>_<task>.png``,
``expected.suggested.csv`` (the measured means with a tolerance of max(3 std, 0.005))."""
from __future__ import annotations

from pathlib import Path

from dynarec.bench.report import check_expected, read_expected, read_results, write_outputs, write_results
from dynarec.bench.runner import BAYES, run_all
from dynarec.bench.suite import expected_path, load_suite


def run_suite(suite_yaml_path: str | Path, out_dir: str | Path, check: bool = False, progress: bool = True,
              console=None) -> int:
    """Run a suite and write its outputs to ``out_dir``; -> exit code (0 ok, 1 a run failed or, with
    ``check``, a metric left its expected band (printed))."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(stderr=True)
    path = Path(suite_yaml_path)
    suite, datasets, models = load_suite(path)
    expected = read_expected(expected_path(suite, path)) if check else None  # fail before spending the budget
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = run_all(suite, datasets, models, path.resolve().parent, out, progress, console)
    write_results(out / "results.csv", run.records)
    agg, plots = write_outputs(out, suite, run.records, [d.name for d in datasets], _model_names(models, run.records),
                               run.elapsed)
    console.print(f"suite {suite.name}: {len(run.records)} measurements from {run.done} / {run.total} runs in "
                  f"{run.elapsed:.0f} s -> {out / 'results.csv'}, {out / 'results.md'}, {len(plots)} plot(s)")
    code = 0
    for f in run.failures:
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


def render_results(suite_yaml_path: str | Path, out_dir: str | Path) -> Path:
    """Rebuild ``results.md``, the plots and ``expected.suggested.csv`` from an existing ``results.csv``
    (no training); -> the markdown path."""
    suite, datasets, models = load_suite(suite_yaml_path)
    out = Path(out_dir)
    records = read_results(out / "results.csv")
    old = (out / "results.md").read_text() if (out / "results.md").exists() else ""
    wall = [line for line in old.splitlines() if line.startswith("Wall time:")]
    elapsed = float(wall[0].split()[2]) if wall else None
    write_outputs(out, suite, records, [d.name for d in datasets], _model_names(models, records), elapsed)
    return out / "results.md"


def _model_names(models, records: list[dict]) -> list[str]:
    """The suite's display names, then the reference row when the records have one."""
    return [m.name for m in models] + ([BAYES] if any(r["model"] == BAYES for r in records) else [])
