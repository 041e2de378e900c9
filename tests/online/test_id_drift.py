"""Id type drift: the id type of each dynamic feature is recorded on the first pass, and a later pass whose
column arrives with another type (one bad value turns a CSV integer column into text; a text column whose
values all look numeric arrives as integers) keeps every id it can: never a silent re-key of the feature."""
import pyarrow as pa
import pyarrow.csv as pacsv
import torch

from dynarec.data.schema import Feature, Schema
from dynarec.online.ids import id_kinds, raw_ids
from dynarec.serve.sources import read_serving
from dynarec.tables.hashing import hash_string

from tests.online.conftest import online

M = (1 << 63) - 1


def test_raw_ids_read_by_the_recorded_type():
    text = pa.table({"u": ["12", "abc", None, "7", "", "-4"]})
    assert raw_ids(text, Feature("u"), "int").tolist() == [12, hash_string("abc") & M, -1, 7, -1, -1]
    notes = {}
    raw_ids(text, Feature("u"), "int", notes)
    assert notes == {"u": ["abc"]}  # named, once per distinct value
    ints = pa.table({"u": pa.array([12, 7], pa.int64())})
    assert raw_ids(ints, Feature("u"), "text").tolist() == [hash_string("12") & M, hash_string("7") & M]
    floats = pa.table({"u": pa.array([12.0, 7.0])})
    assert raw_ids(floats, Feature("u"), "int").tolist() == [12, 7]
    assert id_kinds(pa.table({"a": pa.array([1], pa.int32()), "b": ["x"]}), [Feature("a"), Feature("b")]) == \
        {"a": "int", "b": "text"}


def _schema():
    return Schema.from_dict({"features": [{"name": "domain", "group": "domain"},
                                          {"name": "uid", "group": "user", "dynamic": True},
                                          {"name": "cat", "group": "item"}],
                             "tasks": [{"name": "click"}], "domain": "domain"})


def _write(folder, passes):
    folder.mkdir()
    for k, uids in enumerate(passes):
        n = len(uids)
        pacsv.write_csv(pa.table({"domain": ["a", "b"] * (n // 2), "uid": uids, "cat": ["c1", "c2", "c3", "c4"] * (n // 4),
                                  "click": [0, 1, 1, 0] * (n // 4)}), folder / f"pass-{k:04d}.csv")


def test_one_bad_value_in_an_integer_id_column_keeps_the_other_ids(tmp_path):
    ids = list(range(100, 156)) * 4  # 56 distinct integer ids, 224 rows
    bad = [str(i) for i in ids]
    bad[5] = "abc"  # one bad value: the whole CSV column is read as text
    _write(tmp_path / "clean", [ids, ids])
    _write(tmp_path / "drift", [ids, bad])
    clean = online(tmp_path / "clean", tmp_path / "r1", "online.max_rows=1000", schema=_schema())
    drift = online(tmp_path / "drift", tmp_path / "r2", "online.max_rows=1000", schema=_schema())
    assert clean[0]["admitted"] == drift[0]["admitted"] == 56
    assert clean[1]["admitted"] == 0
    assert drift[1]["admitted"] == 1  # only the bad value is a new (text) id; the 56 keep their slots
    assert drift[1]["ids_hashed_as_text"] == {"uid": {"values": 1, "first": "abc"}}
    assert "ids_hashed_as_text" not in clean[1]
    blob, _ = read_serving(tmp_path / "r2" / "passes" / "0001" / "serving.pt")
    e = blob["dynamic"][0]
    assert e["ints"] is True  # the serving copy reads ids by the recorded type, not this pass's column
    assert set(range(100, 156)) <= set(e["keys"].tolist())


def test_a_text_id_column_whose_values_all_look_numeric_keeps_its_text_ids(tmp_path):
    first = ["u1", "u2"] + [str(i) for i in range(10, 72)]  # text: 64 distinct ids
    later = [int(i) for i in range(10, 72)] * 2 + [10, 11, 12, 13]  # arrives as an integer column
    _write(tmp_path / "s", [first * 2, later])
    rows = online(tmp_path / "s", tmp_path / "r", "online.max_rows=1000", schema=_schema())
    assert rows[0]["admitted"] == 64
    assert rows[1]["admitted"] == 0  # '10' and 10 are the same id: hashed as text, as on the first pass
    blob, _ = read_serving(tmp_path / "r" / "passes" / "0001" / "serving.pt")
    assert blob["dynamic"][0]["ints"] is False
    assert torch.equal(torch.sort(blob["dynamic"][0]["keys"]).values,
                       torch.sort(torch.tensor([hash_string(s) & M for s in first])).values)
