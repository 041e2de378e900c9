import sys

import pytest
import torch

from dynarec.errors import DynarecError
from dynarec.retrieval.data import CSR
from dynarec.retrieval.index import ann_recall, exact_topk, require_faiss

try:
    import faiss  # noqa: F401
    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss-cpu is not installed: pip install dynarec[faiss]")


def _data(n_items=2000, n_q=50, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_q, d, generator=g), torch.randn(n_items, d, generator=g)


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(DynarecError, match=r"pip install dynarec\[faiss\]"):
        require_faiss()


def test_exact_topk_masks_excluded():
    q, v = _data(n_items=30, n_q=3)
    s, i = exact_topk(q, v, 5)
    assert torch.equal(i, torch.topk(q @ v.T, 5).indices)
    ex = CSR.from_pairs(torch.tensor([0, 0, 2]), torch.tensor([int(i[0, 0]), int(i[0, 3]), int(i[2, 1])]), 3)
    _, i2 = exact_topk(q, v, 5, exclude=ex, batch_size=2)
    assert int(i[0, 0]) not in i2[0].tolist() and int(i[2, 1]) not in i2[2].tolist()
    assert torch.equal(i2[1], i[1])


@needs_faiss
@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_faiss_flat_equals_exact_topk(metric):
    from dynarec.retrieval.index import ItemIndex

    q, v = _data()
    s_ref, i_ref = exact_topk(q, v, 20, metric=metric)
    s, i = ItemIndex(v, "flat", metric).search(q, 20)
    assert torch.equal(i, i_ref)
    assert torch.allclose(s, s_ref, atol=1e-4)
    assert ann_recall(i, i_ref) == 1.0


@needs_faiss
def test_faiss_hnsw_recall_and_exclusion():
    from dynarec.retrieval.index import ItemIndex

    q, v = _data()
    _, i_ref = exact_topk(q, v, 10)
    _, i = ItemIndex(v, "hnsw", hnsw_m=16, ef_search=64).search(q, 10)
    assert ann_recall(i, i_ref) > 0.9
    ex = CSR.from_pairs(torch.arange(50), i_ref[:, 0], 50)           # drop each query's best item
    flat = ItemIndex(v, "flat", ids=torch.arange(2000) + 100)
    _, i_ex = flat.search(q, 10, exclude=ex)
    assert torch.equal(i_ex - 100, exact_topk(q, v, 10, exclude=ex)[1])


def test_ann_recall_counts_overlap():
    assert ann_recall(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[3, 2, 9], [7, 8, 9]])) == pytest.approx(1 / 3)


@needs_faiss
def test_index_save_load_round_trip(tmp_path):
    from dynarec.retrieval.index import ItemIndex

    q, v = _data(n_items=300, n_q=5)
    idx = ItemIndex(v, "hnsw", metric="cosine")
    idx.save(tmp_path / "items.faiss")
    back = ItemIndex.load(tmp_path / "items.faiss", metric="cosine")
    assert back.kind == "hnsw" and len(back) == 300
    assert torch.equal(back.search(q, 7)[1], idx.search(q, 7)[1])
