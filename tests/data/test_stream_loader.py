"""Streamed training reader (dynarec/data/loader.py): the in-memory batches without shuffling (and the same
per-step losses), every row once per epoch under any shuffle buffer, deterministic for a seed, disjoint rank
shares with equal step counts whose union is the split, and data.loading wired into `train`."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.config import build_dataclass
from dynarec.experiment import ExperimentConfig
from dynarec.data.loader import StreamTable, choose_loading, open_split
from dynarec.data.outofcore import prepare_out_of_core
from dynarec.data.prepare import load_prepared
from dynarec.data.synthetic import generate, synthetic_schema
from dynarec.errors import ConfigError
from dynarec.models import build_model
from dynarec.train.config import TrainerConfig
from dynarec.train.trainer import Trainer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    t, _ = generate(6000, 2)
    pq.write_table(t, d / "raw.parquet")
    prepare_out_of_core(d / "raw.parquet", synthetic_schema(), d / "p", "random", progress=False,
                        row_group_rows=300, shard_rows=1000)  # 16 row groups of train in 5 files, uneven last ones
    return d / "p"


def _rows(st, bs, shuffle, seed):
    g = torch.Generator().manual_seed(seed)
    return [r.numpy() for _, r in st.batches_with_rows(bs, shuffle, g)]


def test_unshuffled_stream_equals_memory_batches(folder):
    _, mem = load_prepared(folder)
    st = open_split(folder, "train")
    assert len(st) == len(mem["train"])
    a, b = list(st.batches(256)), list(mem["train"].batches(256))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.sparse, y.sparse) and torch.equal(x.dense, y.dense)
        assert all(torch.equal(x.labels[k], y.labels[k]) for k in y.labels)
        assert all(torch.equal(x.sequences[k], y.sequences[k]) for k in y.sequences)


class _InOrder:
    """A split whose batches ignore the trainer's shuffle (to compare losses step by step)."""

    def __init__(self, table):
        self.table, self.schema = table, table.schema

    def __len__(self):
        return len(self.table)

    def batches(self, batch_size, shuffle=False, generator=None):
        return self.table.batches(batch_size, False)


class _Losses:
    def __init__(self):
        self.losses = []

    def on_batch_end(self, loop, rows, loss):
        self.losses.append(loss)


def test_unshuffled_stream_trains_to_the_same_losses(folder):
    schema, mem = load_prepared(folder)
    out = []
    for train in (mem["train"], open_split(folder, "train")):
        torch.manual_seed(0)
        model = build_model("dnn", schema, {})
        rec = _Losses()
        Trainer(model, TrainerConfig(epochs=1, batch_size=256, progress=False), seed=0).fit(_InOrder(train),
                                                                                           callbacks=[rec])
        out.append(rec.losses)
    assert len(out[0]) > 10 and out[0] == out[1]  # the same batches, bit for bit: the same losses


@pytest.mark.parametrize("buffer", [0, 1, 777, 10**6])
def test_every_row_once_per_epoch_and_deterministic(folder, buffer):
    st = open_split(folder, "train", shuffle_buffer=buffer)
    everything = np.sort(pq.read_table(folder / "train.parquet", columns=["_row"]).column(0).to_numpy())
    e1 = _rows(st, 128, True, 7)
    assert np.array_equal(np.sort(np.concatenate(e1)), everything)
    assert all(len(r) == 128 for r in e1[:-1])
    e2 = _rows(st, 128, True, 7)
    assert all(np.array_equal(a, b) for a, b in zip(e1, e2))  # same seed: same batches
    e3 = _rows(st, 128, True, 8)
    assert not np.array_equal(np.concatenate(e1), np.concatenate(e3))  # another seed: another order
    group = {}  # raw row -> (file, row group)
    for f in st.files:
        pf = pq.ParquetFile(f)
        for g in range(pf.metadata.num_row_groups):
            group.update(dict.fromkeys(pf.read_row_group(g, columns=["_row"]).column(0).to_pylist(), (f.name, g)))
    mixed = len({group[int(r)] for r in e1[0]})
    assert mixed > 1 if buffer >= 777 else mixed <= 2  # a buffer of several groups mixes them within a batch


