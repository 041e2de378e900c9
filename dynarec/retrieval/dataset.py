"""Retrieval view of a prepared folder's splits (train / valid / test :class:`TensorTable`s).

* positives: the rows whose label of ``task`` (a binary task, the first by default) is 1;
* a query is a distinct (user, domain) pair (one per user when the domain is a user attribute, as
  MovieLens' age groups; one per user and domain on Douban); its representative row carries its features;
* the corpus is every item id of the data (items unknown to the encoders, id 0, are left out and counted);
* seen items (masked at evaluation): every training interaction of the user (any label); the test split
  also masks the validation interactions (known history by then).

The split itself is the prepared folder's (``dynarec data prepare --split leave_last_out`` or ``random``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynarec.data.table import TensorTable
from dynarec.errors import ConfigError, DataError
from dynarec.retrieval.data import CSR

__all__ = ["RetrievalData", "build_retrieval_data", "item_feature", "EvalSet"]


def item_feature(schema) -> str:
    """The sparse feature that identifies an item: ``item_id`` when present, else the first of group 'item'."""
    names = [f.name for f in schema.sparse if f.group == "item"]
    if not names:
        raise ConfigError("retrieval needs a sparse feature in group 'item' (the item id)")
    return "item_id" if "item_id" in names else names[0]


@dataclass
class EvalSet:
    """Queries of one split with a positive: ``queries`` Long [Q] (rows of ``RetrievalData.queries``),
    ``relevant`` CSR over them (item rows), ``seen`` CSR over user ids (item rows masked)."""

    queries: torch.Tensor
    relevant: CSR
    seen: CSR


@dataclass
class RetrievalData:
    schema: object
    task: str
    train: TensorTable            # the positive training pairs
    train_query: torch.Tensor     # Long [N]: query row of each pair
    train_item: torch.Tensor      # Long [N]: item row of each pair
    queries: TensorTable          # one representative row per query
    query_user: torch.Tensor      # Long [Q] encoded user id
    query_domain: torch.Tensor    # Long [Q] domain id
    items: TensorTable            # one representative row per corpus item
    item_ids: torch.Tensor        # Long [I] encoded item id of each item row
    evals: dict = field(default_factory=dict)   # split -> EvalSet
    dropped: dict = field(default_factory=dict)  # split -> positives left out (unknown user / item)
    domain_names: list = field(default_factory=list)

    def item_counts(self) -> torch.Tensor:
        """Training positives per item row (Float [I])."""
        return torch.bincount(self.train_item, minlength=len(self.item_ids)).float()


def _cat(tables: list[TensorTable]) -> TensorTable:
    t0 = tables[0]
    return TensorTable(t0.schema, torch.cat([t.sparse for t in tables]), torch.cat([t.dense for t in tables]),
                       {k: torch.cat([t.labels[k] for t in tables]) for k in t0.labels},
                       {k: torch.cat([t.sequences[k] for t in tables]) for k in t0.sequences})


def _first_rows(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique keys sorted, the first row holding each)."""
    uniq, inv = torch.unique(key, return_inverse=True)
    first = torch.full((len(uniq),), len(key), dtype=torch.long)
    first.scatter_reduce_(0, inv, torch.arange(len(key)), reduce="amin")
    return uniq, first


def build_retrieval_data(schema, tables: dict, task: str = "", domain_names=None) -> RetrievalData:
    """Retrieval view of ``tables`` ({"train", "valid", "test"}: TensorTable) for the binary ``task``."""
    tname = task or schema.tasks[0].name
    if tname not in schema.task_names:
        raise ConfigError(f"model.task: unknown task '{tname}' (tasks: {', '.join(schema.task_names)})")
    if schema.task(tname).type != "binary":
        raise ConfigError(f"model.task: '{tname}' is a {schema.task(tname).type} task; retrieval positives "
                          "need a binary task")
    if not schema.user:
        raise ConfigError("retrieval needs 'user' in the schema (the user id column)")
    cols = [f.name for f in schema.sparse]
    ucol, icol, dcol = cols.index(schema.user), cols.index(item_feature(schema)), cols.index(schema.domain)
    splits = [s for s in ("train", "valid", "test") if s in tables]
    if "train" not in splits:
        raise DataError("retrieval: the data has no train split")
    whole = _cat([tables[s] for s in splits])
    split_of = torch.cat([torch.full((len(tables[s]),), k) for k, s in enumerate(splits)])
    user, item, dom = whole.sparse[:, ucol], whole.sparse[:, icol], whole.sparse[:, dcol]
    n_dom = max(schema.num_domains, 1) + 1
    item_uniq, item_first = _first_rows(item[item > 0])
    known = torch.nonzero(item > 0).view(-1)
    items = whole.subset(known[item_first])
    item_row = torch.full((int(item.max()) + 1,), -1, dtype=torch.long)
    item_row[item_uniq] = torch.arange(len(item_uniq))
    qkey = user * n_dom + dom
    ok_u = user > 0
    q_uniq, q_first = _first_rows(qkey[ok_u])
    queries = whole.subset(torch.nonzero(ok_u).view(-1)[q_first])
    n_users = schema.feature(schema.user).vocab_size
    label = whole.labels[tname]
    usable = (user > 0) & (item > 0)
    pos = (label == 1) & usable
    qrow = torch.searchsorted(q_uniq, qkey)
    irow = item_row[item.clamp_min(0)]
    dropped = {s: int(((label == 1) & ~usable & (split_of == k)).sum()) for k, s in enumerate(splits)}
    tr = torch.nonzero(pos & (split_of == 0)).view(-1)
    data = RetrievalData(schema, tname, whole.subset(tr), qrow[tr], irow[tr], queries, q_uniq // n_dom,
                         q_uniq % n_dom, items, item_uniq, dropped=dropped, domain_names=list(domain_names or []))
    if len(tr) == 0:
        raise DataError(f"retrieval: no training positives of task '{tname}'")
    history = usable & (split_of == 0)
    for k, s in enumerate(splits):
        if s == "train":
            continue
        seen_rows = torch.nonzero(history).view(-1)
        seen = CSR.from_pairs(user[seen_rows], irow[seen_rows], n_users)
        ev = torch.nonzero(pos & (split_of == k)).view(-1)
        qs, inv = torch.unique(qrow[ev], return_inverse=True)
        data.evals[s] = EvalSet(qs, CSR.from_pairs(inv, irow[ev], len(qs)), seen)
        history = history | (usable & (split_of == k))
    return data
