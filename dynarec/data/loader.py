"""Streamed reading of a prepared split: :class:`StreamTable` offers what the trainer consumes from a
:class:`~dynarec.data.table.TensorTable` (``batches(batch_size, shuffle, generator)``, ``len``, ``schema``,
``fingerprint``) while holding only a bounded number of rows.

The unit of reading is a Parquet row group of the split's shards (``train.parquet/part-*.parquet`` from the
out-of-core prepare, or the one-file layout). Per epoch, with ``shuffle``: the row groups in an order drawn
from the trainer's generator, then a row-shuffle buffer of ``shuffle_buffer`` rows: filled with whole row
groups, permuted (same generator), cut into batches; the rows short of a batch stay for the next fill.
Every row is read exactly once per epoch; batches depend only on the generator's state (deterministic for a
seed). Background threads (``threads``; pyarrow releases the GIL while it decodes) read up to ``prefetch``
row groups ahead. Without ``shuffle`` the batches are the in-memory table's ``batches(shuffle=False)``.

Several processes (DDP / TorchRec): :meth:`StreamTable.for_rank` gives rank r its own row groups (dealt
from the shuffled order to the least-loaded rank, so the shares differ by at most one row group); every rank
cuts its rows into the same number of steps, ``ceil(rows / global batch)``, of near-equal batches: all
ranks take the same number of steps and every row is read once per epoch.

Example::

    train = open_split("prepared/", "train", shuffle_buffer=1 << 16)
    for batch in train.batches(512, shuffle=True, generator=torch.Generator().manual_seed(0)):
        ...
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dynarec.data.prepare import table_columns, to_tensor_table
from dynarec.data.schema import Schema
from dynarec.data.table import Batch
from dynarec.errors import ConfigError, DataError

LOADINGS = ("auto", "memory", "stream")


def split_files(folder: str | Path, split: str) -> list[Path]:
    p = Path(folder) / f"{split}.parquet"
    if p.is_dir():
        files = sorted(p.glob("*.parquet"))
    else:
        files = [p] if p.is_file() else []
    if not files:
        raise DataError(f"{p}: missing split file")
    return files


def metadata(f: Path):
    """A Parquet file's footer; a truncated or foreign file is one DataError naming it."""
    try:
        return pq.ParquetFile(f).metadata
    except (pa.ArrowInvalid, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{f}: truncated or not a parquet file ({msg})") from None


def _columns(t: pa.Table) -> dict[str, np.ndarray]:
    return table_columns(t)


class StreamTable:
    """One split read row group by row group (see the module docstring)."""

    def __init__(self, schema: Schema, files: list[Path], shuffle_buffer: int = 1 << 18, prefetch: int = 4,
                 threads: int = 2, rank: int = 0, world: int = 1, device=None):
        if shuffle_buffer < 0 or prefetch < 1 or threads < 1:
            raise ConfigError(f"data: shuffle_buffer >= 0, prefetch >= 1 and read_threads >= 1 expected, got "
                              f"{shuffle_buffer}, {prefetch}, {threads}")
        self.schema, self.files = schema, files
        self.shuffle_buffer, self.prefetch, self.threads = shuffle_buffer, prefetch, threads
        self.rank, self.world = rank, world
        self.device = torch.device(device) if device is not None else None
        self.units = []  # (file index, row group, rows)
        for i, f in enumerate(files):
            md = metadata(f)
            self.units += [(i, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
        self.total = sum(u[2] for u in self.units)

    def for_rank(self, rank: int, world: int, device=None) -> StreamTable:
        """Rank ``rank``'s reader of ``world`` processes; its ``batches`` take the GLOBAL batch size."""
        return StreamTable(self.schema, self.files, self.shuffle_buffer, self.prefetch, self.threads, rank, world,
                           device)

    def _deal(self, order: list[int]) -> list[list[int]]:
        """Row groups of each rank: dealt in ``order`` to the rank with the fewest rows so far."""
        parts, rows = [[] for _ in range(self.world)], np.zeros(self.world, np.int64)
        for u in order:
            r = int(np.argmin(rows))
            parts[r].append(u)
            rows[r] += self.units[u][2]
        return parts

    def __len__(self) -> int:
        """Rows this rank reads per epoch: all rows with one process; else about ``total // world`` (the
        shares follow the epoch's order; dealing to the least-loaded rank keeps them within one row group)."""
        return self.total // self.world

    def fingerprint(self) -> str:
        """A digest of the split's shard names, sizes and row groups (its content is never read whole)."""
        h = hashlib.sha256(str(self.total).encode())
        for f in self.files:
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        h.update(str(self.units).encode())
        return h.hexdigest()[:16]

    def _read(self, u: int) -> dict[str, np.ndarray]:
        i, g, _ = self.units[u]
        try:
            return _columns(pq.ParquetFile(self.files[i]).read_row_group(g))
        except (pa.ArrowInvalid, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{self.files[i]}: row group {g} unreadable ({msg})") from None

    def _groups(self, order: list[int]) -> Iterator[dict[str, np.ndarray]]:
        with ThreadPoolExecutor(self.threads) as pool:
            futures = [pool.submit(self._read, u) for u in order[:self.prefetch]]
            for k in range(len(order)):
                cols = futures[k].result()
                futures[k] = None
                if k + self.prefetch < len(order):
                    futures.append(pool.submit(self._read, order[k + self.prefetch]))
                yield cols

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                start: int = 0) -> Iterator:
        """This rank's batches of one epoch (``batch_size``: the global batch; see the module docstring), from
        the ``start``-th (0-based; ``generator`` in its state at the epoch's start): the epoch's order and
        shuffle-buffer permutations are replayed on row numbers, and only the row groups still holding rows of
        the remaining batches are read (a mid-epoch resume)."""
        for b, _ in self.batches_with_rows(batch_size, shuffle, generator, start):
            yield b if self.device is None else b.to(self.device)

    def _plan(self, batch_size: int, shuffle: bool, generator) -> tuple[list[int], list[int]]:
        """(this rank's row groups in the epoch's order, the size of each of its batches)."""
        if batch_size % self.world:
            raise ConfigError(f"trainer.batch_size: {batch_size} is not divisible by the {self.world} processes")
        n_units = len(self.units)
        order = torch.randperm(n_units, generator=generator).tolist() if shuffle else list(range(n_units))
        if self.world == 1:
            n = self.total
            return order, [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        # the same number of steps on every rank: its rows cut into that many near-equal batches
        order = self._deal(order)[self.rank]
        n, steps = sum(self.units[u][2] for u in order), -(-self.total // batch_size)
        if n < steps:
            raise ConfigError(f"trainer.batch_size: {batch_size} leaves rank {self.rank} fewer rows ({n}) than "
                              f"steps ({steps}); use a larger batch or more row groups")
        return order, [n // steps + (k < n % steps) for k in range(steps)]

    def _replay(self, order, sizes, fill, permute, generator, start):
        """Where the epoch stands before its ``start``-th batch, computed on row numbers (position in the
        epoch's concatenated row groups) with the same draws as :meth:`batches_with_rows`: (next row group
        to read, next batch, the rows held: already permuted when ``ready``, else the buffer's leftover)."""
        cum = np.concatenate([[0], np.cumsum([self.units[u][2] for u in order])]).astype(np.int64)
        held, p, k = np.zeros(0, np.int64), 0, 0
        while True:
            while len(held) < fill and p < len(order):
                held, p = np.concatenate([held, np.arange(cum[p], cum[p + 1])]), p + 1
            if permute:
                held = held[torch.randperm(len(held), generator=generator).numpy()]
            cut, j = _cut(sizes, k, len(held))
            if start < j:
                return p, start, held[sum(sizes[k:start]):], True
            held, k = held[cut:], j
            if start == j or not cut:
                return p, j, held, False

    def _gather(self, order, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The columns of ``rows`` (positions in the epoch's concatenated row groups ``order``), reading only
        the row groups that hold them."""
        cum = np.concatenate([[0], np.cumsum([self.units[u][2] for u in order])]).astype(np.int64)
        where = np.searchsorted(cum, rows, side="right") - 1
        need = np.unique(where)
        parts = list(self._groups([order[q] for q in need]))
        if not parts:
            return {}
        first = np.concatenate([[0], np.cumsum([self.units[order[q]][2] for q in need])])[:-1]
        local = first[np.searchsorted(need, where)] + (rows - cum[where])
        return {c: np.concatenate([b[c] for b in parts])[local] for c in parts[0]}

    def batches_with_rows(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                          start: int = 0):
        """(batch, raw row index of each of its rows) of :meth:`batches`, on the host."""
        order, sizes = self._plan(batch_size, shuffle, generator)
        if not sizes:
            return
        fill = max(self.shuffle_buffer, max(sizes)) if shuffle and self.shuffle_buffer else max(sizes)
        permute = bool(shuffle and self.shuffle_buffer)
        p, k, ready, buf = 0, 0, None, []
        if start:
            p, k, rows, is_ready = self._replay(order, sizes, fill, permute, generator, start)
            cols = self._gather(order, rows) if len(rows) else None
            ready, buf = (cols, []) if is_ready else (None, [cols] if cols else [])
        held = sum(len(b[ROW_KEY]) for b in buf)
        groups = self._groups(order[p:])
        while k < len(sizes):
            if ready is None:
                while held < fill:
                    cols = next(groups, None)
                    if cols is None:
                        break
                    buf.append(cols)
                    held += len(cols[ROW_KEY])
                if not buf:
                    break
                merged = {c: np.concatenate([b[c] for b in buf]) for c in buf[0]} if len(buf) > 1 else buf[0]
                if permute:
                    perm = torch.randperm(held, generator=generator).numpy()
                    merged = {c: v[perm] for c, v in merged.items()}
            else:
                merged, ready = ready, None
                held = len(merged[ROW_KEY])
            cut, j = _cut(sizes, k, held)
            if j == k:  # no whole batch left (cannot happen: the sizes add up to the rows)
                break
            table = to_tensor_table(self.schema, {c: v[:cut] for c, v in merged.items()})
            buf = [{c: v[cut:] for c, v in merged.items()}] if cut < held else []
            held -= cut
            s = 0
            for size in sizes[k:j]:
                yield _rows(table, s, s + size), table.row[s:s + size]
                s += size
            k = j


def _rows(t, a: int, b: int) -> Batch:
    """Rows ``a:b`` of tensor table ``t`` as a batch of views (no copy: the buffer was permuted already)."""
    sp = t.sparse[a:b]
    return Batch(sp, t.dense[a:b], sp[:, t.domain_col], {k: v[a:b] for k, v in t.labels.items()},
                 {k: v[a:b] for k, v in t.sequences.items()}, None if t.user is None else t.user[a:b])


def _cut(sizes: list[int], k: int, held: int) -> tuple[int, int]:
    """(rows cut, next batch): the whole batches ``k, k + 1, ...`` that ``held`` rows fill."""
    cut, j = 0, k
    while j < len(sizes) and cut + sizes[j] <= held:
        cut, j = cut + sizes[j], j + 1
    return cut, j


ROW_KEY = "_row"


def table_bytes_per_row(schema: Schema) -> int:
    """Bytes one row of a split takes as in-memory tensors (``to_tensor_table``)."""
    return 8 * len(schema.sparse) + 4 * schema.dense_dim + 4 * len(schema.tasks) \
        + sum(8 * f.max_len for f in schema.sequences) + 8 * (schema.user is not None) + 8


def check_data_keys(data) -> None:
    """The ``data:`` keys of an experiment, checked whichever loading is chosen (a ConfigError naming the key)."""
    for key, ok, want in (("loading", data.loading in LOADINGS, " | ".join(LOADINGS)),
                          ("memory_budget_mb", data.memory_budget_mb > 0, "a positive number of MB"),
                          ("shuffle_buffer", data.shuffle_buffer >= 0, "rows >= 0"),
                          ("prefetch", data.prefetch >= 1, "row groups >= 1"),
                          ("read_threads", data.read_threads >= 1, "threads >= 1")):
        if not ok:
            raise ConfigError(f"data.{key}: expected {want}, got {getattr(data, key)!r}")


def choose_loading(folder: str | Path, schema: Schema, loading: str = "auto", budget_mb: float = 4096) -> str:
    """``memory`` or ``stream`` for ``data.loading``: ``auto`` streams when the folder's splits, as tensors,
    would take more than ``budget_mb``."""
    if loading not in LOADINGS:
        raise ConfigError(f"data.loading: expected {' | '.join(LOADINGS)}, got '{loading}'")
    if loading != "auto":
        return loading
    if not budget_mb > 0:
        raise ConfigError(f"data.memory_budget_mb: expected a positive number, got {budget_mb}")
    rows = sum(metadata(f).num_rows for s in ("train", "valid", "test")
               for f in split_files(folder, s))
    return "stream" if rows * table_bytes_per_row(schema) > budget_mb * (1 << 20) else "memory"


def open_split(folder: str | Path, split: str = "train", shuffle_buffer: int = 1 << 18, prefetch: int = 4,
               threads: int = 2) -> StreamTable:
    """The streamed reader of ``split`` of a prepared folder."""
    p = Path(folder)
    if not (p / "schema.json").exists():
        raise DataError(f"{p}: not a prepared data folder (no schema.json); run `dynarec data prepare` first")
    return StreamTable(Schema.load(p / "schema.json"), split_files(p, split), shuffle_buffer, prefetch, threads)


STREAM_KEYS = ("shuffle_buffer", "prefetch", "read_threads")  # data.* keys of the streamed reader only


def _given(data) -> set[str]:
    """The ``data.*`` keys whose value is not the default (the ones a user set)."""
    import dataclasses

    return {f.name for f in dataclasses.fields(data)
            if f.default is not dataclasses.MISSING and getattr(data, f.name) != f.default}


def load_for_training(data):
    """(schema, {split: table}) of ``data.path`` (a ``DataConfig``): every split in memory, or with
    ``data.loading`` streamed (chosen, or ``auto`` when the splits would exceed ``data.memory_budget_mb``) the
    train split as a :class:`StreamTable` and valid / test in memory. A streamed reader's key
    (``shuffle_buffer``, ``prefetch``, ``read_threads``) given when the split is loaded in memory, or
    ``memory_budget_mb`` with a loading other than ``auto``, has no effect: a ConfigError naming it."""
    from dynarec.data.prepare import load_prepared

    check_data_keys(data)
    p = Path(data.path)
    schema = Schema.load(p / "schema.json") if (p / "schema.json").exists() else None
    given = _given(data)
    if data.loading != "auto" and "memory_budget_mb" in given:
        raise ConfigError(f"data.memory_budget_mb: only used with data.loading: auto, and data.loading is "
                          f"'{data.loading}'; remove the key")
    if schema is None or choose_loading(p, schema, data.loading, data.memory_budget_mb) == "memory":
        stream_keys = [k for k in STREAM_KEYS if k in given]
        if stream_keys:
            why = ("data.loading is 'memory'" if data.loading == "memory" else
                   f"data.loading 'auto' loads this folder in memory (its splits fit data.memory_budget_mb "
                   f"{data.memory_budget_mb:g})")
            raise ConfigError(f"data.{stream_keys[0]}: only used when the train split is streamed, and {why}; set "
                              f"data.loading: stream or remove data.{', data.'.join(stream_keys)}")
        return load_prepared(p)
    train = open_split(p, "train", data.shuffle_buffer, data.prefetch, data.read_threads)
    schema, rest = load_prepared(p, ("valid", "test"))
    train.schema = schema
    return schema, {"train": train, **rest}