def test_two_ranks_read_disjoint_shares_with_equal_steps(folder):
    st = open_split(folder, "train", shuffle_buffer=500)
    everything = np.sort(pq.read_table(folder / "train.parquet", columns=["_row"]).column(0).to_numpy())
    for shuffle in (False, True):
        r0 = _rows(st.for_rank(0, 2), 256, shuffle, 3)
        r1 = _rows(st.for_rank(1, 2), 256, shuffle, 3)
        assert len(r0) == len(r1) == -(-len(everything) // 256)  # the same number of steps
        a, b = np.concatenate(r0), np.concatenate(r1)
        assert not set(a.tolist()) & set(b.tolist())  # disjoint
        assert np.array_equal(np.sort(np.concatenate([a, b])), everything)  # union = the split
        assert abs(len(a) - len(b)) <= max(u[2] for u in st.units)


def test_loading_choice_and_train_experiment(folder, tmp_path):
    schema, _ = load_prepared(folder)
    assert choose_loading(folder, schema, "auto", 4096) == "memory"
    assert choose_loading(folder, schema, "auto", 0.01) == "stream"  # 0.01 MB < the splits as tensors
    assert choose_loading(folder, schema, "stream") == "stream"
    with pytest.raises(ConfigError, match="data.loading"):
        choose_loading(folder, schema, "disk")
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        StreamTable(schema, [folder / "train.parquet" / "part-00000.parquet"], shuffle_buffer=-1)
    from dynarec.experiment import train_experiment

    bad = build_dataclass(ExperimentConfig, {"data": {"path": str(folder), "loading": "memory", "prefetch": 0},
                                             "out": str(tmp_path / "bad")}, "config")
    with pytest.raises(ConfigError, match="data.prefetch"):  # checked even when the split is not streamed
        train_experiment(bad)

    res = {}
    for loading in ("memory", "stream"):
        cfg = build_dataclass(ExperimentConfig, {"model": "dnn", "data": {"path": str(folder), "loading": loading},
                                                 "trainer": {"epochs": 1, "batch_size": 256, "progress": False},
                                                 "out": str(tmp_path / loading)}, "config")
        res[loading] = train_experiment(cfg)
    assert res["stream"].history.epochs[0]["train_loss"] > 0
    # other batch orders, the same rows: test AUCs within 4 Hanley-McNeil standard errors (x sqrt 2: a difference)
    a, b = (res[k].metrics["auc"]["click"]["all"] for k in ("memory", "stream"))
    _, tabs = load_prepared(folder, ("test",))
    y = tabs["test"].labels["click"].numpy()
    n1, n0 = y.sum(), len(y) - y.sum()
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    assert min(a, b) > 0.55 and abs(a - b) <= 4 * np.sqrt(2) * se


def test_histogram_auc_within_its_bound():
    from dynarec.evalstream import HistogramAUC
    from dynarec.metrics import auc

    rng = np.random.default_rng(0)
    n = 300_000
    y = rng.random(n) < 0.2
    z = rng.normal(0, 1.5, n) + 1.2 * y
    dom = rng.integers(1, 4, n)
    h = HistogramAUC()
    for part in np.array_split(np.arange(n), 7):  # chunk by chunk, as a stream
        h.add(z[part], y[part], dom[part])
    for key, m in ((-1, np.ones(n, bool)), (2, dom == 2)):
        got, bound = h.auc(key)
        exact = auc(y[m], z[m])
        assert abs(got - exact) <= bound + 1e-12 and bound < 1e-4  # the stated method's error, measured
    zt = np.round(z * 2) / 2  # heavy ties: one bin per distinct value, so the histogram AUC is the exact one
    h2 = HistogramAUC()
    h2.add(zt, y, dom)
    assert h2.auc(-1)[0] == pytest.approx(auc(y, zt), abs=1e-12)


def test_streamed_evaluation_and_prediction_match_memory(folder, tmp_path):
    from dynarec.evalstream import evaluate_stream, predict_to_shards
    from dynarec.metrics import evaluate_model, predict_table

    schema, mem = load_prepared(folder)
    torch.manual_seed(0)
    model = build_model("dnn", schema, {})
    st = open_split(folder, "test")
    st.schema = schema
    a, b = evaluate_model(model, mem["test"], 512), evaluate_stream(model, st, 512)
    for t in ("click", "conversion"):
        for k, v in a["auc"][t].items():
            if v is not None:
                assert abs(b["auc"][t][k] - v) <= b["auc_error_bound"][t][k] + 1e-12
        # float32 sigmoid in the in-memory path: -log p moves by <= 2^-24 / (1 - p) per row
        assert b["logloss"][t]["all"] == pytest.approx(a["logloss"][t]["all"], abs=1e-5)
    assert b["count"] == a["count"]
    n = predict_to_shards(model, st, tmp_path / "pred", 512, rows_per_file=250)
    out = pq.read_table(tmp_path / "pred")
    assert n == len(mem["test"]) and len(list((tmp_path / "pred").iterdir())) > 1
    p = predict_table(model, mem["test"], 512)
    order = np.argsort(out.column("_row").to_numpy())
    assert np.array_equal(out.column("_row").to_numpy()[order], np.sort(mem["test"].row.numpy()))
    np.testing.assert_array_equal(out.column("click").to_numpy()[order],
                                  p["click"][np.argsort(mem["test"].row.numpy())])
