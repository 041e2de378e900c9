"""The benchmark harness on a tiny synthetic suite: outputs, mean ± std aggregation, --check bands."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from dynarec.bench import render_results, run_suite
from dynarec.bench.report import check_expected
from dynarec.bench.runner import PeakMemory, aggregate
from dynarec.bench.suite import load_suite
from dynarec.errors import ConfigError

TINY = """
name: tiny
seeds: [0, 1, 2]
datasets:
  - {name: syn, dataset: synthetic, rows: 1500, split_seed: 3}
models:
  - {model: dnn, params: {embed_dim: 4, hidden: [16]}}
  - {model: dnn, name: dnn-bad, params: {no_such_param: 1}}
trainer: {epochs: 1, batch_size: 256, patience: 1}
metrics: [auc]
expected: {expected}
threads: 1
"""


def write_suite(tmp: Path, expected: str = "exp.csv", bad_model: bool = False) -> Path:
    text = TINY.replace("{expected}", expected)
    if not bad_model:
        text = "\n".join(line for line in text.splitlines() if "dnn-bad" not in line)
    p = tmp / f"tiny-{expected.split('.')[0]}-{int(bad_model)}.yaml"
    p.write_text(text)
    return p


def run(path: Path, out: Path, check: bool = False) -> tuple[int, str]:
    buf = io.StringIO()
    code = run_suite(path, out, check=check, progress=False, console=Console(file=buf, width=200))
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    suite = write_suite(tmp, bad_model=True)
    code, log = run(suite, tmp / "out")
    return tmp, code, log, suite


def test_outputs_and_mean_std(first_run):
    tmp, code, log, suite = first_run
    out = tmp / "out"
    # the misconfigured model fails (exit 1, named) without hiding the good model's results
    assert code == 1 and "dnn-bad" in log and "no_such_param" in log
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["model"] for r in rows} == {"dnn", "bayes-optimal"}
    # synthetic data: the true probabilities give a reference row, and they beat a 1-epoch model
    bayes = [float(r["value"]) for r in rows if r["model"] == "bayes-optimal" and r["seed"] == "-1"
             and (r["metric"], r["task"], r["domain"]) == ("auc", "click", "all")]
    rows = [r for r in rows if r["model"] == "dnn"]
    auc_all = [float(r["value"]) for r in rows if (r["metric"], r["task"], r["domain"]) == ("auc", "click", "all")]
    assert sorted(int(r["seed"]) for r in rows if (r["metric"], r["task"], r["domain"]) == ("auc", "click", "all")) \
        == [0, 1, 2]
    assert len(set(auc_all)) > 1  # seeds differ (init / batch order), the split does not
    assert len(bayes) == 1 and bayes[0] > max(auc_all)
    for m in ("train_rows_per_s", "infer_rows_per_s", "peak_mem_mb", "params"):
        vals = [float(r["value"]) for r in rows if r["metric"] == m]
        assert len(vals) == 3 and all(v >= 0 for v in vals) and (m == "peak_mem_mb" or min(vals) > 0)
    # the markdown cell is the mean ± sample std of the three seeds, then the mean 95 % DeLong half-width
    md = (out / "results.md").read_text()
    se = np.mean([float(r["value"]) for r in rows if (r["metric"], r["task"], r["domain"]) == ("auc_se", "click", "all")])
    cell = f"{np.mean(auc_all):.4f} ± {np.std(auc_all, ddof=1):.4f} (CI ± {1.959963984540054 * se:.4f})"
    assert f"| dnn | {cell} |" in md and f"| bayes-optimal | {bayes[0]:.4f} (CI ± " in md
    n_domains = sum(1 for r in rows if r["metric"] == "count" and r["domain"] != "all") // 3
    pos = next(int(float(r["value"])) for r in rows if (r["metric"], r["task"], r["domain"]) == ("positives", "click", "all"))
    assert n_domains >= 5 and f"| model | all (n=150, pos={pos}) | d0 (n=" in md  # 1,500 rows -> 150 test rows
    assert "**Warning:** fewer than 30 positives" in md  # the conversion task has a handful per domain
    assert "train rows/s" in md and "parameters" in md
    # tables and plots can be rebuilt from results.csv alone
    (out / "results.md").unlink()
    render_results(suite, out)
    assert (out / "results.md").read_text().split("\nWall time")[0] == md.split("\nWall time")[0]
    pngs = sorted(out.glob("auc_syn_*.png"))
    assert [p.name for p in pngs] == ["auc_syn_click.png", "auc_syn_conversion.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    sugg = list(csv.DictReader(open(out / "expected.suggested.csv")))
    assert any(r["metric"] == "syn/dnn/auc/click/all" for r in sugg)


def test_check_fails_out_of_band_and_passes_in_band(first_run):
    tmp, _, _, _ = first_run
    rows = [r for r in csv.DictReader(open(tmp / "out" / "results.csv")) if r["model"] == "dnn"]
    mean = np.mean([float(r["value"]) for r in rows if (r["metric"], r["task"], r["domain"]) == ("auc", "click", "all")])
    (tmp / "bad.csv").write_text(f"metric,expected,tolerance\nsyn/dnn/auc/click/all,{mean + 0.2:.4f},0.01\n")
    code, log = run(write_suite(tmp, "bad.csv"), tmp / "out-bad", check=True)
    assert code == 1 and "OUT OF BAND" in log and "syn/dnn/auc/click/all" in log
    # same split, same seeds -> the same means: a band around the first run's mean holds
    (tmp / "good.csv").write_text("metric,expected,tolerance\n# comment lines are allowed\n"
                                  f"syn/dnn/auc/click/all,{mean:.4f},0.01\nsyn/dnn/params,{_params(rows)},0\n")
    code, log = run(write_suite(tmp, "good.csv"), tmp / "out-good", check=True)
    assert code == 0 and "within their bands" in log


def _params(rows) -> int:
    return int(float(next(r["value"] for r in rows if r["metric"] == "params")))


def test_check_expected_unit():
    agg = aggregate([{"dataset": "d", "model": "m", "seed": s, "metric": "auc", "task": "t", "domain": "all",
                      "value": v} for s, v in enumerate([0.70, 0.72, 0.74])])
    assert agg[("d", "m", "auc", "t", "all")][:2] == pytest.approx((0.72, 0.02))
    assert check_expected(agg, [("d/m/auc/t/all", 0.73, 0.011)]) == []
    assert check_expected(agg, [("d/m/auc/t/all", 0.73, 0.009)])[0].startswith("d/m/auc/t/all: 0.7200 outside")
    assert "not measured" in check_expected(agg, [("d/m/auc/t/d9", 0.7, 0.1)])[0]


def test_suite_validation(tmp_path):
    def bad(text: str, match: str):
        p = tmp_path / "s.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_suite(p)

    ok = "datasets: [{dataset: synthetic}]\nmodels: [dnn]\n"
    bad(ok + "seeds: [0, 1]\n", "seeds: a suite needs >= 3")
    bad(ok + "trainer: {epoch: 1}\n", "unknown key 'epoch'.*epochs")
    bad(ok + "metrics: [acc]\n", "unknown metric 'acc'")
    bad("datasets: [{dataset: synthetic}]\nmodels: [dnnn]\n", "unknown model 'dnnn'")
    bad("datasets: [{dataset: movielen, raw: x}]\nmodels: [dnn]\n", "unknown dataset 'movielen'")
    bad(ok + "budget: 3\n", "unknown key 'budget'")
    p = tmp_path / "s.yaml"
    p.write_text(ok)
    suite, ds, ms = load_suite(p)
    assert suite.seeds == [0, 1, 2] and ds[0].name == "synthetic" and ms[0].name == "dnn"


def test_peak_memory_sees_torch_allocations():
    import torch

    with PeakMemory() as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MB outside Python's allocator (tracemalloc would miss it)
        time.sleep(0.05)  # let the 5 ms sampler see it
        del x
    assert mem.peak_mb > 40


def test_checked_in_suites_parse():
    root = Path(__file__).resolve().parents[2] / "benchmarks" / "suites"
    for name in ("synthetic", "douban", "movielens-100k"):
        suite, ds, ms = load_suite(root / f"{name}.yaml")
        assert len(suite.seeds) >= 3 and ms
    assert (root / "synthetic.expected.csv").exists()


def test_missing_raw_data_fails_clearly(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("datasets: [{name: ml, dataset: movielens, raw: does/not/exist}]\nmodels: [dnn]\n")
    code, log = run(p, tmp_path / "out")
    assert code == 1 and "raw data" in log and "not found" in log and "0 / 3 runs" in log
    assert (tmp_path / "out" / "results.csv").read_text().startswith("dataset,model,seed,metric")
