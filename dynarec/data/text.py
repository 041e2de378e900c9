"""Text features (``kind: text``): a free-text column cut into word tokens -- lowercased (``lowercase``),
the matches of a regular expression (``token_pattern``, default ``\\w+``: 'Dress!' -> 'dress'), plus the
runs of 2..``ngrams`` consecutive words joined by a space -- then encoded and pooled like a sequence
feature (the vocabulary, ``min_count`` and ``max_vocab`` are fitted on the train split). Tokenizing runs
once per distinct value of the column, so a column with many repeated values costs little."""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dynarec.data.read import as_text
from dynarec.errors import SchemaError

TOKEN_PATTERN = r"\w+"  # a run of letters, digits or '_' (Unicode): 'Dress!' -> 'dress'
TEXT_KEYS = ("lowercase", "token_pattern", "ngrams", "max_vocab")  # null (unset) on every other feature


def check_text_keys(f, where: str, default_separator: str) -> None:
    """The text keys of schema feature ``f``: refused on a feature that is no text (no effect there); on a
    text feature, defaults filled in, the pattern compiled, ``separator`` and ``dynamic`` refused."""
    if not f.text:
        for k in TEXT_KEYS:
            if getattr(f, k) is not None:
                raise SchemaError(f"{where}: key '{k}' applies to kind: text features only (this one is {f.kind})")
        return
    if f.separator != default_separator:
        raise SchemaError(f"{where}: key 'separator' has no effect on a text feature (its tokens are the matches "
                          f"of token_pattern)")
    if f.dynamic:  # online/ids.py reads sequence ids by separator
        raise SchemaError(f"{where}: key 'dynamic' applies to sparse and sequence features only (this one is text)")
    f.lowercase = True if f.lowercase is None else f.lowercase
    f.token_pattern = f.token_pattern or TOKEN_PATTERN
    f.ngrams = f.ngrams or 1
    try:
        re.compile(f.token_pattern)
    except re.error as e:
        raise SchemaError(f"{where}: key 'token_pattern' is not a valid regular expression ({f.token_pattern!r}: "
                          f"{e})") from None


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def tokens(value: str | None, f) -> list[str]:
    """The tokens of one text value for text feature ``f``: its words in order, then its 2-word runs, ...
    up to ``f.ngrams``-word runs. A missing or empty value has none.

    Example::

        >>> from dynarec.data.schema import Feature
        >>> tokens("Love this dress!", Feature("title", kind="text", ngrams=2))
        ['love', 'this', 'dress', 'love this', 'this dress']
    """
    if not value:
        return []
    s = value.lower() if f.lowercase else value
    words = [m.group(0) for m in _compiled(f.token_pattern).finditer(s) if m.group(0)]
    out = list(words)
    for n in range(2, (f.ngrams or 1) + 1):
        out += [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    return out


def tokenize(col: pa.ChunkedArray | pa.Array, f) -> tuple[pa.Array, np.ndarray]:
    """A text column -> (flat string tokens of every row in order, row offsets Int64 [N + 1]), as
    ``_seq_values`` returns a separated sequence column. Numbers are read as their text."""
    col = as_text(col)
    enc = pc.dictionary_encode(col)
    uniq = [tokens(v, f) for v in enc.dictionary.to_pylist()]
    lens = np.array([len(t) for t in uniq] + [0], dtype=np.int64)  # the last entry: a missing value
    idx = pc.fill_null(enc.indices, len(uniq)).to_numpy(zero_copy_only=False).astype(np.int64)
    flat_u = pa.array([t for ts in uniq for t in ts], pa.string())  # the tokens of each distinct value, in turn
    start_u = np.concatenate([[0], np.cumsum(lens)[:-1]])
    row_len = lens[idx]
    offsets = np.concatenate([[0], np.cumsum(row_len)]).astype(np.int64)
    pos = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], row_len)
    return flat_u.take(pa.array(np.repeat(start_u[idx], row_len) + pos)), offsets
