"""One tensor of a ``torch.distributed.checkpoint`` folder (the ``shards/`` of a sharded checkpoint,
:mod:`dynarec.train.sharded_checkpoint`) read ROW BLOCK BY ROW BLOCK, without materialising it — nor any
one of its shards.

DCP's own :class:`~torch.distributed.checkpoint.FileSystemReader` gives the metadata: the tensor's global
shape and dtype, its chunks (each rank's shard: ``offsets`` and ``sizes`` in the global tensor) and, per
chunk, where its bytes are (file, byte offset, length). DCP's read path then ``torch.load``-s a whole chunk
(a table-wise shard is the whole table), so the bytes are read here instead: each chunk is one
``torch.save`` blob (a zip whose tensor storage is one stored, uncompressed record), located with
:mod:`zipfile` inside the chunk's byte range; a block of rows of a chunk is then one contiguous read
(row-major). Memory: one block. A chunk this cannot read that way (a storage larger than the chunk, a
compressed or transformed record, a dtype other than the tensor's) is a :class:`~dynarec.errors.DataError`
naming the file.

Example::

    src = DcpTensor("runs/big/shards", "emb.ebc.embedding_bags.user_id.weight")
    for first_row, block in src.blocks(65536):   # Float [<=65536, dim]
        ...
"""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from dynarec.errors import DataError

BLOCK_ROWS = 65_536


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``f`` from ``start`` (what :mod:`zipfile` reads)."""

    def __init__(self, f, start: int, length: int):
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def seekable(self):
        return True

    def readable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, off, whence=0):
        self.pos = {0: off, 1: self.pos + off, 2: self.length + off}[whence]
        return self.pos

    def read(self, n=-1):
        n = self.length - self.pos if n is None or n < 0 else min(n, self.length - self.pos)
        self.f.seek(self.start + self.pos)
        data = self.f.read(max(n, 0))
        self.pos += len(data)
        return data


def _record_offset(f, start: int, length: int, nbytes: int, where: str) -> int:
    """Absolute byte offset, in ``f``, of the one tensor storage record of the torch.save blob at
    [start, start + length)."""
    win = _Window(f, start, length)
    try:
        zf = zipfile.ZipFile(win)
    except zipfile.BadZipFile:
        raise DataError(f"{where}: not a torch.save record (cannot stream it)") from None
    data = [i for i in zf.infolist() if "/data/" in i.filename]
    if len(data) != 1 or data[0].compress_type != zipfile.ZIP_STORED or data[0].file_size != nbytes:
        raise DataError(f"{where}: the chunk's storage is not one plain record of {nbytes} bytes (cannot stream it)")
    info = data[0]
    win.seek(info.header_offset)
    head = win.read(30)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return start + info.header_offset + 30 + name_len + extra_len


class DcpTensor:
    """A 2-D tensor ``key`` of the DCP folder ``folder``: :attr:`shape`, :attr:`dtype`, :meth:`blocks`."""

    def __init__(self, folder: str | Path, key: str, metadata=None):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

        self.folder = Path(folder)
        md = metadata if metadata is not None else dcp.FileSystemReader(str(self.folder)).read_metadata()
        tmd = md.state_dict_metadata.get(key)
        if not isinstance(tmd, TensorStorageMetadata) or len(tmd.size) != 2:
            raise DataError(f"{self.folder}: no 2-D tensor '{key}' in the checkpoint")
        self.key, self.shape, self.dtype = key, tuple(tmd.size), tmd.properties.dtype
        self.itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.chunks = []  # (row0, col0, rows, cols, file, absolute byte offset of the storage)
        for c in sorted(tmd.chunks, key=lambda c: (c.offsets[0], c.offsets[1])):
            info = md.storage_data[MetadataIndex(key, c.offsets)]
            f = self.folder / info.relative_path
            where = f"{f} ({key}, chunk at {list(c.offsets)})"
            if getattr(info, "transform_descriptors", None):
                raise DataError(f"{where}: the chunk is transformed ({info.transform_descriptors}; cannot stream it)")
            rows, cols = int(c.sizes[0]), int(c.sizes[1])
            with open(f, "rb") as fh:
                at = _record_offset(fh, int(info.offset), int(info.length), rows * cols * self.itemsize, where)
            self.chunks.append((int(c.offsets[0]), int(c.offsets[1]), rows, cols, f, at))
        cover = sum(r * c for _, _, r, c, _, _ in self.chunks)
        if cover != self.shape[0] * self.shape[1]:
            raise DataError(f"{self.folder}: the chunks of '{key}' cover {cover} of {self.shape[0] * self.shape[1]} "
                            "numbers")

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.itemsize

    def read_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows [lo, hi) of the tensor (each overlapping chunk's rows read with one contiguous read)."""
        out = np.empty((hi - lo, self.shape[1]), dtype=torch.empty((), dtype=self.dtype).numpy().dtype)
        for r0, c0, rows, cols, f, at in self.chunks:
            a, b = max(lo, r0), min(hi, r0 + rows)
            if a >= b:
                continue
            with open(f, "rb") as fh:
                fh.seek(at + (a - r0) * cols * self.itemsize)
                part = np.fromfile(fh, dtype=out.dtype, count=(b - a) * cols)
            out[a - lo:b - lo, c0:c0 + cols] = part.reshape(b - a, cols)
        return torch.from_numpy(out)

    def blocks(self, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows [<= block_rows, dim]) from the first row to the last."""
        for lo in range(0, self.shape[0], block_rows):
            yield lo, self.read_rows(lo, min(lo + block_rows, self.shape[0]))


def fused_blocks(folder: str | Path, meta: dict, layer: str, rows: int, block_rows: int = BLOCK_ROWS,
                 fallback_key: str | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """The fused table of ``layer`` (``rows`` rows) of a sharded checkpoint whose ``meta.pt`` is ``meta``, block
    by block: its TorchRec tables (``meta["tables"]``, each at its offset), in row order; a layer with none
    there was kept whole under ``fallback_key`` (its state-dict name) and is read from that key."""
    import torch.distributed.checkpoint as dcp

    md = dcp.FileSystemReader(str(folder)).read_metadata()
    parts = sorted((t["offset"], k, t["rows"]) for k, t in meta.get("tables", {}).items() if t["layer"] == layer)
    if not parts:
        yield from DcpTensor(folder, fallback_key, md).blocks(block_rows)
        return
    at = 0
    for off, key, n in parts:
        if off != at:
            raise DataError(f"{folder}: rows {at}..{off} of the table of {layer} are in no TorchRec table")
        src = DcpTensor(folder, key, md)
        for lo, block in src.blocks(block_rows):
            yield off + lo, block
        at = off + n
    if at != rows:
        raise DataError(f"{folder}: the TorchRec tables of {layer} cover {at} of its {rows} rows")
