"""What a served path is, read without loading a model: a bundle (``manifest.json``, checksums verified), an
online run folder (``online.json``; its ``current`` marker names the pass served) or one pass folder (its
``serving.pt``, format ``dynarec-serving-1``, written by :mod:`dynarec.online.serving`), and where a watched
folder's newest bundle is. The reader half of the serving file; :mod:`dynarec.serve.loader` builds on it."""
from __future__ import annotations

import json
from pathlib import Path

from dynarec.errors import DataError, DynarecError
from dynarec.online.serving import FORMAT, RUN_FILE, SERVING


# ---- bundles -------------------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict:
    """The manifest of bundle folder ``path``; every listed file's sha256 checked."""
    from dynarec.outdir import file_sha256
    from dynarec.serve.export import BUNDLE_FORMAT

    p = Path(path)
    f = p / "manifest.json"
    if not f.exists():
        raise DynarecError(f"{p}: not a dynarec bundle (no manifest.json; write one with `dynarec export`)")
    try:
        m = json.loads(f.read_text())
    except ValueError:
        raise DynarecError(f"{f}: not valid JSON (a truncated bundle?)") from None
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise DynarecError(f"{f}: not a {BUNDLE_FORMAT} manifest")
    for name, digest in m.get("files", {}).items():
        q = p / name
        if not q.exists():
            raise DynarecError(f"{q}: listed in the manifest but missing")
        if file_sha256(q) != digest:
            raise DynarecError(f"{q}: checksum mismatch (the file changed after export)")
    return m


def newest_bundle(watch: Path) -> Path | None:
    """``watch/current`` (a file naming a sub-folder, or a link), else the newest sub-folder with a manifest."""
    cur = watch / "current"
    if cur.is_symlink() or cur.is_dir():
        return cur.resolve() if (cur / "manifest.json").exists() else None
    if cur.is_file():
        p = watch / cur.read_text().strip()
        return p if (p / "manifest.json").exists() else None
    subs = [p for p in watch.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists()]
    return max(subs, key=lambda p: (p / "manifest.json").stat().st_mtime) if subs else None


# ---- online runs and passes ----------------------------------------------------------------------------
def read_serving(f: Path) -> tuple[dict, str]:
    """(the serving file ``f``, its payload's sha256), the checksum verified; a one-line DataError naming the
    file otherwise."""
    from dynarec.train.checkpoint import read_sealed
    from dynarec.train.streamed_checkpoint import is_streamed, read_streamed, recorded_digest

    corrupt = "the serving file is corrupted (the run's model.pt of the same pass holds the same weights)"
    if is_streamed(f):  # written from the tensors' storage (sha256 trailer)
        return read_streamed(f, f"{FORMAT} file", FORMAT, corrupt), recorded_digest(f)
    inner, digest = read_sealed(f, FORMAT, f"{FORMAT} file", corrupt)
    if not isinstance(inner, dict) or inner.get("format") != FORMAT or "state_dict" not in inner:
        raise DataError(f"{f}: not a {FORMAT} file")
    return inner, digest


def is_online(path: str | Path) -> bool:
    """Whether ``path`` is an online run folder or one of its pass folders (or a pass's serving file)."""
    p = Path(path)
    return (p / RUN_FILE).is_file() or (p / SERVING).is_file() or (p.name == SERVING and p.is_file())


def pass_folder(path: str | Path) -> Path:
    """The pass folder to serve: the one ``RUN/current`` names for a run folder, else ``path`` itself (a pass
    folder, or its ``serving.pt``). One-line DataErrors name what is missing."""
    p = Path(path)
    if p.name == SERVING and p.is_file():
        return p.parent
    if (p / RUN_FILE).is_file():
        cur = p / "current"
        if not cur.is_file():
            raise DataError(f"{cur}: missing: the online run has no completed pass yet")
        text = cur.read_text().strip()
        if not text.startswith("passes/") or "/.." in text:
            raise DataError(f"{cur}: expected 'passes/NNNN', got {text[:40]!r}")
        d = p / text
        if not (d / SERVING).is_file():
            raise DataError(f"{d / SERVING}: missing (the pass named by {cur} has no serving file)")
        return d
    if not (p / SERVING).is_file():
        raise DataError(f"{p / SERVING}: missing: {p} is neither an online run folder nor one of its pass folders")
    return p


def run_of(path: str | Path) -> Path | None:
    """The online run folder ``path`` names (followed through its ``current`` marker), or None (a pass)."""
    p = Path(path)
    return p if (p / RUN_FILE).is_file() else None


def current_text(run: Path) -> str | None:
    """``RUN/current``'s text (a cheap read), None when absent or unreadable."""
    try:
        return (Path(run) / "current").read_text().strip() or None
    except OSError:
        return None


def describe(folder: Path, blob: dict) -> dict:
    """A short JSON-able description of a served pass (what /metadata adds)."""
    return {"pass": blob.get("pass"), "file": blob.get("file"), "folder": str(folder),
            "dynamic": {e["feature"]: (int(e["keys"].numel()) if e["kind"] == "map" else e["kind"])
                        for e in blob["dynamic"]}}
