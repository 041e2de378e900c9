"""Builds ``dynarec/guide.json``, the model-choice guide that ``dynarec models --guide`` prints and
docs/model_choice.md shows (issue 29): every number is recomputed here from the studies' results JSON in
benchmarks/results/ with the studies' own ``summarise`` (seed mean, 95 % interval), so the guide cannot drift
from the runs. Edit ``ROWS`` (the advice and which runs back it), then:

    python benchmarks/guide_data.py --write dynarec/guide.json
    python benchmarks/guide_data.py --check dynarec/guide.json   # exit 1 when the shipped file differs
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from study_common import fail, summarise

RESULTS = Path(__file__).resolve().parent / "results"
SCALE = ("3 epochs, default model keys, seeds as listed per line; see docs/model_choice.md for the exact runs")


def ev(label, stems, model, slice_, ref="gain", **match):
    """One backing number: ``model``'s gain over dnn (AUC points) on ``slice_`` of every run in the result
    files ``stems`` whose fields equal ``match`` (e.g. dataset, domain, fraction)."""
    return {"label": label, "results": list(stems), "model": model, "slice": slice_, "key": ref, "match": match}


RED = "sparse_domains_reduced"
D2 = "sparse_domains_synthetic_d2_reduced"
ROWS = [
    {"setting": "a few domains that behave alike (age groups, book vs music), down to ~200 training rows in the "
                "smallest",
     "try_first": "dnn",
     "evidence": [ev("apg_dnn, ML-100K age<25 at 1 % (212 rows)", [RED], "apg_dnn", "age<25", fraction=0.01),
                  ev("pepnet, same", [RED], "pepnet", "age<25", fraction=0.01),
                  ev("star (new PN statistics), ML-100K age<25 100 %", ["sparse_domains_ml100k_pnfix"], "star",
                     "age<25", fraction=1.0)]},
    {"setting": "one tiny real domain (Douban music: 2,496 rows) next to big ones",
     "try_first": "dnn or pepnet",
     "evidence": [ev("pepnet, Douban music 100 %", ["sparse_domains_douban_reduced"], "pepnet", "music", fraction=1.0),
                  ev("apg_dnn, same", ["sparse_domains_douban_reduced"], "apg_dnn", "music", fraction=1.0)]},
    {"setting": "many cold users (0–5 interactions), default keys",
     "try_first": "dnn (pepnet is equal)",
     "evidence": [ev("pepnet, Douban GA-DTCDR 0–5 bucket (4,159 rows)", ["cold_users_reduced"], "pepnet", "0-5",
                     dataset="douban_gadtcdr"),
                  ev("apg_dnn, same", ["cold_users_reduced"], "apg_dnn", "0-5", dataset="douban_gadtcdr")]},
    {"setting": "a domain known to respond differently (its own feature weights), 500–10,000 rows in it",
     "try_first": "apg_dnn",
     "evidence": [ev("apg_dnn, synthetic d4 100 % (3,047 rows)", ["sparse_domains_synthetic_reduced"], "apg_dnn",
                     "d4", fraction=1.0),
                  ev("apg_dnn, synthetic d2 100 % (10,318 rows)", [D2], "apg_dnn", "d2", fraction=1.0),
                  ev("apg_dnn, synthetic d2 5 % (516 rows)", [D2], "apg_dnn", "d2", fraction=0.05),
                  ev("star (new PN statistics), synthetic d2 100 %", ["sparse_domains_synthetic_d2_pnfix"], "star",
                     "d2", fraction=1.0)]},
    {"setting": "such a domain with only ~150 rows",
     "try_first": "dnn (nothing can be told apart)",
     "evidence": [ev("apg_dnn, synthetic d4 5 % (152 rows)", ["sparse_domains_synthetic_reduced"], "apg_dnn", "d4",
                     fraction=0.05),
                  ev("pepnet, same", ["sparse_domains_synthetic_reduced"], "pepnet", "d4", fraction=0.05)]},
    {"setting": "STAR", "try_first": "star with the default keys now (PN statistics fixed)",
     "evidence": [ev("star with the old moving-average PN, synthetic d2 100 %", ["sparse_domains_synthetic_d2_pnfix"],
                     "star+pn_stats_rows=0", "d2", fraction=1.0),
                  ev("star (new default), same", ["sparse_domains_synthetic_d2_pnfix"], "star", "d2", fraction=1.0)]},
    {"setting": "number of tasks, more than 3 domains", "try_first": "no evidence yet", "evidence": []},
]


def number(e: dict) -> dict:
    """The seed-summarised gain of one evidence spec (mean, lo, hi in AUC points; seeds)."""
    entries = []
    for stem in e["results"]:
        path = RESULTS / f"{stem}.json"
        if not path.exists():
            fail(f"guide: no results file {path} (run the study first)")
        for r in json.loads(path.read_text())["runs"].values():
            if all(r.get(k) == v for k, v in e["match"].items()) and e["model"] in r["models"]:
                entries.append(r["models"][e["model"]][e["slice"]])
    s = summarise(entries, e["key"], e["key"] + "_var")
    if not s["seeds"]:
        fail(f"guide: no run of {e['model']} on {e['slice']} {e['match']} in {e['results']}")
    return {"mean": 100 * s["mean"], "lo": 100 * s["lo"], "hi": 100 * s["hi"], "seeds": s["seeds"]}


def build() -> dict:
    rows = [{"setting": r["setting"], "try_first": r["try_first"],
             "evidence": [{"label": e["label"], "source": e["results"][0], **number(e)}
                          for e in r["evidence"]]} for r in ROWS]
    return {"scale": SCALE, "unit": "gain over dnn in AUC points (x100), seed mean [95 % interval]", "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write")
    g.add_argument("--check")
    a = ap.parse_args(argv)
    data = build()
    if a.write:
        Path(a.write).write_text(json.dumps(data, indent=1) + "\n")
        return 0
    shipped = json.loads(Path(a.check).read_text())
    if shipped != json.loads(json.dumps(data)):
        print(f"{a.check} differs from the results JSON: rerun with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
