"""Data inputs that were accepted silently or refused with an unclear line: through the CLI in-process, each
either exits 2 with ONE stderr line naming the column / key / value / split, or (rows without a domain)
prepares with one warning line giving the count. Also the CSV reader options of the schema's ``read:``."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from dynarec.cli import main
from dynarec.data.numeric import NumericEncoder
from dynarec.data.read import ReadOptions, read_table
from dynarec.data.schema import Feature
from dynarec.data.synthetic import generate
from dynarec.errors import DataError

SCHEMA = {"domain": "domain", "user": "user_id", "timestamp": "ts",
          "features": [{"name": "user_id", "group": "user"}, {"name": "item_id", "group": "item"},
                       {"name": "item_price", "kind": "dense", "group": "item"}],
          "tasks": [{"name": "click"}, {"name": "conversion"}]}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    t, _ = generate(400, seed=3)
    pacsv.write_csv(t.drop_columns(["hist_categories"]), d / "raw.csv")
    return d / "raw.csv"


def _run(tmp_path, capsys, schema=None, csv=None, extra=(), raw=None):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(schema or SCHEMA))
    if csv is not None:
        (tmp_path / "in.csv").write_text(csv)
    try:
        rc = main(["data", "prepare", "--schema", str(tmp_path / "s.yaml"),
                   str(tmp_path / "in.csv") if csv is not None else str(raw), "--out", str(tmp_path / "o"), *extra])
    except SystemExit as e:
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


def _edit(raw, col, row, value):
    """The raw CSV with one cell replaced (``row``: 0-based data row)."""
    lines = raw.read_text().splitlines()
    head = [h.strip('"') for h in lines[0].split(",")]
    cells = lines[row + 1].split(",")
    cells[head.index(col)] = value
    lines[row + 1] = ",".join(cells)
    return "\n".join(lines) + "\n"


def _schema(feature=None, **top):
    d = json.loads(json.dumps(SCHEMA))
    for i, patch in (feature or {}).items():
        d["features"][i].update(patch)
    d.update(top)
    return d


def _one_error(rc, err, *parts):
    assert rc == 2, (rc, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    for p in parts:
        assert p in err[0], (p, err[0])


CASES = [  # (id, schema, cell edit (column, row, value) or None, extra argv, parts of the one error line)
    ("min-count-on-dense", _schema({2: {"min_count": 3}}), None, (),
     ["feature 'item_price'", "key 'min_count'", "dense"]),
    ("max-len-on-sparse", _schema({1: {"max_len": 5}}), None, (), ["feature 'item_id'", "key 'max_len'", "sparse"]),
    ("temporal-split-on-text", SCHEMA, None, ("--split", "temporal:domain"),
     ["column 'domain'", "type string", "temporal split"]),
    ("dense-1e308", SCHEMA, ("item_price", 2, "1e308"), (), ["column 'item_price'", "1e+308", "row 2", "float32"]),
    ("dense-minus-1e308", SCHEMA, ("item_price", 5, "-1e308"), (), ["column 'item_price'", "-1e+308", "row 5"]),
    ("dense-inf", SCHEMA, ("item_price", 7, "inf"), (), ["column 'item_price'", "inf", "row 7"]),
    ("dense-text", SCHEMA, ("item_price", 3, "abc"), (), ["column 'item_price'", "'abc'", "row 3"]),
    ("tasks-as-strings", _schema(tasks=["click", "conversion"]), None, (), ["tasks[0]", "'click'", "{name: click}"]),
    ("sequence-over-floats", _schema({2: {"kind": "sequence"}}), None, (),
     ["sequence feature 'item_price'", "type double"]),
    ("stratified-unknown", SCHEMA, None, ("--split", "stratified:nope"), ["stratified:nope", "'nope'"]),
]


@pytest.mark.parametrize("schema,edit,extra,parts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_data_is_one_line_naming_what_is_wrong(schema, edit, extra, parts, raw, tmp_path, capsys):
    csv = _edit(raw, *edit) if edit else None
    _one_error(*_run(tmp_path, capsys, schema, csv, extra, raw), *parts)


@pytest.mark.parametrize("rows,counts", [(1, "train 1, valid 0, test 0"), (5, "train 4, valid 0, test 1")])
def test_tiny_data_names_the_empty_split_and_the_row_counts(rows, counts, raw, tmp_path, capsys):
    csv = "\n".join(raw.read_text().splitlines()[:rows + 1]) + "\n"
    _one_error(*_run(tmp_path, capsys, csv=csv), "split 'valid' would be empty", f"{rows} row(s)", counts)


def test_rows_without_a_domain_prepare_with_one_warning_line_giving_the_count(raw, tmp_path):
    import os
    import subprocess
    import sys

    csv = raw.read_text()
    for r in (4, 9, 11):
        csv = _edit_text(csv, "domain", r, "")
    (tmp_path / "in.csv").write_text(csv)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SCHEMA))
    p = subprocess.run([sys.executable, "-m", "dynarec", "data", "prepare", "--schema", str(tmp_path / "s.yaml"),
                        str(tmp_path / "in.csv"), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("dynarec: warning: "), err
    assert "domain column 'domain' has 3 missing value(s)" in err[0] and "row 4" in err[0] and "unknown domain" in err[0]


def _edit_text(text, col, row, value):
    lines = text.splitlines()
    head = [h.strip('"') for h in lines[0].split(",")]
    cells = lines[row + 1].split(",")
    cells[head.index(col)] = value
    lines[row + 1] = ",".join(cells)
    return "\n".join(lines) + "\n"


def test_stratified_by_the_domain_column_splits_every_domain_by_the_fractions(raw, tmp_path, capsys):
    rc, err = _run(tmp_path, capsys, raw=raw, extra=("--split", "stratified:domain", "--fractions", "0.6,0.2,0.2"))
    assert rc == 0, err
    dom = {s: pq.read_table(tmp_path / "o" / f"{s}.parquet").column("domain").to_numpy() for s in ("train", "valid", "test")}
    total = np.concatenate(list(dom.values()))
    for d in np.unique(total):
        n = int((total == d).sum())
        for s, fr in (("train", 0.6), ("valid", 0.2)):
            assert abs(int((dom[s] == d).sum()) - fr * n) <= 1  # each domain, to a row (a random split is not)
    assert json.loads((tmp_path / "o" / "split.json").read_text())["by"] == "domain"


QUOTED = 'id,title,click\n' + "".join(f'{i},"Love this\ndress, size {i}",{i % 2}\n' for i in range(60000))


def test_quoted_line_breaks_fail_with_the_read_key_that_fixes_them_and_the_key_works(tmp_path):
    (tmp_path / "q.csv").write_text(QUOTED)
    with pytest.raises(DataError, match=r"q.csv: not a readable CSV file .*set read: \{newlines_in_values: true\}"):
        read_table(tmp_path / "q.csv", options=ReadOptions(block_size=1 << 16))
    t = read_table(tmp_path / "q.csv", options=ReadOptions(newlines_in_values=True, block_size=1 << 16))
    assert t.num_rows == 60000 and t.column("title")[7].as_py() == "Love this\ndress, size 7"


def test_read_keys_for_quoting_escaping_delimiter_and_skipped_lines(tmp_path):
    (tmp_path / "a.csv").write_text("# exported 2024\nid;title;click\n1;'it''s; fine';1\n2;a \\'b\\';0\n")
    t = read_table(tmp_path / "a.csv", options=ReadOptions(delimiter=";", quote_char="'", escape_char="\\",
                                                           skip_rows=1))
    assert t.column("title").to_pylist() == ["it's; fine", "a 'b'"]
    with pytest.raises(DataError, match="Expected 3 columns, got 4"):  # no quoting: the ';' inside splits the value
        read_table(tmp_path / "a.csv", options=ReadOptions(delimiter=";", quote_char=False, skip_rows=1))
    with pytest.raises(DataError, match="a.csv: not a readable CSV file"):  # the comment line is read as the header
        read_table(tmp_path / "a.csv", options=ReadOptions(delimiter=";", quote_char="'", escape_char="\\"))


def test_unknown_read_key_suggests_the_reader_option(tmp_path, raw, capsys):
    for key, want in (("multiline", "newlines_in_values"), ("quotechar", "quote_char"), ("escapechar", "escape_char"),
                      ("newlines_in_value", "newlines_in_values")):
        _one_error(*_run(tmp_path, capsys, _schema(read={key: True}), raw=raw), f"unknown key '{key}'",
                   f"did you mean '{want}'")
    _one_error(*_run(tmp_path, capsys, _schema(read={"quote_char": "ab"}), raw=raw), "read: key 'quote_char'",
               "one character or false")


def test_the_server_path_refuses_a_float32_overflow_naming_the_value():
    f = Feature("price", kind="dense")
    enc = NumericEncoder().fit(np.array([1.0, 2.0, 3.0]), f)
    with pytest.raises(DataError, match=r"request: dense column 'price' has 1 value\(s\) beyond the float32 range.*"
                                        r"-1e\+308 at row 1"):
        enc.transform(np.array([1.0, -1e308]), f, "request")
    ok = Feature("price", kind="dense", clip=[None, 100.0])  # clipped in raw units first: accepted
    assert np.isfinite(NumericEncoder().fit(np.array([1.0, 2.0]), ok).transform(np.array([1e308]), ok, "r")).all()


def test_an_integer_column_as_a_sequence_is_one_id_per_row():
    import pyarrow as pa

    from dynarec.data.encode import Encoders
    from dynarec.data.schema import Schema, Task

    s = Schema(features=[Feature("hist", "sequence", max_len=2)], tasks=[Task("click")], domain="d")
    ints = pa.table({"d": ["a"] * 4, "hist": pa.array([3, 5, None, 3]), "click": [0, 1, 0, 1]})
    text = ints.set_column(1, "hist", pa.array(["3", "5", None, "3"]))
    a, b = Encoders(s).fit(ints), Encoders(s).fit(text)
    assert a.cat == b.cat and (a.transform(ints, "x")["hist"] == b.transform(text, "x")["hist"]).all()
    assert a.transform(ints, "x")["hist"][:, 1].tolist() == [0, 0, 0, 0]
