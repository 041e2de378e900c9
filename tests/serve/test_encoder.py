"""The one row encoder's categorical kernel: a few values (a request) are looked up in a dictionary built
once, many (a file) with ``pyarrow.compute.index_in``; both give the same ids and unknown counts."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from dynarec.data.encode import CategoricalEncoder


def test_dictionary_and_index_in_kernels_agree():
    rng = np.random.default_rng(0)
    enc = CategoricalEncoder([f"v{i}" for i in range(50)])
    few = [None, "", "v0", "v49", "zzz", "v7", None, "V7", "v7 "] + [f"v{i}" for i in rng.integers(0, 80, 21)]
    many = few + [f"v{i}" for i in rng.integers(0, 80, 100)]
    assert len(few) <= len(enc.vocab) < len(many)  # one call per kernel
    ids_few, unk_few = enc.transform(pa.array(few, pa.string()))
    ids_many, _ = enc.transform(pa.array(many, pa.string()))
    np.testing.assert_array_equal(ids_few, ids_many[:len(few)])
    assert ids_few.dtype == ids_many.dtype == np.int32
    assert ids_few[:6].tolist() == [0, 0, 1, 50, 0, 8]
    by_hand = sum(v is not None and v not in enc.vocab for v in few)  # "" and near-misses are unknown
    assert unk_few == by_hand and by_hand >= 4


def test_dynamic_ids_follow_the_recorded_type_not_the_columns():
    """A pass recorded ``ints`` (its training column held integers): an integer column, the same ids as text
    (a server's values, a CSV column made text by one bad value) and floats give the same ids; other text
    is hashed as training hashes text. Without ``ints`` every value is hashed as text, an integer column too."""
    from dynarec.online.ids import _ids
    from dynarec.serve.dynamic_ids import recorded_ids

    ints = pa.array([5, 123, None, -3, 0], pa.int64())
    as_text = pa.array(["5", "123", None, "-3", "0"])
    np.testing.assert_array_equal(recorded_ids(ints, True), [5, 123, -1, -1, 0])
    np.testing.assert_array_equal(recorded_ids(as_text, True), [5, 123, -1, -1, 0])
    np.testing.assert_array_equal(recorded_ids(pa.array([5.0, 123.0, None]), True), [5, 123, -1])
    mixed = pa.array(["5", "abc", "", "u17"])
    got = recorded_ids(mixed, True)
    assert got[0] == 5 and got[2] == -1
    np.testing.assert_array_equal(got[[1, 3]], _ids(pa.array(["abc", "u17"])))  # training's text hashing
    np.testing.assert_array_equal(recorded_ids(ints, False), _ids(as_text))  # text recorded: hashed
