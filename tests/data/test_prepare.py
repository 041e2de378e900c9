import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.data.prepare import load_prepared, prepare_table, read_table, split_indices
from dynarec.data.synthetic import DOMAIN_SHARES, generate, synthetic_schema
from dynarec.errors import DataError


@pytest.fixture(scope="module")
def raw():
    return generate(6000, seed=1)


def test_random_and_temporal_splits_are_disjoint_and_cover(raw):
    t, _ = raw
    s = synthetic_schema()
    for how in ("random", "temporal"):
        idx = split_indices(t, s, how, seed=3)
        allidx = np.concatenate([idx["train"], idx["valid"], idx["test"]])
        assert len(np.unique(allidx)) == len(allidx) == t.num_rows
    idx = split_indices(t, s, "temporal")
    ts = t.column("ts").to_numpy()
    assert ts[idx["train"]].max() <= ts[idx["valid"]].min() and ts[idx["valid"]].max() <= ts[idx["test"]].min()
    a, b = split_indices(t, s, "random", seed=1), split_indices(t, s, "random", seed=2)
    assert not np.array_equal(a["test"], b["test"])


def test_prepared_folder_round_trip_equals_in_memory(raw, tmp_path):
    t, _ = raw
    mem = prepare_table(t, synthetic_schema(), tmp_path / "p", seed=0)
    schema, disk = load_prepared(tmp_path / "p")
    assert schema.num_domains == 7 and schema.domain_values[0] == "d0"  # most frequent first
    for s in ("train", "valid", "test"):
        assert torch.equal(mem[s].sparse, disk[s].sparse)
        assert torch.equal(mem[s].dense, disk[s].dense)
        assert torch.equal(mem[s].sequences["hist_categories"], disk[s].sequences["hist_categories"])
        assert torch.equal(mem[s].labels["click"], disk[s].labels["click"])


def test_encoders_are_fitted_on_train_only(raw):
    t, _ = raw
    s = synthetic_schema()
    idx = split_indices(t, s, "random", seed=0)
    uid = t.column("user_id").to_numpy().copy()
    uid[idx["test"][::2]] += 10_000_000  # users that only exist outside train
    t = t.set_column(t.column_names.index("user_id"), "user_id", pa.array(uid))
    tables = prepare_table(t, s, None, seed=0)
    train_users = set(uid[idx["train"]].tolist())
    test_users = uid[idx["test"]]
    unseen = np.array([u not in train_users for u in test_users])
    assert unseen.any()
    uid_col = [f.name for f in s.sparse].index("user_id")
    assert (tables["test"].sparse[:, uid_col].numpy()[unseen] == 0).all()
    assert (tables["test"].sparse[:, uid_col].numpy()[~unseen] > 0).all()


def test_batches_are_slices_and_shuffle_is_seeded(raw):
    t, _ = raw
    tab = prepare_table(t, synthetic_schema(), None)["train"]
    seq = torch.cat([b.sparse for b in tab.batches(1000)])
    assert torch.equal(seq, tab.sparse)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = torch.cat([b.labels["click"] for b in tab.batches(700, True, g1)])
    b = torch.cat([b.labels["click"] for b in tab.batches(700, True, g2)])
    assert torch.equal(a, b) and len(a) == len(tab)


def test_bad_files_give_clear_errors(tmp_path, raw):
    t, _ = raw
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(tmp_path / "empty.csv")
    pq.write_table(t, tmp_path / "ok.parquet")
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.parquet: truncated"):
        read_table(tmp_path / "trunc.parquet")
    with pytest.raises(DataError, match="missing column 'item_id'"):
        prepare_table(t.drop_columns(["item_id"]), synthetic_schema())
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "nope.csv")


def test_synthetic_generator_properties():
    t, truth = generate(200_000, seed=0)
    dom = truth["domain"]
    shares = np.bincount(dom, minlength=6) / len(dom)
    assert shares.max() >= 0.40 and shares.min() <= 0.02
    assert np.allclose(shares, DOMAIN_SHARES, atol=0.01)
    # power-law popularity: the top 1 % of items get far more than 1 % of impressions
    counts = np.sort(np.bincount(t.column("item_id").to_numpy()))[::-1]
    assert counts[: max(1, len(counts) // 100)].sum() / counts.sum() > 0.15
    # labels follow the returned true probabilities, per domain
    click = t.column("click").to_numpy()
    for d in range(6):
        m = dom == d
        assert abs(click[m].mean() - truth["p_click"][m].mean()) < 4 * np.sqrt(0.25 / m.sum()) + 1e-3
    conv = t.column("conversion").to_numpy()
    assert conv.mean() < click.mean() and np.all(conv <= click)  # rarer, and only after a click
    # same seed -> same data; other seed -> other data
    t2, _ = generate(2000, seed=0)
    t3, _ = generate(2000, seed=1)
    assert generate(2000, seed=0)[0].equals(t2) and not t3.equals(t2)
