"""``POST /retrieve`` of ``dynarec serve --retriever CHECKPOINT``: top-k unseen items for raw user ids from a
two-tower checkpoint (:class:`dynarec.retrieval.lookup.Retriever`, loaded once at start), next to the ranking
bundle's ``/predict`` — retrieve, then rank, in one service.

Request ``{"users": ["405", ...], "k": 20, "index": "flat" | "exact" | "hnsw", "domain": "d1"}`` (``k``,
``index`` and ``domain`` optional) -> ``{"results": [{"user", "items", "scores"}, ...], "index": ...}``.
A client mistake (no users, a bad ``k`` or index, an unknown user or domain) is a 4xx with a one-line JSON
error; the lookup runs on the event loop (exact / FAISS search of one batch of users: milliseconds)."""
from __future__ import annotations

from dynarec.errors import DynarecError

MAX_K = 1000


class RetrieveError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_request(payload, max_users: int) -> tuple[list[str], int, str, str | None]:
    """(users, k, index, domain) of a decoded ``/retrieve`` body; a :class:`RetrieveError` (422) otherwise."""
    from dynarec.retrieval.lookup import INDEXES

    if not isinstance(payload, dict) or "users" not in payload:
        raise RetrieveError(422, 'expected a JSON object {"users": [user ids], "k": 20}')
    extra = sorted(set(payload) - {"users", "k", "index", "domain"})
    if extra:
        raise RetrieveError(422, f"unknown key '{extra[0]}' (keys: users, k, index, domain)")
    users = payload["users"]
    if not isinstance(users, list) or not users:
        raise RetrieveError(422, "'users': expected a non-empty list of user ids")
    if len(users) > max_users:
        raise RetrieveError(413, f"'users': {len(users)} users, at most {max_users} per request")
    for u in users:
        if isinstance(u, bool) or not isinstance(u, (str, int)):
            raise RetrieveError(422, f"'users': expected string or integer ids, got {type(u).__name__} {u!r}")
    k = payload.get("k", 20)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise RetrieveError(422, f"'k': expected an integer in [1, {MAX_K}], got {k!r}")
    index = payload.get("index", "flat")
    if index not in INDEXES:
        raise RetrieveError(422, f"'index': expected one of {', '.join(INDEXES)}, got {index!r}")
    domain = payload.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise RetrieveError(422, f"'domain': expected a domain name (string), got {domain!r}")
    return [str(u) for u in users], k, index, domain


def answer(retriever, payload, max_users: int) -> dict:
    """The ``/retrieve`` answer for a decoded body; :class:`RetrieveError` for client mistakes."""
    users, k, index, domain = parse_request(payload, max_users)
    try:
        results = retriever.lookup(users, k, index, domain)
    except DynarecError as e:  # an unknown user / domain, or a user with no interaction there
        raise RetrieveError(422, str(e)) from None
    return {"results": results, "index": index}
