"""Benchmark suites: ``run_suite(suite.yaml, out_dir)`` (``dynarec benchmark``) and ``render_results``."""
from dynarec.bench.harness import render_results, run_suite

__all__ = ["render_results", "run_suite"]
