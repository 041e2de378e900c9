"""The model-choice guide in the terminal (``dynarec models --guide``, issue 29): which model to try first
for a setting, each line with the study numbers that back it — gain over dnn in AUC points with its 95 %
interval. It reads ``guide.json`` shipped in the package, which ``benchmarks/guide_data.py`` builds from the
studies' results JSON; docs/model_choice.md shows the same numbers.

Example::

    from dynarec.guide import guide_table, load_guide
    table_console().print(guide_table(load_guide()))
"""
from __future__ import annotations

import json
from importlib import resources


def load_guide() -> dict:
    """The shipped guide: ``{"scale", "unit", "rows": [{"setting", "try_first", "evidence": [...]}]}``."""
    return json.loads(resources.files("dynarec").joinpath("guide.json").read_text())


def gain_text(e: dict) -> str:
    """'+8.23 [+3.04, +13.42]' (the format of docs/model_choice.md)."""
    return f"{e['mean']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"


def significant(e: dict) -> bool:
    """The interval excludes 0."""
    return e["lo"] > 0 or e["hi"] < 0


def guide_table(guide: dict):
    """A rich Table: setting | try first | backed by (one line per number, bold where the interval excludes 0)."""
    from rich.table import Table

    t = Table(title="Which model to try first (docs/model_choice.md)", caption=f"{guide['unit']}; {guide['scale']}",
              show_lines=True)
    t.add_column("your setting", overflow="fold")
    t.add_column("try first", style="bold")
    t.add_column("backed by", overflow="fold")
    for r in guide["rows"]:
        lines = [f"{e['label']}: " + (f"[bold]{gain_text(e)}[/bold]" if significant(e) else gain_text(e))
                 + f" ({e['seeds']} seeds)" for e in r["evidence"]] or ["—"]
        t.add_row(r["setting"], r["try_first"], "\n".join(lines))
    return t
