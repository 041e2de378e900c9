"""`dynarec predict` streamed (dynarec/serve/predict_file.py): chunked output equals the one-shot scoring of the
whole file row for row (same order, same ids, same values) for chunk sizes that split the file unevenly, CSV and
Parquet; an existing output dynarec did not write is refused (exit 2, untouched); a failure half-way leaves no
file behind and an earlier output untouched."""
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dynarec.cli import main
from dynarec.data.scan import scan_chunks
from dynarec.data.synthetic import generate
from dynarec.errors import DataError
from dynarec.metrics import predict_table
from dynarec.serve.predict_file import write_predictions
from dynarec.serve.predictor import Predictor

ROWS, BATCH = 2500, 300


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("pstream")
    assert main(["data", "synthetic", "--rows", "2000", "--out", str(d / "data")]) == 0
    assert main(["train", "--model", "dnn", "--data", str(d / "data"), "--epochs", "1",
                 "--set", "trainer.progress=false", "--out", str(d / "ck")]) == 0
    t, _ = generate(ROWS, seed=5)
    t = t.drop_columns(["click", "conversion"]).append_column("req", pa.array([f"r{i}" for i in range(ROWS)]))
    pacsv.write_csv(t, d / "rows.csv")
    pq.write_table(t, d / "rows.parquet", row_group_size=700)
    return d


@pytest.mark.parametrize("fmt,chunk", [("csv", 16 << 10), ("parquet", 1)])
def test_chunked_equals_one_shot_row_for_row(run, tmp_path, fmt, chunk):
    src = run / f"rows.{fmt}"
    sizes = [c.num_rows for _, c in scan_chunks([src], block_bytes=chunk)]
    assert len(sizes) > 2 and any(s % BATCH for s in sizes[:-1])  # chunks that cut across batches
    a = write_predictions(run / "ck", src, tmp_path / "one.parquet", "req", batch_size=BATCH, chunk_bytes=1 << 30)
    b = write_predictions(run / "ck", src, tmp_path / "chunked.parquet", "req", batch_size=BATCH, chunk_bytes=chunk)
    one, chunked = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "chunked.parquet")
    assert a["rows"] == b["rows"] == ROWS and a["unknown"] == b["unknown"]
    assert chunked.equals(one)  # same rows, order, ids and values, bit for bit
    assert chunked.column("req").to_pylist() == [f"r{i}" for i in range(ROWS)]
    # and equal to today's definition: the whole file encoded at once, scored in batches of BATCH
    pred = Predictor.load(run / "ck")
    ref = predict_table(pred.model, pred.encode_file(src, labels=False).table, BATCH)
    for t in ("click", "conversion"):
        np.testing.assert_array_equal(chunked.column(t).to_numpy(), ref[t])


def test_chunked_csv_output_and_row_ids(run, tmp_path):
    write_predictions(run / "ck", run / "rows.csv", tmp_path / "p.csv", batch_size=BATCH, chunk_bytes=16 << 10)
    out = pacsv.read_csv(tmp_path / "p.csv")
    assert out.column("_row").to_pylist() == list(range(ROWS))


def test_foreign_output_refused_and_failure_leaves_nothing(run, tmp_path, capsys):
    foreign = tmp_path / "mine.csv"
    foreign.write_text("name,score\nx,1\n")
    rc = main(["predict", "--checkpoint", str(run / "ck"), "--data", str(run / "rows.csv"), "--out", str(foreign)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "mine.csv" in err[0] and "not a predictions file" in err[0]
    assert foreign.read_text() == "name,score\nx,1\n"
    ours = tmp_path / "p.parquet"
    assert main(["predict", "--checkpoint", str(run / "ck"), "--data", str(run / "rows.csv"), "--out", str(ours)]) == 0
    assert main(["predict", "--checkpoint", str(run / "ck"), "--data", str(run / "rows.csv"), "--out", str(ours)]) == 0
    before = ours.read_bytes()  # a second run replaced our own file
    # a numeric column turning to text past the first chunks: the reader fails half-way through the file
    t = pacsv.read_csv(run / "rows.csv")
    bad = t.column("item_price").cast(pa.string()).to_pylist()
    bad[ROWS - 10] = "not-a-number"
    pacsv.write_csv(t.set_column(t.column_names.index("item_price"), "item_price", pa.array(bad)), tmp_path / "bad.csv")
    with pytest.raises(DataError) as e:
        write_predictions(run / "ck", tmp_path / "bad.csv", ours, batch_size=BATCH, chunk_bytes=16 << 10)
    assert "bad.csv" in str(e.value)
    assert ours.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "mine.csv",
                                                                                         "p.parquet"]
