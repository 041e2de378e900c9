"""Read a raw CSV / Parquet file with the schema's ``read:`` options (``ReadOptions``: delimiter, null tokens,
encoding, column renames, quoting, line breaks inside quoted values, ...) and a column's own ``null_values``;
every failure is one DataError naming the file (and, for a CSV the reader cannot parse, the ``read:`` key
that may fix it)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dynarec.data.validate import boolean, check_fields, integer, mapping, scalars, text
from dynarec.errors import DataError, SchemaError

_PYARROW_NULLS = list(pacsv.ConvertOptions().null_values)  # '', 'NA', 'NULL', 'NaN', 'nan', 'N/A', ...


def _char_or_false(v):
    """One character, or false (none)."""
    if v is False:
        return False
    if isinstance(v, str) and len(v) == 1:
        return v
    raise ValueError("one character or false")


@dataclass
class ReadOptions:
    """How to read the raw file (the schema's ``read:`` section).

    ``delimiter``: one character (``tab`` allowed) for CSV; ``null_values``: tokens read as missing in every
    column (added to pyarrow's defaults: empty, NA, NULL, NaN, ...); ``encoding`` of a CSV file; ``rename``:
    raw column -> schema name. CSV quoting and layout (pyarrow's reader options): ``newlines_in_values``
    (quoted values may hold line breaks; slower, so off by default), ``quote_char`` (``'"'``; false: no
    quoting), ``double_quote`` (``""`` inside a quoted value is one quote), ``escape_char`` (false: none;
    e.g. ``\\``), ``skip_rows`` (lines before the header), ``block_size`` (bytes read at a time: a row longer
    than this needs a larger one).

    Example::

        >>> ReadOptions(delimiter="tab", newlines_in_values=True).delimiter == chr(9)  # a tab
        True
    """

    delimiter: str = ","
    null_values: list[str] | None = None
    encoding: str = "utf-8"
    rename: dict[str, str] = field(default_factory=dict)
    newlines_in_values: bool = False
    quote_char: str | bool = '"'
    double_quote: bool = True
    escape_char: str | bool = False
    skip_rows: int = 0
    block_size: int | None = None

    def __post_init__(self) -> None:
        if self.delimiter in ("tab", "\\t"):
            self.delimiter = "\t"
        check_fields(self, _READ_SPEC, "read")
        if len(self.delimiter) != 1:
            raise SchemaError(f"read: key 'delimiter' expects one character (or 'tab'), got {self.delimiter!r}")
        if self.quote_char is not False and self.quote_char == self.delimiter:
            raise SchemaError(f"read: key 'quote_char' {self.quote_char!r} is also the delimiter")


_READ_SPEC = {"delimiter": text(), "null_values": scalars(), "encoding": text(), "rename": mapping,
              "newlines_in_values": boolean, "quote_char": _char_or_false, "double_quote": boolean,
              "escape_char": _char_or_false, "skip_rows": integer(0), "block_size": integer(1 << 16, nullable=True)}
READ_ALIASES = {"sep": "delimiter", "separator": "delimiter", "na_values": "null_values", "nulls": "null_values",
                "columns": "rename", "charset": "encoding", "multiline": "newlines_in_values",
                "multiline_values": "newlines_in_values", "newlines": "newlines_in_values", "quotechar": "quote_char",
                "quote": "quote_char", "escapechar": "escape_char", "escape": "escape_char",
                "doublequote": "double_quote", "skiprows": "skip_rows", "skip": "skip_rows"}


def read_table(path: str | Path, fmt: str | None = None, columns: list[str] | None = None,
               options=None) -> pa.Table:
    """Read a CSV or Parquet file with pyarrow; ``options``: a ``ReadOptions`` (the schema's ``read:``).

    Clear errors for missing / empty / truncated files, duplicate column names and missing ``columns``
    (checked after the renames)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir() and fmt != "parquet" and p.suffix not in (".parquet", ".pq"):
        raise DataError(f"{p}: expected a csv or parquet file, got a directory")
    fmt = fmt or ("parquet" if p.suffix in (".parquet", ".pq") else "csv")
    if p.is_file() and p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    nulls = list(options.null_values or []) if options is not None else []
    try:
        if fmt == "parquet":
            t = pq.read_table(p)
        elif fmt == "csv":
            t = pacsv.read_csv(p, **_csv_options(options, nulls))
        else:
            raise DataError(f"{p}: unknown format '{fmt}' (expected csv or parquet)")
    except (pa.ArrowInvalid, OSError, LookupError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        kind = "truncated or not a parquet file" if fmt == "parquet" else "not a readable CSV file"
        hint = "" if fmt == "parquet" else csv_hint(msg, options)
        raise DataError(f"{p}: {kind} ({msg}){hint}") from None
    names = t.column_names
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"{p}: duplicate column name '{dup[0]}'")
    if t.num_rows == 0:
        raise DataError(f"{p}: file has no rows")
    if fmt == "parquet" and nulls:
        t = pa.table({c: null_tokens(t.column(c), nulls) for c in names})
    if options is not None and options.rename:
        t = rename_columns(t, options.rename, str(p))
    if columns:
        check_columns(t, columns, str(p))
    return t


def csv_hint(msg: str, options) -> str:
    """The ``read:`` key that may fix a CSV the reader could not parse ('' when none applies)."""
    o = options if options is not None else ReadOptions()
    if ("newlines_in_values" in msg or "spanning multiple lines" in msg or "Expected" in msg) \
            and not o.newlines_in_values and o.quote_char is not False:
        return ("; if a quoted value holds line breaks, set read: {newlines_in_values: true} in the schema"
                if "Expected" in msg else "; quoted values hold line breaks: set read: {newlines_in_values: true} "
                                          "in the schema")
    if "straddling" in msg or "block size" in msg:
        bigger = 4 * (o.block_size or 1 << 20)
        return f"; a row is longer than the block read at a time: set read: {{block_size: {bigger}}}"
    if ("UTF8" in msg or "UTF-8" in msg or "decode" in msg.lower()) and o.encoding.lower().replace("-", "") == "utf8":
        return "; the file is not UTF-8: set read: {encoding: latin-1} (or the file's encoding) in the schema"
    return ""


def _csv_options(options, nulls: list[str]) -> dict:
    if options is None:
        return {}
    read = pacsv.ReadOptions(encoding=options.encoding, skip_rows=options.skip_rows,
                             **({"block_size": options.block_size} if options.block_size else {}))
    parse = pacsv.ParseOptions(delimiter=options.delimiter, newlines_in_values=options.newlines_in_values,
                               quote_char=options.quote_char, double_quote=options.double_quote,
                               escape_char=options.escape_char)
    conv = pacsv.ConvertOptions(null_values=_PYARROW_NULLS + nulls, strings_can_be_null=True) if nulls \
        else pacsv.ConvertOptions()
    return {"read_options": read, "parse_options": parse, "convert_options": conv}


def rename_columns(t: pa.Table, rename: dict[str, str], where: str) -> pa.Table:
    missing = [c for c in rename if c not in t.column_names]
    if missing:
        close = difflib.get_close_matches(missing[0], t.column_names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataError(f"{where}: read.rename names column '{missing[0]}', which the file does not have{hint}")
    names = [rename.get(c, c) for c in t.column_names]
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"{where}: read.rename gives two columns the name '{dup[0]}'")
    return t.rename_columns(names)


def check_columns(t: pa.Table, columns: list[str], where: str) -> None:
    have = set(t.column_names)
    for c in columns:
        if c not in have:
            close = difflib.get_close_matches(c, list(have), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(f"{where}: missing column '{c}' required by the schema{hint}")


def null_tokens(col: pa.ChunkedArray | pa.Array, tokens: list[str] | None) -> pa.Array:
    """``col`` with the values equal to one of ``tokens`` set to null. Text columns compare as text;
    numeric columns compare numerically with the tokens that are numbers (``-1`` matches ``-1.0``)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not tokens:
        return col
    typ = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        hit = pc.is_in(col, value_set=pa.array(tokens, typ))
    elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
        nums = []
        for s in tokens:
            try:
                nums.append(float(s))
            except ValueError:
                pass
        if not nums:
            return col
        hit = pc.is_in(pc.cast(col, pa.float64()), value_set=pa.array(nums, pa.float64()))
    else:
        return col
    mask = pc.fill_null(hit, False)
    if not pc.any(mask).as_py():
        return col
    return pc.if_else(mask, pa.scalar(None, col.type), col)



def as_text(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as strings, the way categories are named: integral floats print without the fraction
    (3.0 and "3" are the same category)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_floating(col.type):
        arr = col.to_numpy(zero_copy_only=False)
        ok = ~np.isnan(arr)
        if ok.all() and np.all(arr == np.round(arr)):
            col = pa.array(arr.astype(np.int64))
    return pc.cast(col, pa.string())


def values_seen(col, k: int = 8) -> str:
    """The ``k`` most frequent values of a column, for error messages: ``'a', 'b' (+3 more)``."""
    vc = pc.value_counts(pc.drop_null(as_text(col)))
    v = vc.field("values").to_pylist()
    c = vc.field("counts").to_numpy()
    order = np.argsort(-c, kind="stable")
    shown = ", ".join(repr(v[i]) for i in order[:k])
    return (shown or "none") + (f" (+{len(v) - k} more)" if len(v) > k else "")
