"""Raw JSON rows -> pyarrow columns: every value type accepted, every client mistake named (row, feature)."""
import math

import pytest

from dynarec.data.schema import Schema
from dynarec.serve.rows import RowError, rows_to_table

SCHEMA = Schema.from_dict({
    "domain": "dom", "tasks": [{"name": "click"}],
    "features": [{"name": "uid", "group": "user"},
                 {"name": "price", "kind": "dense", "group": "item"},
                 {"name": "age", "kind": "dense", "group": "user", "buckets": 4},
                 {"name": "strict", "kind": "dense", "group": "item", "nan_policy": "error"},
                 {"name": "hist", "kind": "sequence", "group": "user", "separator": "|"}]})

GOOD = {"dom": "d1", "uid": 7, "price": 2.5, "age": 31, "strict": 1, "hist": ["a", 3], "click": 1, "extra": "x"}


def test_values_become_the_raw_columns_the_encoders_read():
    t = rows_to_table([GOOD, dict(GOOD, uid="u9", price=None, hist="b|c", dom=None)], SCHEMA)
    assert t.column_names == [f.name for f in SCHEMA.features]
    assert t.column("uid").to_pylist() == ["7", "u9"]  # 7 and "7" are one category, as in a CSV
    assert t.column("dom").to_pylist() == ["d1", None]
    p = t.column("price").to_pylist()
    assert p[0] == 2.5 and math.isnan(p[1])
    assert t.column("age").to_pylist() == [31.0, 31.0]  # bucketised features take raw numbers
    assert t.column("hist").to_pylist() == ["a|3", "b|c"]


@pytest.mark.parametrize("rows,msg", [
    ("x", "'rows': expected a list"),
    ([], "at least one row"),
    ([1], r"rows\[0\]: expected an object"),
    ([GOOD, {k: v for k, v in GOOD.items() if k != "price"}], r"rows\[1\]: missing feature 'price'"),
    ([dict(GOOD, price="cheap")], r"rows\[0\].price: expected a number or null, got a string"),
    ([dict(GOOD, price=True)], r"rows\[0\].price: expected a number"),
    ([dict(GOOD, uid=1.5)], r"rows\[0\].uid: expected a string, an integer or null"),
    ([dict(GOOD, uid={"a": 1})], r"rows\[0\].uid: .*an object"),
    ([dict(GOOD, strict=None)], r"rows\[0\].strict: a value is required"),
    ([dict(GOOD, hist=5)], r"rows\[0\].hist: expected a list"),
    ([dict(GOOD, hist=[1.5])], r"rows\[0\].hist\[\]"),
    ([GOOD] * 3, "at most 2 rows"),
])
def test_client_mistakes_name_row_and_feature(rows, msg):
    with pytest.raises(RowError, match=msg):
        rows_to_table(rows, SCHEMA, max_rows=2)
