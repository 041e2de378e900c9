"""One output-folder discipline for every verb that writes a folder (prepared data, training runs, bundles):
the new content is written into a sibling work folder and swapped into place only when it is complete, so a
failing or interrupted run never destroys the good folder that was there, and a folder never mixes two runs
(weights, config, metrics and log always describe the same run; no stale files of an earlier dataset).

A non-empty existing folder is replaced only if it is one of ours (it holds one of ``markers``); anything
else is refused with a one-line error, so ``--out ~`` can never delete a home directory."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from dynarec.errors import DynarecError


def check_out(out: str | Path, markers: tuple[str, ...], what: str) -> Path:
    """``out`` as a Path, or a DynarecError when it is a file or a foreign non-empty folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DynarecError(f"{out}: exists and is a file; --out must name a folder")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in markers):
        raise DynarecError(f"{out}: exists, is not empty and is not a {what} folder (no {' / '.join(markers)}); "
                           "choose another --out")
    return out


def work_dir(out: Path) -> Path:
    """The sibling folder a run into ``out`` writes to until it succeeds (also what ``--resume`` reads)."""
    return out.parent / f".{out.name}.partial"


@contextlib.contextmanager
def atomic_dir(out: str | Path, markers: tuple[str, ...], what: str, keep_on_error: bool = False):
    """``with atomic_dir(out, ("schema.json",), "prepared data") as tmp:`` write into ``tmp``; on success
    ``tmp`` replaces ``out``; on error ``out`` is untouched and ``tmp`` is removed (kept with
    ``keep_on_error``, for resuming a crashed run)."""
    out = check_out(out, markers, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = work_dir(out)
    if not keep_on_error:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        if not keep_on_error:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, out)


def swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames (the old folder is moved aside first, then deleted)."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks (a file of any size in bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync and rename."""
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
