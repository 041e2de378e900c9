"""docs/architecture.md names only files that exist: every backticked path (a token with a '/' or a file
name with an extension) resolves from the repository root, or, for a bare file name, to a module under
dynarec/ (placeholders such as `<name>` and output files written by runs are not paths of the repository)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
OUTPUTS = {"model.pt", "metrics.json", "schema.json", "encoders.json", "config.json", "log.csv", "last.pt",
           "retrieval.pt", "gate_usage.json", "serving.pt"}  # files a run writes, named as such


def cited(text: str) -> list[str]:
    out = []
    for tok in re.findall(r"`([^`\s]+)`", text):
        tok = tok.rstrip(".,;:")
        if "<" in tok or "{" in tok or tok.startswith("--") or "=" in tok:
            continue
        if tok.endswith("/") or re.search(r"\.(py|md|json|csv|yaml|yml|pt)$", tok):
            out.append(tok)
    return out


def exists(tok: str) -> bool:
    if tok in OUTPUTS:
        return True
    if tok.startswith("../"):  # beside the project (shared tools): named, not shipped
        return True
    if "/" in tok.rstrip("/"):
        return (ROOT / tok).exists()
    if tok.endswith("/"):
        return (ROOT / "dynarec" / tok).is_dir()
    return any((ROOT / "dynarec").rglob(tok)) or (ROOT / tok).exists() or (ROOT / "docs" / tok).exists()


def test_every_file_the_architecture_page_cites_exists():
    paths = cited(DOC.read_text(encoding="utf-8"))
    assert len(paths) > 50  # the page names the real files of every floor
    missing = sorted({p for p in paths if not exists(p)})
    assert not missing, f"docs/architecture.md cites files that do not exist: {missing}"


def test_the_check_finds_a_missing_file():
    assert cited("see `dynarec/train/nowhere.py` and `dynarec/train/run.py`") == ["dynarec/train/nowhere.py",
                                                                               "dynarec/train/run.py"]
    assert not exists("dynarec/train/nowhere.py") and not exists("DESIGN.md") and exists("dynarec/train/run.py")
