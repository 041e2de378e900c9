"""Feature schema: which columns are features (sparse / dense / sequence), their groups, the domain
column and the task labels. Saved as JSON next to prepared data (DESIGN.md, "The flow of data")."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dynarec.data.read import READ_ALIASES, ReadOptions
from dynarec.data.text import check_text_keys
from dynarec.data.validate import boolean, bounds, check_fields, check_keys, increasing, integer, number, scalars, text
from dynarec.errors import SchemaError

KINDS = ("sparse", "dense", "sequence", "text")  # text: a sequence of word tokens
GROUPS = ("user", "item", "author", "context", "domain", "position")
from dynarec.data.task import _TASK_ALIASES, RESERVED, TASK_TYPES, Task  # noqa: F401,E402  (re-exported)


@dataclass
class Feature:
    """One input column.

    kind: ``sparse`` (categorical id), ``dense`` (float), ``sequence`` (variable-length ids) or ``text``
    (free text cut into word tokens: stored as a ``sequence`` with ``text: true``, so every model pools it
    like a sequence; ``lowercase`` (true), ``token_pattern`` (a regex of one token, ``\\w+``), ``ngrams``
    (1: words only; n: also the 2..n-word runs), ``max_vocab`` (the most frequent train tokens kept)).
    group: one of ``GROUPS``; models resolve their inputs by group.
    table: embedding table name; features naming the same table share it (default: own name).
    vocab_size: set by the encoder at preparation (ids 0..vocab_size-1, 0 = unknown/rare/padding).
    null_values: values of this column read as missing (``['?', -1]``), on top of the file's.
    dynamic: a sparse / sequence feature whose raw ids go to a dynamic (evicting) table at training time
    instead of a vocabulary fitted on the train split (online training by passes; not for dense features).

    Dense features, in this order (all fitted on the train split): missing -> ``fill_value`` in raw units
    (unset: missing stays missing and becomes 0 after scaling, i.e. the train mean when standardised);
    ``clip: [low, high]`` (raw units, either side null); ``transform: log1p``; then ``normalize``
    (``true`` / ``standard``: z-score, ``minmax``: to [0, 1], ``false``: none). ``buckets: n`` (train
    quantiles) or ``boundaries: [b1, ...]`` (raw units) turn the column into an embedded sparse field
    instead (ids 1..n_buckets; 0 = missing when no fill_value is set). ``embedding: ple | plr`` adds the
    (scaled) value as an embedded numeric field (``bins``: PLE edges at train quantiles, default 16;
    ``sigma``: PLR frequency init std, default 1.0); ``ple_edges`` is set at preparation.
    """

    name: str
    kind: str = "sparse"
    group: str = "context"
    table: str | None = None
    min_count: int = 1
    vocab_size: int = 0
    null_values: list[str] | None = None
    # dense options
    nan_policy: str = "fill"  # fill | error
    fill_value: float | None = None
    missing_indicator: bool = False
    normalize: bool | str = True
    clip: list[float | None] | None = None
    transform: str | None = None
    buckets: int | None = None
    boundaries: list[float] | None = None
    embedding: str | None = None  # ple | plr: a numeric embedding field (Gorishniy et al. 2022)
    bins: int | None = None  # ple: number of train-quantile bins (default PLE_BINS)
    sigma: float | None = None  # plr: frequency init std (default PLR_SIGMA)
    ple_edges: list[float] | None = None  # ple: set by the encoder at preparation (model units)
    # sequence options
    max_len: int = 20
    separator: str = "|"
    pooling: str = "mean"  # mean | sum
    # text options (kind: text is stored as kind: sequence with text: true)
    text: bool = False
    lowercase: bool | None = None  # text: default true
    token_pattern: str | None = None  # text: default text.TOKEN_PATTERN
    ngrams: int | None = None  # text: default 1
    max_vocab: int | None = None  # text: default unlimited
    # online training: ids go to a dynamic table, not a fitted vocabulary
    dynamic: bool = False

    def __post_init__(self) -> None:
        where = f"feature '{self.name}'"
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"feature: key 'name' expects a non-empty string, got {self.name!r}")
        if self.name in RESERVED:
            raise SchemaError(f"{where}: the name '{self.name}' is reserved (the prepared folder's raw row index)")
        check_fields(self, _FEATURE_SPEC, where)
        self._check_kind_keys(where)
        if self.kind != "dense":
            for k in _DENSE_ONLY:
                if getattr(self, k) != _DEFAULTS[k] and not (k == "fill_value" and self.fill_value == 0.0):
                    # (schema.json files written before fill_value defaulted to null hold 0.0 for every feature)
                    raise SchemaError(f"{where}: key '{k}' applies to dense features only (this one is {self.kind})")
        if self.dynamic and self.kind == "dense":
            raise SchemaError(f"{where}: key 'dynamic' applies to sparse and sequence features only (this one is dense)")
        if self.buckets is not None and self.boundaries is not None:
            raise SchemaError(f"{where}: give 'buckets' (train quantiles) or 'boundaries', not both")
        if self.embedding is not None and self.bucketised:
            raise SchemaError(f"{where}: key 'embedding' cannot be combined with "
                              f"'{'buckets' if self.buckets is not None else 'boundaries'}' (a bucketised feature is "
                              f"already an embedded id field)")
        for k, kind in (("bins", "ple"), ("sigma", "plr"), ("ple_edges", "ple")):
            if getattr(self, k) is not None and self.embedding != kind:
                hint = " (for bucketisation use 'buckets')" if k == "bins" else ""
                raise SchemaError(f"{where}: key '{k}' applies to features with embedding: {kind}{hint}")
        if self.bucketised:
            for k, why in (("transform", "buckets do not change under a monotone transform"),
                           ("missing_indicator", "missing values get their own id 0 when fill_value is unset")):
                if getattr(self, k) != _DEFAULTS[k]:
                    raise SchemaError(f"{where}: key '{k}' has no effect on a bucketised feature ({why})")
            if self.normalize not in (True, False, "standard"):
                raise SchemaError(f"{where}: key 'normalize' has no effect on a bucketised feature")
            if self.table not in (None, self.name):
                raise SchemaError(f"{where}: key 'table' cannot share a table: a bucketised feature's ids are its own")
        if self.table is None:
            self.table = self.name

    def _check_kind_keys(self, where: str) -> None:
        """Keys of one kind set on a feature of another kind have no effect: refused. ``kind: text`` becomes
        a sequence with ``text: true`` and its defaults filled in."""
        if self.kind == "text":
            self.kind, self.text = "sequence", True
        if self.text and self.kind != "sequence":
            raise SchemaError(f"{where}: key 'text' applies to sequence features only (use kind: text)")
        if self.kind == "dense" and self.min_count != 1:
            raise SchemaError(f"{where}: key 'min_count' applies to sparse, sequence and text features (this one is "
                              f"dense: it has no vocabulary; for rare values of a number use buckets)")
        if self.kind != "sequence":
            for k in ("max_len", "separator", "pooling"):
                if getattr(self, k) != _DEFAULTS[k]:
                    raise SchemaError(f"{where}: key '{k}' applies to sequence and text features only "
                                      f"(this one is {self.kind})")
        check_text_keys(self, where, _DEFAULTS["separator"])

    @property
    def bucketised(self) -> bool:
        """A dense column cut into buckets: embedded like a sparse id feature."""
        return self.kind == "dense" and (self.buckets is not None or self.boundaries is not None)

    @property
    def embedded(self) -> bool:
        return self.kind == "sparse" or self.bucketised

    @property
    def numeric_embedding(self) -> str | None:
        """'ple' / 'plr' for a dense feature fed through a numeric embedding, else None."""
        return self.embedding if self.kind == "dense" else None

    @property
    def scaling(self) -> str:
        """'standard', 'minmax' or 'none' (``normalize: true`` means standard)."""
        return {True: "standard", False: "none"}.get(self.normalize, self.normalize)


_FEATURE_SPEC = {
    "kind": text(KINDS), "group": text(GROUPS), "table": text(nullable=True), "min_count": integer(1),
    "vocab_size": integer(0), "dynamic": boolean, "null_values": scalars(), "nan_policy": text(("fill", "error")),
    "fill_value": number(nullable=True), "missing_indicator": boolean,
    "normalize": lambda v: v if isinstance(v, bool) else text(("standard", "minmax", "none"))(v),
    "clip": bounds, "transform": text(("log1p",), nullable=True), "buckets": integer(2, nullable=True),
    "boundaries": increasing(1), "embedding": text(("ple", "plr"), nullable=True),
    "bins": integer(2, nullable=True), "sigma": lambda v: _positive(v), "ple_edges": increasing(2),
    "max_len": integer(1), "separator": text(), "pooling": text(("mean", "sum")), "text": boolean,
    "lowercase": lambda v: v if v is None else boolean(v), "token_pattern": text(nullable=True),
    "ngrams": integer(1, nullable=True), "max_vocab": integer(1, nullable=True),
}

PLE_BINS = 16  # PLE: train-quantile bins per feature
PLR_SIGMA = 10.0  # PLR: frequency init std on standardised inputs (Adult: σ = 10 beats 1 by 0.005-0.006 AUC, docs)
# A dense feature declared in a schema mapping (YAML / JSON) without an ``embedding`` key (and not bucketised)
# gets this numeric embedding; ``embedding: null`` (or ``none``) keeps the plain scaled column
# (docs/benchmarks.md, "Defaults are the measured recipe"). Features built in code keep ``Feature``'s None.
DEFAULT_NUMERIC_EMBEDDING = "plr"


def _positive(v):
    x = number(nullable=True)(v)
    if x is not None and x <= 0:
        raise ValueError("a number > 0 or null")
    return x


_DEFAULTS = {f.name: f.default for f in fields(Feature)}
_DENSE_ONLY = ("fill_value", "missing_indicator", "clip", "transform", "buckets", "boundaries", "embedding", "bins",
               "sigma", "ple_edges")
_FEATURE_ALIASES = {"type": "kind", "dtype": "kind", "lower": "lowercase", "pattern": "token_pattern",
                    "regex": "token_pattern", "ngram_range": "ngrams", "n_grams": "ngrams", "max_features": "max_vocab",
                    "max_tokens": "max_vocab", "vocab_max": "max_vocab", "na_values": "null_values",
                    "nulls": "null_values",
                    "missing": "null_values", "n_buckets": "buckets", "num_buckets": "buckets",
                    "fill": "fill_value", "log": "transform", "scale": "normalize", "emb": "embedding",
                    "frequencies_sigma": "sigma", "n_bins": "bins", "num_bins": "bins"}


@dataclass
class Schema:
    """Features + domain column + task labels (+ optional user column for gAUC and timestamp for splits,
    + how to read the raw file)."""

    features: list[Feature]
    tasks: list[Task]
    domain: str
    user: str | None = None
    timestamp: str | None = None
    domain_values: list[str] = field(default_factory=list)  # decoded names of domain ids 1..D-1 (0 = unknown)
    read: ReadOptions = field(default_factory=ReadOptions)

    def __post_init__(self) -> None:
        for key in ("features", "tasks"):
            if not isinstance(getattr(self, key), list):
                raise SchemaError(f"schema: key '{key}' expects a list, got {type(getattr(self, key)).__name__}")
        check_fields(self, _SCHEMA_SPEC, "schema")
        self.features = [f if isinstance(f, Feature) else _build(Feature, _numeric_default(f),
                                                                   _item_where("feature", f, i), _FEATURE_ALIASES)
                         for i, f in enumerate(self.features)]
        self.tasks = [t if isinstance(t, Task) else _build(Task, t, _item_where("task", t, i), _TASK_ALIASES)
                      for i, t in enumerate(self.tasks)]
        if not isinstance(self.read, ReadOptions):
            self.read = _build(ReadOptions, {} if self.read is None else self.read, "read", READ_ALIASES)
        if not self.tasks:
            raise SchemaError("schema: at least one task label column is required under 'tasks'")
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"schema: feature declared twice: {sorted(dup)}")
        tnames = self.task_names
        dup = {n for n in tnames if tnames.count(n) > 1}
        if dup:
            raise SchemaError(f"schema: task declared twice: {sorted(dup)}")
        labels = {t.source for t in self.tasks} | set(tnames)
        bad = labels & set(names)
        if bad:
            raise SchemaError(f"schema: label column '{sorted(bad)[0]}' is also declared as a feature; a label cannot be an input")
        if self.domain in labels:
            raise SchemaError(f"schema: domain column '{self.domain}' is a task label")
        if self.domain not in names:
            # the domain id is always an input (group 'domain'): add it as a sparse feature
            self.features.insert(0, Feature(self.domain, kind="sparse", group="domain"))
        else:
            f = self.feature(self.domain)
            if f.kind != "sparse":
                raise SchemaError(f"schema: domain column '{self.domain}' must be a sparse feature, got kind '{f.kind}'")

    # ---- views ---------------------------------------------------------------------------------
    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise SchemaError(f"schema: no feature named '{name}'")

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise SchemaError(f"schema: no task named '{name}' (tasks: {', '.join(self.task_names)})")

    @property
    def sparse(self) -> list[Feature]:
        """Embedded id columns in declaration order: sparse features and bucketised dense ones."""
        return [f for f in self.features if f.embedded]

    @property
    def dense(self) -> list[Feature]:
        """Float columns fed as they are (bucketised dense features are in ``sparse``)."""
        return [f for f in self.features if f.kind == "dense" and not f.bucketised]

    @property
    def numeric_embedded(self) -> list[Feature]:
        """Dense features with ``embedding: ple | plr``, in schema order (each also a column of ``dense``)."""
        return [f for f in self.dense if f.numeric_embedding]

    @property
    def sequences(self) -> list[Feature]:
        return [f for f in self.features if f.kind == "sequence"]

    @property
    def fields(self) -> list[Feature]:
        """Embedded fields in model order: sparse features then sequence features."""
        return self.sparse + self.sequences

    @property
    def dense_dim(self) -> int:
        return sum(2 if f.missing_indicator else 1 for f in self.dense)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def task_types(self) -> dict[str, str]:
        """``{task: "binary" | "regression"}`` (what the losses and the metrics read)."""
        return {t.name: t.type for t in self.tasks}

    @property
    def num_domains(self) -> int:
        return self.feature(self.domain).vocab_size

    def groups(self) -> set[str]:
        return {f.group for f in self.features}

    def columns(self) -> list[str]:
        """Raw columns needed to prepare data with this schema (after ``read.rename``)."""
        cols = [f.name for f in self.features] + [t.source for t in self.tasks]
        for c in (self.user, self.timestamp):
            if c:
                cols.append(c)
        return list(dict.fromkeys(cols))

    # ---- io ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "schema") -> Schema:
        if not isinstance(d, dict):
            raise SchemaError(f"{source}: expected a mapping with keys features, tasks, domain")
        try:
            return _build(cls, d, "schema")
        except SchemaError as e:
            msg = str(e)
            raise SchemaError(msg if msg.startswith(source) else f"{source}: {msg.removeprefix('schema: ')}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        p = Path(path)
        if not p.exists():
            raise SchemaError(f"{p}: schema file not found")
        if not p.is_file():
            raise SchemaError(f"{p}: expected a schema file, got a directory")
        try:
            text = p.read_text()
            if p.suffix in (".yaml", ".yml"):
                from dynarec import yamlio

                d = yamlio.load(text)
            else:
                d = json.loads(text)
        except Exception as e:  # yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SchemaError(f"{p}: not a valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'} "
                              f"schema ({first})") from None
        return cls.from_dict(d, str(p))


_SCHEMA_SPEC = {"domain": text(), "user": text(nullable=True), "timestamp": text(nullable=True),
                "domain_values": lambda v: scalars(nullable=False)(v) if v else []}


def _item_where(kind: str, d: Any, i: int) -> str:
    if isinstance(d, (str, int, float)) and not isinstance(d, bool):  # `tasks: [click]`: name the value, show the form
        raise SchemaError(f"{kind}s[{i}]: expected a mapping such as {{name: {d}}}, got the plain value {d!r}")
    name = d.get("name") if isinstance(d, dict) else None
    return f"{kind} '{name}'" if isinstance(name, str) and name else f"{kind}s[{i}]"


def _numeric_default(d: Any) -> Any:
    """A feature mapping with the default numeric encoding filled in: ``kind: dense`` without ``embedding``,
    ``buckets`` or ``boundaries`` -> ``embedding: DEFAULT_NUMERIC_EMBEDDING``; ``embedding: none`` -> null.
    Saved schemas (schema.json) always carry the key, so folders prepared before this default keep theirs."""
    if not isinstance(d, dict) or d.get("kind") != "dense":
        return d
    if d.get("embedding") == "none":
        return {**d, "embedding": None}
    if "embedding" not in d and d.get("buckets") is None and d.get("boundaries") is None:
        return {**d, "embedding": DEFAULT_NUMERIC_EMBEDDING}
    return d


def _build(cls, d: Any, where: str, aliases: dict[str, str] | None = None):
    """Instantiate a schema dataclass from a mapping: unknown keys (with the closest valid one), missing
    required keys, then every value through the class's checkers (in its ``__post_init__``)."""
    check_keys(cls, d, where, aliases)
    missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise SchemaError(f"{where}: missing required key '{missing[0]}'")
    return cls(**d)
