"""Shared helpers of the dataset loaders: locating raw files, reading delimited text with pyarrow
(multi-character separators such as MovieLens-1M's ``::``, latin-1 files), joins and label rules."""
from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dynarec.errors import DataError


def raw_path(raw_dir: str | Path, dataset: str) -> Path:
    p = Path(raw_dir)
    if not p.exists():
        raise DataError(f"{dataset}: raw folder '{p}' not found")
    return p


def find_file(raw_dir: Path, names: Sequence[str], dataset: str, what: str = "", required: bool = True) -> Path | None:
    """The first of ``names`` (glob patterns allowed, also tried with ``.gz``) found under ``raw_dir``
    (searched recursively); a clear DataError naming the expected files when none is present."""
    if raw_dir.is_file():
        if any(raw_dir.match(n) or raw_dir.match(n + ".gz") for n in names):
            return raw_dir
        raw_dir = raw_dir.parent  # a file given: look next to it
    for n in names:
        for pat in (n, n + ".gz"):
            hits = sorted(raw_dir.glob(pat)) or sorted(raw_dir.glob(f"**/{pat}"))
            if hits:
                return hits[0]
    if required:
        exp = ", ".join(f"'{n}'" for n in names)
        raise DataError(f"{dataset}: raw file {exp} not found in '{raw_dir}'" + (f" ({what})" if what else ""))
    return None


def read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    return data


def read_delimited(path: Path, sep: str = ",", names: list[str] | None = None, encoding: str = "utf-8",
                   column_types: dict[str, pa.DataType] | None = None, header: bool | None = None,
                   quoting: bool = True, expected: Iterable[str] = ()) -> pa.Table:
    """Read a delimited text file with pyarrow. ``names`` given -> the file has no header row (unless
    ``header=True``, then the header is skipped and replaced). Multi-character ``sep`` and non-UTF-8
    ``encoding`` are handled by rewriting the bytes once (vectorised, no per-row Python)."""
    data = read_bytes(path)
    if encoding.lower().replace("-", "") not in ("utf8", "ascii"):
        data = data.decode(encoding).encode("utf-8")
    if len(sep) > 1:
        if b"\t" in data:
            raise DataError(f"{path}: cannot rewrite separator '{sep}' (file contains tabs)")
        data = data.replace(sep.encode(), b"\t")
        sep = "\t"
    skip = 1 if (names is not None and header) else 0
    read = pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=1 << 24) if names is not None \
        else pacsv.ReadOptions(block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter=sep, quote_char='"' if quoting else False)
    conv = pacsv.ConvertOptions(column_types=column_types or {}, strings_can_be_null=False)
    try:
        t = pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse, convert_options=conv)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"{path}: not a readable file of the expected format ({str(e).splitlines()[0]})") from None
    if t.num_rows == 0:
        raise DataError(f"{path}: file has no rows")
    missing = [c for c in expected if c not in t.column_names]
    if missing:
        raise DataError(f"{path}: missing column '{missing[0]}' (has: {', '.join(t.column_names[:12])}"
                        f"{' ...' if t.num_columns > 12 else ''})")
    return t


def join_left(left: pa.Table, right: pa.Table, key: str, where: str) -> pa.Table:
    """Left join keeping the left row order; rows whose key is missing on the right get nulls."""
    right = right.drop_null()
    keys = right.column(key)
    if pc.count_distinct(keys).as_py() != len(keys):
        raise DataError(f"{where}: key '{key}' is not unique in the joined table")
    idx = pc.index_in(left.column(key), value_set=keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys)
    out = left
    for name in right.column_names:
        if name == key or name in left.column_names:
            continue
        out = out.append_column(name, right.column(name).combine_chunks().take(idx))
    return out


def to_numpy(col) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.to_numpy(zero_copy_only=False)


def as_label(x: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(x).astype(np.int8))


def strings(values: np.ndarray | list) -> pa.Array:
    return pa.array(np.asarray(values, dtype=object).tolist(), pa.string())


def as_string(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return pc.cast(col, pa.string())


def map_values(col, mapping: dict, default=None) -> pa.Array:
    """Vectorised value -> value mapping (unmapped -> ``default``)."""
    keys = list(mapping)
    vals = np.array([mapping[k] for k in keys] + [default], dtype=object)
    idx = pc.index_in(col, value_set=pa.array(keys))
    idx = to_numpy(pc.fill_null(idx, len(keys))).astype(np.int64)
    return pa.array(vals[idx].tolist())


def filter_rows(t: pa.Table, mask: np.ndarray) -> pa.Table:
    return t.filter(pa.array(np.asarray(mask, dtype=bool)))


class Option:
    """One loader option: default value (its type is the option's type), help text, allowed values."""

    def __init__(self, default, help: str, choices: Sequence | None = None):
        self.default = default
        self.help = help
        self.choices = tuple(choices) if choices else None

    def coerce(self, value, key: str, dataset: str):
        """Value from Python or from the CLI (``--option k=v`` gives strings) -> the option's type."""
        d = self.default
        try:
            if isinstance(d, bool):
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = low in ("true", "1", "yes")
                elif not isinstance(value, (bool, int)):
                    raise ValueError
                value = bool(value)
            elif isinstance(d, int):
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(value)
            elif isinstance(d, float):
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            elif d is None or isinstance(d, str):
                value = None if value is None else str(value)
        except ValueError:
            raise DataError(f"{dataset}: option '{key}' expects {type(d).__name__}, got {value!r}") from None
        if self.choices and value not in self.choices:
            raise DataError(f"{dataset}: option '{key}' must be one of {', '.join(map(str, self.choices))}; "
                            f"got {value!r}")
        return value

    def describe(self) -> str:
        ch = f" (one of: {', '.join(map(str, self.choices))})" if self.choices else ""
        return f"{self.help}{ch} [default: {self.default}]"
