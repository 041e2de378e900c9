"""data/ is the bottom floor of the package: its modules import only data/, errors, outdir and yamlio (never
datasets/, retrieval/, train/, models/, serve/ or online/, which build on it), counting imports inside
functions -- so it can be read, tested and reused alone, and no import circle can run through it."""
from __future__ import annotations

import ast
from pathlib import Path

import dynarec

ALLOWED = ("dynarec.data", "dynarec.errors", "dynarec.outdir", "dynarec.yamlio")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out += [node.module] if node.module != "dynarec" else [f"dynarec.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.append("dynarec.data")  # a relative import stays inside data/
    return out


def test_data_modules_import_nothing_above_data():
    root = Path(dynarec.__file__).parent / "data"
    up = {f"{p.name}: {m}" for p in root.glob("*.py") for m in _imports(p)
          if m.startswith("dynarec") and not any(m == a or m.startswith(a + ".") for a in ALLOWED)}
    assert not up, sorted(up)


def test_leave_last_out_is_the_splits_own():
    from dynarec.data import split
    from dynarec.retrieval import data

    assert data.leave_last_out is split.leave_last_out and split.leave_last_out.__module__ == "dynarec.data.split"
