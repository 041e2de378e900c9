import math

import pytest
import torch

from dynarec.retrieval.data import CSR
from dynarec.retrieval.metrics import retrieval_metrics


def _reference(scores, relevant, seen, ks):
    """Brute-force Python metrics per query (None when the query has no retrievable positive)."""
    out = []
    for q in range(len(scores)):
        ranked = sorted((i for i in range(len(scores[q])) if i not in seen[q]), key=lambda i: -scores[q][i])
        rel = set(relevant[q]) - set(seen[q])
        if not rel:
            out.append(None)
            continue
        m = {}
        for k in ks:
            top = ranked[:k]
            hits = [i in rel for i in top]
            m[f"recall@{k}"] = sum(hits) / len(rel)
            m[f"hitrate@{k}"] = float(any(hits))
            m[f"mrr@{k}"] = next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0)
            dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
            m[f"ndcg@{k}"] = dcg / sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
        out.append(m)
    return out


def test_metrics_equal_bruteforce_with_seen_masked():
    g = torch.Generator().manual_seed(0)
    n_users, n_items = 4, 70
    users = torch.randn(n_users, 5, generator=g, dtype=torch.float64)
    items = torch.randn(n_items, 5, generator=g, dtype=torch.float64)
    scores = (users @ items.T).tolist()
    # the best-scored items are seen, so masking changes the ranking
    order = [sorted(range(n_items), key=lambda i: -scores[u][i]) for u in range(n_users)]
    seen = [order[u][:8:2] for u in range(n_users)]
    query_user = torch.tensor([0, 1, 2, 3, 1, 2])                 # two queries share users 1 and 2
    relevant = [[order[0][1], order[0][30]], [order[1][12]], [order[2][0], order[2][45]],  # 2: one seen
                [order[3][0]], [order[1][2], order[1][3], order[1][60]], [order[2][25]]]  # 3: only seen
    domain = torch.tensor([0, 1, 0, 1, 1, 0])
    rel_csr = CSR.from_pairs(torch.tensor([q for q, r in enumerate(relevant) for _ in r]),
                             torch.tensor([i for r in relevant for i in r]), len(relevant))
    seen_csr = CSR.from_pairs(torch.tensor([u for u, s in enumerate(seen) for _ in s]),
                              torch.tensor([i for s in seen for i in s]), n_users)
    ks = (1, 3, 10, 20, 50)
    got = retrieval_metrics(users[query_user], items, rel_csr, seen_csr, query_user=query_user, domain=domain,
                            domain_names=["a", "b"], ks=ks, batch_size=4)
    ref = _reference([scores[int(u)] for u in query_user], relevant, [seen[int(u)] for u in query_user], ks)
    assert ref[3] is None                                          # all positives seen: skipped
    for name, entry in got.items():
        for label, dom in (("all", None), ("domain=a", 0), ("domain=b", 1)):
            vals = [r[name] for q, r in enumerate(ref) if r is not None and (dom is None or int(domain[q]) == dom)]
            assert entry[label] == pytest.approx(sum(vals) / len(vals), abs=1e-12), (name, label)
    assert set(got) == {f"{m}@{k}" for m in ("recall", "ndcg", "mrr", "hitrate") for k in ks}
    # without the mask the seen items take the top ranks and the numbers change
    unmasked = retrieval_metrics(users[query_user], items, rel_csr, None, ks=ks)
    assert unmasked["recall@3"]["all"] != got["recall@3"]["all"]
