"""The streamed reader's epoch as a property over shard layouts and shuffle buffers (dynarec/data/loader.py):
every row exactly once per epoch, the same batches for the same seed, 2 ranks disjoint with equal step
counts, and a mid-epoch start (``batches(start=s)``, the resume path) giving exactly the batches s, s+1, ...
of the whole epoch and leaving the generator where the whole epoch leaves it."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dynarec.data.loader import StreamTable, open_split
from dynarec.data.outofcore import prepare_out_of_core
from dynarec.data.synthetic import generate, synthetic_schema

LAYOUTS = [(13, 1), (97, 1), (300, 3), (5000, 1)]  # (rows per row group, files): 185 groups ... 1 group
BUFFERS = [0, 1, 250, 1000, 10**6]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("streamres")
    t, _ = generate(3000, 2)
    pq.write_table(t, d / "raw.parquet")
    prepare_out_of_core(d / "raw.parquet", synthetic_schema(), d / "p", "random", progress=False,
                        row_group_rows=300, shard_rows=1000)
    return d / "p"


def _layout(prepared, tmp_path, group_rows, files):
    """The train split rewritten as ``files`` Parquet files of row groups of ``group_rows`` rows."""
    st = open_split(prepared, "train")
    t = pq.read_table(prepared / "train.parquet")
    out = []
    for i, part in enumerate(np.array_split(np.arange(t.num_rows), files)):
        f = tmp_path / f"part-{i:05d}.parquet"
        pq.write_table(t.take(part), f, row_group_size=group_rows)
        out.append(f)
    return st.schema, out, np.sort(t.column("_row").to_numpy())


def _epoch(st, bs, seed, start=0):
    g = torch.Generator().manual_seed(seed)
    rows = [r.numpy() for _, r in st.batches_with_rows(bs, True, g, start=start)]
    return rows, g.get_state()


@pytest.mark.parametrize("group_rows,files", LAYOUTS)
def test_every_row_once_deterministic_and_resumable(prepared, tmp_path, group_rows, files):
    schema, paths, everything = _layout(prepared, tmp_path, group_rows, files)
    bs = 128
    for buffer in BUFFERS:
        st = StreamTable(schema, paths, shuffle_buffer=buffer, prefetch=3, threads=2)
        whole, after = _epoch(st, bs, 11)
        assert np.array_equal(np.sort(np.concatenate(whole)), everything), buffer  # each row exactly once
        assert [len(r) for r in whole] == [bs] * (len(everything) // bs) + [len(everything) % bs]
        again, _ = _epoch(st, bs, 11)
        assert all(np.array_equal(a, b) for a, b in zip(whole, again))  # the same seed: the same batches
        for s in (1, 2, 7, len(whole) - 1, len(whole)):  # inside a fill, at fill boundaries, the end
            rest, state = _epoch(st, bs, 11, start=s)
            assert len(rest) == len(whole) - s and all(np.array_equal(a, b) for a, b in zip(whole[s:], rest)), \
                (buffer, s)
            assert torch.equal(state, after)  # the next epoch draws what it draws after an uninterrupted one


@pytest.mark.parametrize("group_rows,files", [(97, 1), (300, 3)])
def test_two_ranks_disjoint_balanced_and_resumable(prepared, tmp_path, group_rows, files):
    schema, paths, everything = _layout(prepared, tmp_path, group_rows, files)
    for buffer in (0, 250, 10**6):
        st = StreamTable(schema, paths, shuffle_buffer=buffer)
        r0, _ = _epoch(st.for_rank(0, 2), 256, 5)
        r1, _ = _epoch(st.for_rank(1, 2), 256, 5)
        assert len(r0) == len(r1) == -(-len(everything) // 256)  # every rank takes the same number of steps
        a, b = np.concatenate(r0), np.concatenate(r1)
        assert not set(a.tolist()) & set(b.tolist())
        assert np.array_equal(np.sort(np.concatenate([a, b])), everything)
        assert abs(len(a) - len(b)) <= group_rows  # dealt to the least-loaded rank: within one row group
        rest, _ = _epoch(st.for_rank(1, 2), 256, 5, start=3)
        assert all(np.array_equal(x, y) for x, y in zip(r1[3:], rest)) and len(rest) == len(r1) - 3


@pytest.mark.parametrize("sets,key", [(["data.loading=memory", "data.shuffle_buffer=1000"], "data.shuffle_buffer"),
                                      (["data.loading=memory", "data.read_threads=1"], "data.read_threads"),
                                      (["data.prefetch=2"], "data.prefetch"),  # auto: this folder fits in memory
                                      (["data.loading=stream", "data.memory_budget_mb=10"], "data.memory_budget_mb")])
def test_stream_keys_without_streaming_are_one_line_exit_2(prepared, tmp_path, capsys, sets, key):
    from dynarec.cli import main

    argv = ["train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--epochs", "1"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dynarec: error: {key}: "), err
    assert not (tmp_path / "r").exists()
