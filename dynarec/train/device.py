"""Where training runs: ``trainer.device`` (auto | cpu | cuda | cuda:N) resolved to a ``torch.device``,
``trainer.precision`` (fp32 | bf16 autocast on CUDA and on CPUs with native bf16, :mod:`dynarec.train.precision`), and splits staged on the device once so that a step
never waits on a host copy: the whole split when it fits in ``stage_bytes``, else chunks of many batches,
each moved in one copy, cut from the same shuffled order (the batches are the same either way)."""
from __future__ import annotations

from typing import Iterator

import torch

from dynarec.data.table import Batch, TensorTable
from dynarec.errors import ConfigError
from dynarec.train.precision import autocast, resolve_precision

DEFAULT_STAGE_BYTES = 2 << 30  # a split larger than this is staged in chunks
CHUNK_BATCHES = 64  # batches per chunk when staging in chunks


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu`` / ``cuda`` / ``cuda:N`` as given
    (checked: a CUDA device that is absent is a ConfigError). ``meta`` is accepted for shape-only tests."""
    s = str(spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s in ("cpu", "meta"):
        return torch.device(s)
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device: '{spec}' asked for, but torch sees no CUDA device "
                              "(use auto or cpu)")
        idx = int(s[5:]) if ":" in s else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device: '{spec}' asked for, but only {torch.cuda.device_count()} "
                              "CUDA device(s) are visible")
        return torch.device("cuda", idx)
    raise ConfigError(f"trainer.device: expected auto | cpu | cuda | cuda:N, got '{spec}'")


def check_precision(precision: str, device: torch.device) -> str:
    """``fp32`` anywhere; ``bf16`` on CUDA and on CPUs with native bfloat16 (AMX-BF16 / AVX512-BF16), else
    fp32 after a one-line note (:func:`dynarec.train.precision.resolve_precision`)."""
    return resolve_precision(precision, device)


class AutocastForward:
    """The step's ``forward``: ``module(batch)`` under bf16 autocast (CUDA, or a CPU with native bf16),
    outputs back to fp32 (losses and metrics stay in fp32). ``module`` is the model or its DDP wrapper."""

    def __init__(self, module, device: torch.device, precision: str = "fp32"):
        self.module, self.device, self.precision = module, device, precision

    def __call__(self, batch):
        if self.precision != "bf16":
            return self.module(batch)
        with autocast(self.device, self.precision):
            out = self.module(batch)
        return {k: v.float() for k, v in out.items()}


def table_bytes(table: TensorTable) -> int:
    ts = [table.sparse, table.dense, *table.labels.values(), *table.sequences.values()]
    if table.user is not None:
        ts.append(table.user)
    return sum(t.numel() * t.element_size() for t in ts)


def _table_to(table: TensorTable, device) -> TensorTable:
    return TensorTable(table.schema, table.sparse.to(device), table.dense.to(device),
                       {k: v.to(device) for k, v in table.labels.items()},
                       {k: v.to(device) for k, v in table.sequences.items()},
                       None if table.user is None else table.user.to(device), table.row)


class DeviceTable:
    """A split whose :meth:`batches` are on ``device``: the same batches, in the same order, as
    ``table.batches`` (same generator draws). ``whole`` says whether the split was copied at once; else each
    chunk of ``chunk_batches`` batches is gathered on the host and copied in one transfer. Labels, domain
    and user stay readable on the host (``labels`` / ``domain`` / ``user``) for the metrics."""

    def __init__(self, table: TensorTable, device, stage_bytes: int = DEFAULT_STAGE_BYTES,
                 chunk_batches: int = CHUNK_BATCHES):
        self.host, self.device = table, torch.device(device)
        self.schema, self.labels, self.user, self.row = table.schema, table.labels, table.user, table.row
        self.chunk_batches = chunk_batches
        self.whole = self.device.type == "cpu" or table_bytes(table) <= stage_bytes
        self.staged = table if self.device.type == "cpu" else (_table_to(table, self.device) if self.whole else None)
        self.transfers = 0 if self.device.type == "cpu" else int(self.whole)

    def __len__(self) -> int:
        return len(self.host)

    @property
    def domain(self) -> torch.Tensor:
        return self.host.domain

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        if self.staged is not None:
            yield from self.staged.batches(batch_size, shuffle, generator)
            return
        n = len(self.host)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        chunk = batch_size * self.chunk_batches
        for c in range(0, n, chunk):
            part = self.host.take(order[c:c + chunk])
            if self.device.type == "cuda":
                part = _pin(part)
            part = part.to(self.device)
            self.transfers += 1
            for s in range(0, len(part), batch_size):
                yield _slice(part, slice(s, s + batch_size))


def _pin(b: Batch) -> Batch:
    return Batch(b.sparse.pin_memory(), b.dense.pin_memory(), b.domain.pin_memory(),
                 {k: v.pin_memory() for k, v in b.labels.items()},
                 {k: v.pin_memory() for k, v in b.sequences.items()}, None if b.user is None else b.user.pin_memory())


def _slice(b: Batch, sl: slice) -> Batch:
    return Batch(b.sparse[sl], b.dense[sl], b.domain[sl], {k: v[sl] for k, v in b.labels.items()},
                 {k: v[sl] for k, v in b.sequences.items()}, None if b.user is None else b.user[sl])


def on_device(table, device, stage_bytes: int = DEFAULT_STAGE_BYTES):
    """``table`` as a :class:`DeviceTable` on ``device`` (``None`` and CPU tables pass through unchanged)."""
    if table is None or torch.device(device).type == "cpu" or isinstance(table, DeviceTable):
        return table
    return DeviceTable(table, device, stage_bytes)
