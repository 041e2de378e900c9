"""Memory-mapped tables of a serving bundle: a large fused feature table is kept OUT of the exported graph as a
raw file the server maps, and its lookup runs on the host before the graph (:mod:`dynarec.serve.lookup`).

Files, per mapped table ``k`` (both listed, with their SHA-256, in the bundle's ``manifest.json``)::

    table_<k>.f32    the rows: float32, row-major, no header (np.memmap / torch.from_file read it in place)
    table_<k>.json   {"format", "layer", "shape": [rows, dim], "dtype": "float32", "sha256"}: the .f32's digest

:func:`write_table` writes them block by block (one block in memory at a time) into a temporary name and
renames it into place; :func:`open_table` maps the rows read-only-on-disk (copy-on-write pages: the process'
memory grows with the rows it touches, not with the table). Which tables: every
:class:`~dynarec.nn.embedding.FeatureEmbedding` whose table holds at least ``map_mb`` MiB
(``dynarec export --map-tables-mb``, default :data:`MAP_MB`); smaller ones stay inside the graph as before.

Example::

    write_table(bundle, 0, "embedding", blocks, rows, dim)   # -> table_0.f32 + table_0.json
    rows = open_table(bundle, 0)                              # np.memmap [rows, dim]
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from dynarec.errors import DataError

MAP_MB = 64.0  # default --map-tables-mb: tables of 64 MiB or more are mapped files, smaller ones stay in the graph
TABLE_FORMAT = "dynarec-mapped-table-1"


def table_files(k: int) -> tuple[str, str]:
    return f"table_{k}.f32", f"table_{k}.json"


def feature_layers(model) -> list[tuple[str, nn.Module]]:
    """(module path, layer) of every FeatureEmbedding of ``model``, each physical table once."""
    from dynarec.nn.embedding import FeatureEmbedding

    out, seen = [], set()
    for path, mod in model.named_modules():
        if isinstance(mod, FeatureEmbedding) and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            out.append((path, mod))
    return out


def big_layers(model, map_mb: float, sizes: dict | None = None) -> list[tuple[str, nn.Module]]:
    """The FeatureEmbedding layers whose table has at least ``map_mb`` MiB (``sizes``: path -> (rows, dim)
    where the model's own table is not materialised)."""
    out = []
    for path, layer in feature_layers(model):
        rows, dim = (sizes or {}).get(path, tuple(layer.weight.weight.shape))
        if rows * dim * 4 >= map_mb * (1 << 20):
            out.append((path, layer))
    return out


def write_table(folder: Path, k: int, layer: str, blocks: Iterable[tuple[int, torch.Tensor]], rows: int,
                dim: int) -> dict:
    """Write mapped table ``k`` of ``folder`` from ``blocks`` ((first row, Float [n, dim]) in row order) -> its
    header. The .f32 is written under a temporary name and renamed when complete, then the header."""
    raw, head = table_files(k)
    tmp = folder / (raw + ".part")
    digest, at = hashlib.sha256(), 0
    with open(tmp, "wb") as f:
        for lo, block in blocks:
            if lo != at or block.dim() != 2 or block.shape[1] != dim:
                raise DataError(f"{layer}: table block at row {lo} does not continue row {at} of width {dim}")
            data = np.ascontiguousarray(block.detach().to(torch.float32).numpy()).tobytes()
            digest.update(data)
            f.write(data)
            at += block.shape[0]
        f.flush()
        os.fsync(f.fileno())
    if at != rows:
        tmp.unlink()
        raise DataError(f"{layer}: the table's blocks hold {at} rows, expected {rows}")
    os.replace(tmp, folder / raw)
    header = {"format": TABLE_FORMAT, "layer": layer, "shape": [rows, dim], "dtype": "float32",
              "sha256": digest.hexdigest()}
    (folder / head).write_text(json.dumps(header, indent=1))
    return header


def weight_blocks(weight: torch.Tensor, block_rows: int = 65_536):
    """(first row, rows) of an in-memory table, block by block (a one-file checkpoint's table)."""
    for lo in range(0, weight.shape[0], block_rows):
        yield lo, weight[lo:lo + block_rows]


def open_table(folder: str | Path, k: int) -> np.memmap:
    """The rows of mapped table ``k`` of bundle ``folder``, mapped copy-on-write (nothing read until touched);
    the file's size checked against its header (the digest is checked with the bundle's manifest)."""
    raw, head = table_files(k)
    f, h = Path(folder) / raw, Path(folder) / head
    try:
        header = json.loads(h.read_text())
        rows, dim = (int(x) for x in header["shape"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{h}: not a readable mapped-table header") from None
    if header.get("format") != TABLE_FORMAT or header.get("dtype") != "float32":
        raise DataError(f"{h}: not a {TABLE_FORMAT} float32 header")
    if not f.is_file() or f.stat().st_size != rows * dim * 4:
        raise DataError(f"{f}: expected {rows} x {dim} float32 ({rows * dim * 4} bytes) as {h.name} says")
    return np.memmap(f, dtype=np.float32, mode="c", shape=(rows, dim))


class RowFile:
    """Rows of mapped table ``k`` of a bundle read with ``os.pread`` (the serving lookup): the process holds the
    rows of the batch only. A memory map would also do, but the kernel maps the cached pages around every
    faulting page (``fault_around_bytes``, 64 KiB: 512 rows of 32 floats), so a map's resident size climbs to
    the whole table after a few thousand random rows, where these reads keep it at the batch's rows."""

    def __init__(self, folder: str | Path, k: int):
        mm = open_table(folder, k)  # the header and the size checked
        self.shape, self.row_bytes = mm.shape, mm.shape[1] * 4
        del mm
        self.fd = os.open(Path(folder) / table_files(k)[0], os.O_RDONLY)

    def __del__(self):
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted, distinct: what ``torch.unique`` gives), consecutive ones read together."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.shape[1]), dtype=np.float32)
        if not len(idx):
            return out
        if (idx[0] < 0 or idx[-1] >= self.shape[0]):
            raise IndexError(f"row {idx[0] if idx[0] < 0 else idx[-1]} of a table of {self.shape[0]} rows")
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(idx)]):
            data = os.pread(self.fd, int(hi - lo) * self.row_bytes, int(idx[lo]) * self.row_bytes)
            out[lo:hi] = np.frombuffer(data, dtype=np.float32).reshape(hi - lo, self.shape[1])
        return out


def set_table(layer, rows) -> None:
    """Make ``layer``'s physical table ``rows`` (a mapped array, or a placeholder tensor), without a copy."""
    t = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(rows)
    layer.weight.weight = nn.Parameter(t, requires_grad=False)
