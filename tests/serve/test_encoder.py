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
