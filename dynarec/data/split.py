"""Train / valid / test row indices of a raw table, reproducible by seed.

Methods: ``random``; ``temporal`` (by the schema's timestamp, or ``temporal:COL``: numbers, dates or times,
never text); ``stratified`` (each class of a binary task split by the fractions, ``stratified:TASK``, default
the first task; or each value of a column, ``stratified:COLUMN``, e.g. the domain column); ``group``
(no value of a column in two splits, ``group:COL``, default the schema's user column); ``column`` (a split
column holding train / valid / test, ``column:COL``); ``leave_last_out`` (for retrieval: per user, by the
schema's timestamp, the latest positive of a binary task is test and the one before valid, everything else
train; ``leave_last_out:TASK``, default the first task). A split that would be empty is an error."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dynarec.data.labels import label_column
from dynarec.data.read import as_text, check_columns, values_seen
from dynarec.errors import ConfigError, DataError

SPLITS = ("train", "valid", "test")
METHODS = ("random", "temporal", "stratified", "group", "column", "leave_last_out")
COLUMN_VALUES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}


@dataclass
class SplitSpec:
    """``method`` (one of METHODS), ``by`` (task or column it uses, None = its default), fractions, seed."""

    method: str = "random"
    by: str | None = None
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            import difflib

            close = difflib.get_close_matches(self.method, METHODS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"split: unknown method '{self.method}'{hint}; expected one of {', '.join(METHODS)}")
        self.fractions = parse_fractions(self.fractions)
        if self.by is not None and self.method == "random":
            raise ConfigError(f"split: 'random' takes no column or task (got 'random:{self.by}')")
        if self.method in ("column", "leave_last_out") and self.fractions != (0.8, 0.1, 0.1):
            raise ConfigError(f"split: '{self.method}' decides the split itself; fractions do not apply")

    def describe(self) -> str:
        by = f":{self.by}" if self.by else ""
        fr = "" if self.method in ("column", "leave_last_out") else " fractions " + "/".join(f"{x:g}" for x in self.fractions)
        return f"{self.method}{by}{fr} seed {self.seed}"


def parse_split(text: str | SplitSpec, fractions=None, seed: int = 0) -> SplitSpec:
    """``'stratified:click'`` (+ fractions ``'0.8,0.1,0.1'`` or a sequence) -> SplitSpec."""
    if isinstance(text, SplitSpec):
        return text
    method, _, by = str(text).partition(":")
    return SplitSpec(method.strip(), by.strip() or None, (0.8, 0.1, 0.1) if fractions is None else fractions, seed)


def parse_fractions(fr) -> tuple[float, float, float]:
    what = f"split fractions must be three positive numbers summing to 1 (train,valid,test), got {fr!r}"
    try:
        xs = [float(x) for x in (fr.split(",") if isinstance(fr, str) else fr)]
    except (TypeError, ValueError):
        raise ConfigError(what) from None
    if len(xs) != 3 or any(not x > 0 for x in xs) or abs(sum(xs) - 1) > 1e-6:
        raise ConfigError(what)
    return (xs[0], xs[1], xs[2])


def split_indices(t: pa.Table, schema, how: str | SplitSpec = "random", fractions=(0.8, 0.1, 0.1),
                  seed: int = 0, where: str = "data") -> dict[str, np.ndarray]:
    """Disjoint train / valid / test row indices of ``t`` (positions in the raw table)."""
    spec = parse_split(how, fractions, seed) if not isinstance(how, SplitSpec) else how
    n = t.num_rows
    rng = np.random.default_rng(spec.seed)
    m = spec.method
    if m == "random":
        order = rng.permutation(n)
        a, b = _cuts(n, spec.fractions)
        idx = {"train": np.sort(order[:a]), "valid": order[a:b], "test": order[b:]}
    elif m == "temporal":
        col = spec.by or schema.timestamp
        if not col:
            raise DataError("temporal split needs 'timestamp' in the schema (or temporal:COLUMN)")
        order = np.argsort(time_values(t, col, where, "a temporal split"), kind="stable")
        a, b = _cuts(n, spec.fractions)
        idx = {"train": order[:a], "valid": order[a:b], "test": order[b:]}
    elif m == "stratified":
        strata = _strata(t, schema, spec.by, where)
        parts = {s: [] for s in SPLITS}
        for c in range(int(strata.max()) + 1 if len(strata) else 0):
            rows = rng.permutation(np.flatnonzero(strata == c))
            a, b = _cuts(len(rows), spec.fractions)
            for s, r in zip(SPLITS, (rows[:a], rows[a:b], rows[b:])):
                parts[s].append(r)
        idx = {s: np.sort(np.concatenate(p)) for s, p in parts.items()}
    elif m == "group":
        col = spec.by or schema.user
        if not col:
            raise DataError("group split needs 'user' in the schema (or group:COLUMN)")
        check_columns(t, [col], where)
        g = pc.dictionary_encode(pc.fill_null(as_text(t.column(col)), "\x00null")).indices
        g = g.to_numpy(zero_copy_only=False).astype(np.int64)
        part = _assign_groups(np.bincount(g), spec.fractions, rng)
        idx = {s: np.flatnonzero(part[g] == k) for k, s in enumerate(SPLITS)}
    elif m == "leave_last_out":
        idx = _leave_last_out(t, schema, spec.by, where)
    else:  # column
        if not spec.by:
            raise ConfigError("split: 'column' needs the split column: column:COLUMN")
        check_columns(t, [spec.by], where)
        v = as_text(t.column(spec.by))
        known = pc.is_in(v, value_set=pa.array(list(COLUMN_VALUES)))
        if not pc.all(pc.fill_null(known, False)).as_py():
            bad = pc.filter(v, pc.invert(pc.fill_null(known, False)))
            raise DataError(f"{where}: split column '{spec.by}' must hold train / valid / test; values seen: "
                            f"{values_seen(bad) if len(bad) - bad.null_count else 'null'}")
        keys = list(COLUMN_VALUES)
        canon = np.array([COLUMN_VALUES[k] for k in keys])[pc.index_in(v, value_set=pa.array(keys)).to_numpy(
            zero_copy_only=False).astype(np.int64)]
        idx = {s: np.flatnonzero(canon == s) for s in SPLITS}
    for s in SPLITS:
        if len(idx[s]) == 0:
            counts = ", ".join(f"{k} {len(idx[k])}" for k in SPLITS)
            raise DataError(f"{where}: split '{s}' would be empty: {n} row(s) split {spec.describe()} give "
                            f"{counts}; use more rows or other fractions")
    return idx


def _strata(t: pa.Table, schema, by: str | None, where: str) -> np.ndarray:
    """Stratum id (0..k-1) of every row: the class of a binary task (``by`` a task name, default the first
    task), or the value of a column (``by`` a column that is no task, e.g. the domain; missing = one value)."""
    if by is None or by in schema.task_names:
        task = schema.task(by) if by else schema.tasks[0]
        if task.type != "binary":
            raise ConfigError(f"split: stratified needs a binary task; '{task.name}' is {task.type} (or "
                              f"stratify by a column: stratified:COLUMN)")
        return label_column(t, task, where).astype(np.int64)
    if by not in t.column_names:
        raise ConfigError(f"split: stratified:{by}: no task or column named '{by}' (tasks: "
                          f"{', '.join(schema.task_names)}; domain column: {schema.domain})")
    v = pc.dictionary_encode(pc.fill_null(as_text(t.column(by)), "\x00null")).indices
    return v.to_numpy(zero_copy_only=False).astype(np.int64)


def time_values(t: pa.Table, col: str, where: str, why: str) -> np.ndarray:
    """Times [N] of column ``col`` for ordering rows (numbers as they are; dates and timestamps as their
    integer ticks, exact); text, a missing value or another type -> DataError naming the column and its type."""
    check_columns(t, [col], where)
    ts = t.column(col)
    if ts.null_count:
        raise DataError(f"{where}: timestamp column '{col}' has {ts.null_count} missing value(s); {why} needs a "
                        f"time for every row")
    typ = ts.type
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ) or pa.types.is_time(typ) or pa.types.is_duration(typ):
        ts = pc.cast(ts, pa.int64()) if not pa.types.is_date32(typ) else pc.cast(ts, pa.int32())
    elif not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        raise DataError(f"{where}: timestamp column '{col}' has type {typ} (values seen: {values_seen(ts, 3)}); "
                        f"{why} needs numbers, dates or times to order the rows")
    return np.asarray(ts.to_numpy(zero_copy_only=False))


def _leave_last_out(t: pa.Table, schema, task_name: str | None, where: str) -> dict[str, np.ndarray]:
    """Per user, by timestamp (ties: the later row): the last positive of the task is test, the one before
    valid; users with fewer positives keep them in train; negative rows are train."""
    if not schema.user or not schema.timestamp:
        raise DataError(f"{where}: split leave_last_out needs 'user' and 'timestamp' in the schema "
                        f"(have user={schema.user!r}, timestamp={schema.timestamp!r}); use --split random")
    task = schema.task(task_name) if task_name else schema.tasks[0]
    if task.type != "binary":
        raise ConfigError(f"split: leave_last_out needs a binary task to mark positives; '{task.name}' is {task.type}")
    check_columns(t, [schema.user, schema.timestamp], where)
    user = pc.dictionary_encode(pc.fill_null(as_text(t.column(schema.user)), "\x00null")).indices
    user = torch.from_numpy(user.to_numpy(zero_copy_only=False).astype(np.int64))
    ts = torch.from_numpy(np.asarray(time_values(t, schema.timestamp, where, "split leave_last_out"), np.float64))
    pos = np.flatnonzero(label_column(t, task, where) == 1)
    out = np.zeros(t.num_rows, np.int64)  # 0 train, 1 valid, 2 test
    rest = torch.from_numpy(pos)
    for part in (2, 1):
        _, held = leave_last_out(user[rest], ts[rest])
        out[rest[held].numpy()] = part
        rest = rest[~held]
    return {s: np.flatnonzero(out == k) for k, s in enumerate(SPLITS)}


def leave_last_out(user: torch.Tensor, timestamp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split interactions: each user's latest one (ties: the later row) is test, the rest train.
    Users with a single interaction keep it in train.

    Args:
        user: Long [N]. timestamp: [N]. Returns (train_mask, test_mask), Bool [N] each.

    Example::

        >>> train, test = leave_last_out(torch.tensor([0, 0, 1]), torch.tensor([5.0, 7.0, 1.0]))
        >>> test.tolist()
        [False, True, False]
    """
    n = len(user)
    order = torch.argsort(timestamp.double(), stable=True)
    order = order[torch.argsort(user[order], stable=True)]            # by user, then time, then row
    last = torch.ones(n, dtype=torch.bool)
    last[:-1] = user[order][1:] != user[order][:-1]
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = user[order][1:] != user[order][:-1]
    test = torch.zeros(n, dtype=torch.bool)
    test[order[last & ~first]] = True
    return ~test, test


def _cuts(n: int, fractions) -> tuple[int, int]:
    a = int(round(fractions[0] * n))
    return a, a + int(round(fractions[1] * n))


def _assign_groups(sizes: np.ndarray, fractions, rng, greedy: int = 10_000) -> np.ndarray:
    """Split id (0 train, 1 valid, 2 test) of each group so that row counts follow ``fractions``: the
    ``greedy`` largest groups (random order among equal sizes) each go to the split furthest below its
    target; the rest, shuffled, fill the remaining quotas in turn."""
    perm = rng.permutation(len(sizes))
    perm = perm[np.argsort(-sizes[perm], kind="stable")]
    target = np.asarray(fractions) * sizes.sum()
    count = np.zeros(3)
    part = np.empty(len(sizes), np.int64)
    for gid in perm[:greedy]:
        k = int(np.argmax(target - count))
        part[gid] = k
        count[k] += sizes[gid]
    rest = rng.permutation(perm[greedy:])
    if len(rest):
        quota = np.cumsum(np.maximum(target - count, 0))[:2]
        start = np.cumsum(sizes[rest]) - sizes[rest]  # rows before each group, in shuffled order
        part[rest] = np.searchsorted(quota, start, side="right")
    return part
