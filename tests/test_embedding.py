import torch

from dynarec.data.schema import Feature, Schema, Task
from dynarec.nn.embedding import FeatureEmbedding
from dynarec.tables.fused import fused_layout, schema_fields


def _schema():
    s = Schema(features=[Feature("d", "sparse", "domain"), Feature("a", "sparse", "item", table="t"),
                         Feature("b", "sparse", "item", table="t"), Feature("c", "sparse", "user"),
                         Feature("seq", "sequence", "user", table="t", pooling="mean"),
                         Feature("seq2", "sequence", "user", table="c", pooling="sum")],
               tasks=[Task("y")], domain="d")
    for f, n in zip(s.fields, [3, 10, 10, 5, 10, 5]):
        f.vocab_size = n
    return s


def _emb():
    return FeatureEmbedding(fused_layout("features", schema_fields(_schema()), 4))


def test_shared_tables_share_rows_and_one_fused_weight():
    emb = _emb()
    assert emb.weight.weight.shape[0] == 3 + 10 + 5  # table t counted once
    sp = torch.tensor([[1, 7, 7, 2]])
    seqs = {"seq": torch.tensor([[7, 0, 0]]), "seq2": torch.tensor([[2, 0]])}
    out = emb(sp, seqs)
    assert out.shape == (1, 6, 4)
    assert torch.equal(out[0, 1], out[0, 2])  # a and b share table t
    assert torch.allclose(out[0, 4], out[0, 1])  # mean over a single valid id == that id
    assert torch.allclose(out[0, 5], out[0, 3])  # seq2 shares table c with feature c


def test_sequence_pooling_masks_padding():
    emb = _emb()
    sp = torch.tensor([[1, 1, 1, 1]])
    seqs = {"seq": torch.tensor([[3, 4, 0]]), "seq2": torch.tensor([[1, 2]])}
    out = emb(sp, seqs)
    W = emb.weight.weight
    o = emb.table_offsets
    assert torch.allclose(out[0, 4], (W[o["t"] + 3] + W[o["t"] + 4]) / 2, atol=1e-7)
    assert torch.allclose(out[0, 5], W[o["c"] + 1] + W[o["c"] + 2], atol=1e-7)


def test_gradients_are_sparse_and_touch_only_used_rows():
    emb = _emb()
    out = emb(torch.tensor([[1, 2, 3, 4]]), {"seq": torch.tensor([[5, 0, 0]]), "seq2": torch.tensor([[0, 0]])})
    out.sum().backward()
    g = emb.weight.weight.grad
    assert g.is_sparse
    dense = g.to_dense()
    rows = set(torch.nonzero(dense.abs().sum(1)).flatten().tolist())
    o = emb.table_offsets
    assert rows == {o["d"] + 1, o["t"] + 2, o["t"] + 3, o["c"] + 4, o["t"] + 5}  # padding ids get no gradient


def test_layer_used_alone_owns_its_table_in_a_private_collection():
    emb = _emb()
    assert emb.tables.owns(emb.weight) and list(emb.tables.specs) == ["features"]
    assert list(emb.state_dict()) == ["tables.features.weight"]  # the table is stored once
    assert emb.layout.spec.rows == 18 and emb.layout.spec.features == ("d", "a", "b", "c", "seq", "seq2")
