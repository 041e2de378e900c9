"""The ``current`` marker of an online run: a one-line text file ``RUN/current`` naming the last complete pass
folder (``passes/NNNN``). It is replaced atomically (temp file, fsync, ``os.replace``) only after that pass's
checkpoint and delta are fully written, so a reader (a server, ``--resume``) never sees a half-written pass,
and a run killed at any point leaves the marker on the last good pass."""
from __future__ import annotations

from pathlib import Path

from dynarec.errors import DataError
from dynarec.train.checkpoint import write_atomic

CURRENT = "current"


def pass_dir(k: int) -> str:
    return f"passes/{k:04d}"


def write_current(run: Path, k: int) -> None:
    write_atomic(Path(run) / CURRENT, (pass_dir(k) + "\n").encode())


def read_current(run: Path) -> int | None:
    """The index of the pass ``RUN/current`` names, or None when there is no marker."""
    f = Path(run) / CURRENT
    if not f.exists():
        return None
    text = f.read_text().strip()
    try:
        k = int(text.rsplit("/", 1)[-1])
    except ValueError:
        raise DataError(f"{f}: expected 'passes/NNNN', got {text[:40]!r}") from None
    if not (Path(run) / text / "model.pt").exists():
        raise DataError(f"{f}: names {text}, which has no model.pt")
    return k
