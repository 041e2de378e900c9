"""The fingerprint of the training rows (``dynarec/data/fingerprint.py``): exact membership when every row is
kept, an unbiased hash sample otherwise, and ``evaluate`` on a raw file warns when it holds training rows."""
import warnings

import numpy as np
import pyarrow as pa
import pytest
import pyarrow.csv as pacsv

import dynarec.data.fingerprint as fpm
from dynarec.cli import main
from dynarec.data.fingerprint import TrainRows, TrainRowsBuilder, row_hashes
from dynarec.data.synthetic import generate
from dynarec.errors import DataWarning


def test_row_hashes_read_values_as_the_encoders_do_and_tell_rows_apart():
    a = pa.table({"u": [1, 2, None], "i": ["x", "y", "z"]})
    b = pa.table({"u": ["1", "2", None], "i": ["x", "y", "z"]})  # 1, "1" and 1.0 are one value
    c = pa.table({"u": [1.0, 2.0, None], "i": ["x", "y", "z"]})
    assert (row_hashes(a, ["u", "i"]) == row_hashes(b, ["u", "i"])).all()
    assert (row_hashes(a, ["u", "i"]) == row_hashes(c, ["u", "i"])).all()
    swapped = pa.table({"u": ["x", "y", "z"], "i": [1, 2, None]})  # same values in other columns: other rows
    assert not np.isin(row_hashes(swapped, ["u", "i"]), row_hashes(a, ["u", "i"])).any()


def test_the_hash_sample_estimates_the_share_of_training_rows_without_bias(monkeypatch):
    n = 20000
    t = pa.table({"u": np.arange(n), "i": np.arange(n) % 7})
    exact = TrainRows.fit(t.slice(0, 12000), ["u", "i"])
    assert exact.modulus == 1 and exact.overlap(t) == (0.6, n)  # every row kept: the exact share
    monkeypatch.setattr(fpm, "MAX_KEPT", 1000)
    fp = TrainRows.fit(t.slice(0, 12000), ["u", "i"])
    assert fp.modulus == 16 and 0 < len(fp.hashes) <= 1000  # the smallest power of two keeping <= 1000
    chunks = TrainRowsBuilder(["u", "i"])
    for k in range(0, 12000, 2500):  # a streamed fit keeps exactly the sample of the whole split
        chunks.add(t.slice(k, min(2500, 12000 - k)))
    got = chunks.result()
    assert got.modulus == fp.modulus and np.array_equal(got.hashes, fp.hashes)
    share, sampled = fp.overlap(t)
    # each row falls in the sample with probability 1/16 independently of being a training row, so the share
    # of sampled rows is a binomial estimate of 0.6: 5 standard errors bound it
    assert abs(share - 0.6) <= 5 * np.sqrt(0.6 * 0.4 / sampled)
    assert fp.overlap(t.slice(12000)) == (0.0, fp.overlap(t.slice(12000))[1])  # new rows: never matched
    back = TrainRows.from_dict(fp.to_dict())
    assert back.overlap(t) == (share, sampled)


def test_evaluate_warns_on_a_file_of_training_rows_and_not_on_new_rows(tmp_path):
    assert main(["data", "synthetic", "--rows", "2000", "--out", str(tmp_path / "data")]) == 0
    assert main(["train", "--model", "dnn", "--data", str(tmp_path / "data"), "--epochs", "1",
                 "--set", "trainer.progress=false", "--out", str(tmp_path / "ck")]) == 0
    t, _ = generate(2000, seed=0)  # the rows `data synthetic` split: 80 % of them are the training split
    pacsv.write_csv(t, tmp_path / "all.csv")
    pacsv.write_csv(generate(300, seed=9)[0], tmp_path / "new.csv")
    with pytest.warns(DataWarning) as seen:  # the CLI prints a DataWarning as one stderr line
        assert main(["evaluate", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "all.csv")]) == 0
    msgs = [str(w.message) for w in seen if "trained on" in str(w.message)]
    assert len(msgs) == 1 and "all.csv: 80% of its rows are rows the model was trained on (exactly)" in msgs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert main(["evaluate", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "new.csv")]) == 0
