"""Whole-file checks of a raw table before it is split (``prepare_table``), so that a message names the row
of the file rather than of a split: rows without a domain (a warning); every dense value is a finite number the model
can hold after fill / clip / log1p, and missing values meet the feature's ``nan_policy``."""
from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.encode import column, dense_column
from dynarec.data.numeric import raw_steps
from dynarec.data.read import as_text
from dynarec.errors import DataError, DataWarning


def check_raw_values(t: pa.Table, schema, where: str) -> None:
    """Raise one DataError for the first dense column that breaks its rules; warn about rows without a domain.

    Example::

        check_raw_values(read_raw("raw.csv", schema), schema, "raw.csv")  # before split_indices
    """
    check_domain(t, schema, where)
    for f in schema.dense + [f for f in schema.sparse if f.bucketised]:
        x = dense_column(t, f, where)
        nan = int(np.isnan(x).sum())  # counted over the whole file, not one split
        if nan and f.nan_policy == "error":
            raise DataError(f"{where}: dense column '{f.name}' has {nan} NaN value(s) and its nan_policy is "
                            f"'error' (use nan_policy: fill, with a fill_value in raw units)")
        raw_steps(x, f, where)


def check_domain(t: pa.Table, schema, where: str) -> None:
    """Rows without a domain (missing, empty, or one of the column's ``null_values``) get domain id 0, the
    unknown domain that also takes values unseen in training: accepted (real files have them, e.g. Adult's
    ``workclass`` '?'), but never silently -- a DataWarning gives the count, the share and the first row."""
    f = schema.feature(schema.domain)
    v = as_text(column(t, f))
    miss = pc.fill_null(pc.equal(v, ""), True).to_numpy(zero_copy_only=False)
    if miss.any():
        rows = np.flatnonzero(miss)
        warnings.warn(f"{where}: domain column '{f.name}' has {len(rows)} missing value(s) "
                      f"({100 * len(rows) / len(miss):.1f} % of {len(miss)} rows, the first at row {rows[0]}); "
                      f"they get "
                      f"the unknown domain (id 0), shared with domains unseen in training; fill them to give them a "
                      f"domain of their own", DataWarning, stacklevel=3)
