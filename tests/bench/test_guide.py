"""``dynarec models --guide`` (issue 29): the shipped guide's numbers are the ones the studies' results JSON
give (recomputed with the studies' own summarise), docs/model_choice.md prints the very same numbers, and
the CLI prints each of them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dynarec.cli import main
from dynarec.guide import gain_text, load_guide

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_shipped_guide_equals_the_results_json():
    guide_data = pytest.importorskip("guide_data")
    # json round trip: the shipped file went through json too; the numbers are identical floats (no tolerance)
    assert load_guide() == json.loads(json.dumps(guide_data.build()))


def test_model_choice_doc_shows_the_same_numbers():
    doc = (ROOT / "docs" / "model_choice.md").read_text()
    guide = [ln for ln in doc.splitlines() if ln.startswith("| ")]
    for r in load_guide()["rows"]:
        row = next((ln for ln in guide if ln.startswith(f"| {r['setting']} |")), None)
        assert row is not None, r["setting"]
        assert f"**{r['try_first']}**" in row
        for e in r["evidence"]:
            assert gain_text(e) in row, (r["setting"], e["label"])


def test_cli_prints_every_number(capsys):
    assert main(["models", "--guide"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for r in load_guide()["rows"]:
        assert r["try_first"].split()[0] in flat
        for e in r["evidence"]:
            assert gain_text(e) in flat, e["label"]
