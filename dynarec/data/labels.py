"""Task labels from their source column by the task's rule: ``positive: [values]`` (those -> 1, the rest
-> 0), ``threshold: x`` (value > x -> 1), plain 0/1, or a regression target (optionally ``log1p``).
Errors name the column and show the values seen."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.read import as_text, values_seen
from dynarec.errors import DataError


def _numbers(col, task, where: str, why: str) -> np.ndarray:
    try:
        y = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{where}: label column '{task.source}' of task '{task.name}' has type {col.type}; "
                        f"{why} (values seen: {values_seen(col)})") from None
    return np.asarray(y, dtype=np.float64)


def label_column(table: pa.Table, task, where: str) -> np.ndarray:
    """Float32 [N] label of ``task`` for every row of ``table``."""
    col = table.column(task.source)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    missing = col.null_count
    if pa.types.is_floating(col.type) and not missing:
        missing = int(np.isnan(col.to_numpy(zero_copy_only=False)).sum())
    if missing:
        raise DataError(f"{where}: label column '{task.source}' has {missing} missing value(s)")
    if task.positive is not None:
        return pc.is_in(as_text(col), value_set=pa.array(task.positive, pa.string())) \
            .to_numpy(zero_copy_only=False).astype(np.float32)
    if task.threshold is not None:
        x = _numbers(col, task, where, "a threshold needs numbers")
        return (x > task.threshold).astype(np.float32)
    if task.type == "binary":
        y = _numbers(col, task, where, "expected 0/1 numbers (or a rule: positive: [values])")
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            raise DataError(f"{where}: label column '{task.source}' must be binary 0/1 but has values seen: "
                            f"{values_seen(col)} (declare a rule positive: [values] or threshold: x, or "
                            f"type: regression for a continuous target)")
        return y.astype(np.float32)
    y = _numbers(col, task, where, "a regression target needs numbers")
    if task.transform == "log1p":
        if (y <= -1).any():
            raise DataError(f"{where}: task '{task.name}': transform log1p needs values > -1, but column "
                            f"'{task.source}' has {y.min():g}")
        y = np.log1p(y)
    return y.astype(np.float32)


def check_label_rules(table: pa.Table, schema, where: str) -> None:
    """Whole-file checks of the rules before splitting: a ``positive`` rule that matches no row, or a
    ``threshold`` that puts every row on one side, is a mistake (one class only)."""
    for task in schema.tasks:
        y = label_column(table, task, where)
        if task.type != "binary" or (task.positive is None and task.threshold is None):
            continue
        col = table.column(task.source)
        if task.positive is not None and not y.any():
            raise DataError(f"{where}: task '{task.name}': no value of column '{task.source}' is in positive "
                            f"{task.positive} (values seen: {values_seen(col)})")
        if task.positive is not None and y.all():
            raise DataError(f"{where}: task '{task.name}': every value of column '{task.source}' is in positive "
                            f"{task.positive}, so there is no negative row (values seen: {values_seen(col)})")
        if task.threshold is not None and (y.all() or not y.any()):
            x = pc.cast(col, pa.float64())
            raise DataError(f"{where}: task '{task.name}': threshold {task.threshold:g} puts every row of column "
                            f"'{task.source}' on one side (values range from {pc.min(x).as_py():g} to "
                            f"{pc.max(x).as_py():g})")
