"""Eviction scores of the dynamic table and the string-id hash.

Scores (higher = kept), for a slot with ``count`` updates since admission, last update at step ``last``,
current step ``t`` and a per-pass decayed count ``dcount``:

- ``lfu``: ``count`` (TorchRec MCH LFU).
- ``lru``: ``last`` (same order as TorchRec's ``-(t - last + 1)^decay``).
- ``distance_lfu``: ``count / (t - last + 1)^decay`` (TorchRec DistanceLFU).
- ``ttl``: remaining time to live ``last + ttl_steps - t`` (HierarchicalKV / MPZCH TTL); ids past it expire.
- ``feature`` (dynarec choice): the exponentially decayed count ``dcount <- gamma * dcount + n_pass`` at
  every pass end. It keeps LFU's frequency signal but forgets old popularity at half-life
  ``log(0.5)/log(gamma)`` passes, so ids that drifted out of fashion leave before fresh popular ones
  (PEPNet asks for a score that is neither plain LFU nor LRU; its formula is not published).
"""
import hashlib

import torch

SCORES = ("lfu", "lru", "distance_lfu", "ttl", "feature")


def hash_string(s: str) -> int:
    """Non-negative 63-bit id of a string (BLAKE2b, 8 bytes, top bit cleared: ids < 0 are padding).

    Collisions do not matter at these sizes: some pair of n ids collides with probability about n^2 / 2^64,
    i.e. 5e-6 for 10M distinct strings, far below the loss from eviction itself.
    """
    h = int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
    return h & (2 ** 63 - 1)


def score(name, count, last, dcount, t, decay=1.0, ttl_steps=0):
    """Scores of slots as float64 tensors. Args: int64 tensors ``count``, ``last`` [N], float64 ``dcount`` [N]."""
    if name == "lfu":
        return count.double()
    if name == "lru":
        return last.double()
    if name == "distance_lfu":
        return count.double() / (t - last + 1).double() ** decay
    if name == "ttl":
        return (last + ttl_steps - t).double()
    if name == "feature":
        return dcount.clone()
    raise ValueError(name)


def score_py(name, count, last, dcount, t, decay=1.0, ttl_steps=0):
    """The same score for one slot, in plain Python (reference implementation)."""
    if name == "lfu":
        return float(count)
    if name == "lru":
        return float(last)
    if name == "distance_lfu":
        return float(count) / float(t - last + 1) ** decay
    if name == "ttl":
        return float(last + ttl_steps - t)
    return float(dcount)
