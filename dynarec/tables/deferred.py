"""Tables created without their storage (``deferred``): for a model whose feature tables TorchRec will
shard, every rank builds the model without materialising the whole table, and each rank later writes
only its shards' initial rows (:func:`initial_rows`).

Inside :func:`deferred_tables`, :meth:`TableCollection.add` creates a table that may be deferred with zero
rows and keeps its *recipe*: the CPU generator's state before the table's initialisation, its rows, width
and ``init_std``. It then advances the global generator exactly as the eager initialisation would have
(``nn.Embedding``'s own N(0, 1) fill, then the spec's N(0, std)), drawing chunk by chunk and discarding, so
every parameter built after it gets the numbers it gets without deferral. :func:`initial_rows` replays the
recipe chunk by chunk: the rows are those of the eager table (torch's CPU ``normal_`` draws its numbers
in order, in blocks of 16, so chunks of 16k rows reproduce one call over the whole table;
tests/scale/test_torchrec.py holds the replay equal to the eager table). Memory: one chunk, never the table."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

_PREDICATE: list[Callable] = []  # the active deferral rule (innermost last)
CHUNK_ROWS = 16_384


@contextlib.contextmanager
def deferred_tables(rule: Callable | None = None):
    """Defer the tables ``rule(spec)`` accepts (default: every table that may be deferred) while active."""
    _PREDICATE.append(rule or (lambda spec: True))
    try:
        yield
    finally:
        _PREDICATE.pop()


def wants(spec) -> bool:
    return bool(_PREDICATE) and bool(_PREDICATE[-1](spec))


def recipe(spec) -> dict:
    """The recipe of ``spec``'s table from the generator's current state; advances the generator as the
    eager initialisation would."""
    r = {"state": torch.get_rng_state(), "rows": int(spec.rows), "dim": int(spec.dim), "std": spec.init_std}
    for _ in _chunks(r, torch.default_generator):
        pass
    return r


def _chunks(r: dict, gen: torch.Generator) -> Iterator[tuple[int, torch.Tensor | None]]:
    """(first row, rows) of the table, chunk by chunk, drawn from ``gen``: first nn.Embedding's N(0, 1)
    fill (yielded as None), then the spec's initialisation (N(0, std); zeros for std 0; the N(0, 1) rows
    themselves for std None)."""
    rows, dim, std = r["rows"], r["dim"], r["std"]
    spans, lo = [], 0
    while lo < rows:
        hi = rows if rows - lo <= 2 * CHUNK_ROWS else lo + CHUNK_ROWS  # the last chunk is never under 16k rows
        spans.append((lo, hi))
        lo = hi
    for lo, hi in spans:
        t = torch.empty(hi - lo, dim).normal_(generator=gen)
        yield lo, (t if std is None else None)
    if std is None:
        return
    for lo, hi in spans:
        t = torch.empty(hi - lo, dim)
        yield lo, (t.normal_(0.0, std, generator=gen) if std > 0 else t.zero_())


def initial_rows(r: dict) -> Iterator[tuple[int, torch.Tensor]]:
    """The eager table's initial rows, as (first row, rows) chunks, replayed from the recipe ``r``."""
    gen = torch.Generator()
    gen.set_state(r["state"])
    for lo, t in _chunks(r, gen):
        if t is not None:
            yield lo, t
