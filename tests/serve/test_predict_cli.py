"""`dynarec predict`: one row per input row of an UNLABELED raw file, probabilities equal to scoring the same
rows with labels, row ids / an id column that trace back to the raw file, MC-dropout mean + variance."""
import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dynarec.cli import main
from dynarec.data.synthetic import generate
from dynarec.metrics import predict_table
from dynarec.serve.predictor import Predictor


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    assert main(["data", "synthetic", "--rows", "2000", "--out", str(d / "data")]) == 0
    assert main(["train", "--model", "mmoe", "--data", str(d / "data"), "--epochs", "1", "--set", "model.dropout=0.2",
                 "--set", "trainer.progress=false", "--out", str(d / "ck")]) == 0
    t, _ = generate(300, seed=9)
    pacsv.write_csv(t, d / "labeled.csv")
    pacsv.write_csv(t.drop_columns(["click", "conversion"]).append_column("req", t.column("user_id")), d / "unlabeled.csv")
    return d


def test_predict_unlabeled_equals_scoring_the_labeled_rows(run, capsys):
    assert main(["predict", "--checkpoint", str(run / "ck"), "--data", str(run / "unlabeled.csv"),
                 "--out", str(run / "p.parquet")]) == 0
    out = pq.read_table(run / "p.parquet").to_pydict()
    assert out["_row"] == list(range(300))  # one output row per input row, in input order
    pred = Predictor.load(run / "ck")
    ref = predict_table(pred.model, pred.encode_file(run / "labeled.csv", labels=True).table)
    for task in ("click", "conversion"):
        np.testing.assert_allclose(out[task], ref[task], rtol=0, atol=1e-7)
    assert "wrote 300 predictions" in capsys.readouterr().out


def test_predict_id_column_csv_and_mc_dropout(run):
    assert main(["predict", "--checkpoint", str(run / "ck"), "--data", str(run / "unlabeled.csv"),
                 "--out", str(run / "p.csv"), "--id-column", "req", "--mc-dropout", "8"]) == 0
    out = pacsv.read_csv(run / "p.csv").to_pydict()
    raw = pacsv.read_csv(run / "unlabeled.csv").column("req").to_pylist()
    assert out["req"] == raw
    assert set(out) == {"req", "click", "click_var", "conversion", "conversion_var"}
    assert np.mean(out["click_var"]) > 0  # dropout 0.2: the passes differ
    assert all(0 < p < 1 for p in out["click"])


def test_predict_mistakes_are_one_line(run, capsys):
    for argv, word in ([["--out", str(run / "p.txt")], "p.txt"], [["--id-column", "nope", "--out", str(run / "q.csv")], "nope"],
                       [["--mc-dropout", "-2", "--out", str(run / "q.csv")], "--mc-dropout"]):
        rc = main(["predict", "--checkpoint", str(run / "ck"), "--data", str(run / "unlabeled.csv")] + argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and word in err[0], err
