"""Top-k lookup from a retrieval checkpoint: raw user id -> raw item ids with scores, seen items excluded.

``retrieval.pt`` (written next to ``model.pt`` by training) holds the corpus vectors of the trained towers
(item vectors, already normalised for the score), every query's vector with its encoded user and domain,
and the items each user interacted with in training (the "seen" mask). :class:`Retriever` loads it with the
checkpoint's encoders; :func:`retrieve` is the function a server endpoint calls. Indexes: ``exact`` (torch
brute force), ``flat`` (FAISS ``IndexFlatIP``, exact) and ``hnsw`` (approximate; its recall against exact is
reported by :meth:`Retriever.ann_recall`)."""
from __future__ import annotations

from pathlib import Path

import torch

from dynarec.errors import ConfigError, DataError
from dynarec.retrieval.data import CSR
from dynarec.retrieval.index import ItemIndex, ann_recall, exact_topk

__all__ = ["save_lookup", "Retriever", "retrieve", "LOOKUP_FILE", "INDEXES"]

LOOKUP_FILE = "retrieval.pt"
INDEXES = ("exact", "flat", "hnsw")


def save_lookup(folder: Path, model, data, vectors) -> Path:
    """Write ``retrieval.pt`` for ``model`` trained on ``data`` (``vectors``: its corpus vectors)."""
    q, v = vectors
    ev = data.evals.get("valid")
    seen = ev.seen if ev is not None else CSR.from_pairs(data.query_user[data.train_query], data.train_item,
                                                         data.schema.feature(data.schema.user).vocab_size)
    blob = {"query_vectors": q.float().cpu(), "item_vectors": v.float().cpu(), "query_user": data.query_user,
            "query_domain": data.query_domain, "item_ids": data.item_ids, "seen_indptr": seen.indptr,
            "seen_indices": seen.indices, "user_table": data.schema.feature(data.schema.user).table,
            "item_table": _item_table(data.schema), "query_counts": torch.bincount(
                data.train_query, minlength=len(data.query_user))}
    torch.save(blob, Path(folder) / LOOKUP_FILE)
    return Path(folder) / LOOKUP_FILE


def _item_table(schema) -> str:
    from dynarec.retrieval.dataset import item_feature

    return schema.feature(item_feature(schema)).table


class Retriever:
    """Lookups on one checkpoint folder (``model.pt`` + ``retrieval.pt``)."""

    def __init__(self, checkpoint: str | Path):
        from dynarec.train.checkpoint import read_checkpoint

        p = Path(checkpoint)
        f = p / LOOKUP_FILE
        if not f.exists():
            raise DataError(f"{p}: no {LOOKUP_FILE}; is it a retrieval checkpoint (dynarec train --model two_tower)?")
        blob = torch.load(f, map_location="cpu", weights_only=False)
        ck = read_checkpoint(p / "model.pt")
        enc = (ck.get("encoders") or {}).get("categorical", {})
        self.users, self.items = enc.get(blob["user_table"], []), enc.get(blob["item_table"], [])
        self.domains = enc.get(ck["schema"]["domain"], []) if isinstance(ck.get("schema"), dict) else []
        self.user_index = {u: i + 1 for i, u in enumerate(self.users)}
        self.q, self.v = blob["query_vectors"], blob["item_vectors"]
        self.query_user, self.query_domain = blob["query_user"], blob["query_domain"]
        self.query_counts, self.item_ids = blob["query_counts"], blob["item_ids"]
        self.seen = CSR(blob["seen_indptr"], blob["seen_indices"])
        self.model = ck["model"]
        self._indexes: dict[str, ItemIndex] = {}

    def query_row(self, user, domain: str | None = None) -> int:
        """The query row of raw user id ``user`` (and domain name): with no domain, the user's query with the
        most training positives."""
        uid = self.user_index.get(str(user))
        if uid is None:
            raise DataError(f"user '{user}' is not a user of the training data ({len(self.users):,} known users)")
        rows = torch.nonzero(self.query_user == uid).view(-1)
        if domain is not None:
            if domain not in self.domains:
                raise ConfigError(f"--domain: unknown domain '{domain}' (domains: {', '.join(self.domains)})")
            rows = rows[self.query_domain[rows] == self.domains.index(domain) + 1]
            if not len(rows):
                raise DataError(f"user '{user}' has no interaction in domain '{domain}'")
        if not len(rows):
            raise DataError(f"user '{user}' has no training interaction")
        return int(rows[torch.argmax(self.query_counts[rows])])

    def index(self, kind: str) -> ItemIndex:
        if kind not in self._indexes:
            self._indexes[kind] = ItemIndex(self.v, kind=kind)
        return self._indexes[kind]

    def topk(self, rows: torch.Tensor, k: int, kind: str = "flat") -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [R, k], item rows [R, k]; −1 where fewer than k unseen items exist) for query ``rows``."""
        if kind not in INDEXES:
            raise ConfigError(f"--index: expected one of {', '.join(INDEXES)}, got '{kind}'")
        if not k >= 1:
            raise ConfigError(f"--k: expected a number >= 1, got {k}")
        users = self.query_user[rows]
        if kind == "exact":
            kk = min(k, len(self.v))
            s, i = exact_topk(self.q[rows], self.v, kk, exclude=self.seen, exclude_rows=users)
            return s, torch.where(torch.isinf(s), torch.full_like(i, -1), i)
        return self.index(kind).search(self.q[rows], k, exclude=self.seen, exclude_rows=users)

    def lookup(self, users, k: int = 20, kind: str = "flat", domain: str | None = None) -> list[dict]:
        """``[{"user": id, "items": [raw item ids], "scores": [...]}, ...]`` for raw user ids ``users``."""
        rows = torch.tensor([self.query_row(u, domain) for u in users], dtype=torch.long)
        scores, idx = self.topk(rows, k, kind)
        out = []
        for u, s, i in zip(users, scores.tolist(), idx.tolist()):
            keep = [(x, y) for x, y in zip(i, s) if x >= 0]
            out.append({"user": str(u), "items": [self.items[int(self.item_ids[x]) - 1] for x, _ in keep],
                        "scores": [float(y) for _, y in keep]})
        return out

    def ann_recall(self, k: int = 20, kind: str = "hnsw", rows: torch.Tensor | None = None) -> float:
        """Mean |index top-k ∩ exact top-k| / k over query ``rows`` (default every query), seen masked."""
        rows = torch.arange(len(self.q)) if rows is None else rows
        return ann_recall(self.topk(rows, k, kind)[1], self.topk(rows, k, "exact")[1])


def retrieve(checkpoint_or_model, user_ids, k: int = 20, index: str = "flat") -> list[dict]:
    """Top-k unseen items for each raw user id: ``[{"user", "items", "scores"}, ...]``.

    ``checkpoint_or_model``: a checkpoint folder or a :class:`Retriever` (load it once for a server)."""
    r = checkpoint_or_model if isinstance(checkpoint_or_model, Retriever) else Retriever(checkpoint_or_model)
    return r.lookup(list(user_ids), k, index)
