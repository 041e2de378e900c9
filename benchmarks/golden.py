"""Golden file for refactors: for every registered model and conformance variant, the parameter count and the
test metrics after one epoch on a fixed small synthetic set (seed 0), plus the synthetic suite's results.

    python benchmarks/golden.py --write benchmarks/results/golden.json   # before a refactor
    python benchmarks/golden.py --check benchmarks/results/golden.json   # after: every number to 1e-6

``--check`` prints each difference (model, key, before, after) and exits 1 when there is one."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "models"))

VARIANT_SOURCES = "tests/models/test_conformance.py"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, (int, float)):
            out[key] = float(v)
    return out


def record() -> dict:
    from test_conformance import CASES, small_params  # the registry-wide case list and small dimensions

    from dynarec.data.prepare import synthetic_tables
    from dynarec.models import build_model
    from dynarec.train.run import train_model

    torch.set_num_threads(1)
    schema, tables, _ = synthetic_tables(4000, seed=0)
    out = {}
    for case in CASES:
        name, extra = case.values
        params = small_params(name, extra)
        torch.manual_seed(0)
        n_params = sum(p.numel() for p in build_model(name, schema, params).parameters())
        res = train_model(name, schema, tables, params=params,
                          trainer={"epochs": 1, "batch_size": 256, "lr": 1e-2, "embedding_lr": 0.1,
                                   "progress": False}, seed=0)
        out[case.id] = {"params": n_params, **_flat(res.metrics)}
        print(f"{case.id:50s} params {n_params:8d}  auc click {res.metrics['auc']['click']['all']:.6f}", flush=True)
    import csv
    import tempfile

    try:
        from dynarec.bench import run_suite
    except ImportError:  # before the harness was split into suite / runner / report
        from dynarec.bench.harness import run_suite

    with tempfile.TemporaryDirectory() as tmp:
        run_suite(ROOT / "benchmarks" / "suites" / "synthetic.yaml", tmp, progress=False)
        with open(Path(tmp) / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    out["suite:synthetic"] = {"/".join([r["model"], r["seed"], r["metric"], r["task"], r["domain"]]): float(r["value"])
                              for r in rows if r["metric"] in ("auc", "logloss", "count")}
    return out


def compare(before: dict, after: dict, tol: float = 1e-6) -> list[str]:
    diffs = []
    for case in sorted(set(before) | set(after)):
        a, b = before.get(case), after.get(case)
        if a is None or b is None:
            diffs.append(f"{case}: {'missing after' if b is None else 'new'}")
            continue
        for k in sorted(set(a) | set(b)):
            x, y = a.get(k), b.get(k)
            if x is None or y is None or not (math.isclose(x, y, abs_tol=tol) or (math.isnan(x) and math.isnan(y))):
                diffs.append(f"{case} {k}: {x} -> {y}")
    return diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path)
    g.add_argument("--check", type=Path)
    args = ap.parse_args()
    now = record()
    if args.write:
        args.write.write_text(json.dumps(now, indent=1, sort_keys=True))
        print(f"wrote {args.write} ({len(now)} cases)")
        return
    diffs = compare(json.loads(args.check.read_text()), now)
    for d in diffs:
        print(d)
    print(f"{len(diffs)} differences over {len(now)} cases")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
