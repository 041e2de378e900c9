"""Raw ids (integers as they are, strings hashed to 63 bits, missing -> -1, sequences padded with -1), the
rewritten schema (dynamic features on one shared table; a declared domain vocabulary is kept), CSV passes."""
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from dynarec.data.schema import Feature, Schema
from dynarec.errors import ConfigError
from dynarec.online.ids import raw_ids
from dynarec.online.schema import GSET, fit_schema
from dynarec.tables.hashing import hash_string

from tests.online.conftest import online


def test_raw_ids_of_integers_strings_and_sequences():
    t = pa.table({"a": pa.array([5, None, 7, -3], pa.int64()), "b": ["x", None, "", "x"],
                  "s": ["x|y", "", None, "y|y|x"]})
    assert raw_ids(t, Feature("a")).tolist() == [5, -1, 7, -1]
    hx = hash_string("x") & ((1 << 63) - 1)
    assert raw_ids(t, Feature("b")).tolist() == [hx, -1, -1, hx] and hx >= 0
    s = raw_ids(t, Feature("s", kind="sequence", max_len=2))
    hy = hash_string("y") & ((1 << 63) - 1)
    assert s.tolist() == [[hx, hy], [-1, -1], [-1, -1], [hy, hy]]


def _schema(**dom):
    return Schema.from_dict({"features": [{"name": "domain", "group": "domain"},
                                          {"name": "uid", "group": "user", "dynamic": True},
                                          {"name": "cat", "group": "item"}],
                             "tasks": [{"name": "click"}], "domain": "domain", **dom})


def test_dynamic_features_share_one_table_and_a_declared_domain_vocabulary_is_kept():
    t = pa.table({"domain": ["a", "b", "a"], "uid": [1, 2, 3], "cat": ["c1", "c2", "c1"], "click": [0, 1, 0]})
    s, enc, dyn = fit_schema(_schema(), t, "dynamic", 50, "pass-0")
    assert dyn == ["uid"] and s.feature("uid").table == GSET and s.feature("uid").vocab_size == 51
    assert s.feature("cat").vocab_size == 3 and s.domain_values == ["a", "b"]
    s2, enc2, _ = fit_schema(_schema(domain_values=["a", "b", "new"]), t, "dynamic", 50, "pass-0")
    assert s2.domain_values == ["a", "b", "new"] and s2.num_domains == 4  # a domain born later has its own id
    later = pa.table({"domain": ["new"], "uid": [9], "cat": ["c1"], "click": [1]})
    assert enc2.transform(later, "pass-1")["domain"].tolist() == [3]
    static, _, sdyn = fit_schema(_schema(), t, "static", 50, "pass-0")
    assert sdyn == [] and static.feature("uid").vocab_size == 4 and not static.feature("uid").dynamic


def test_a_table_shared_between_a_dynamic_and_a_static_feature_is_refused():
    s = Schema.from_dict({"features": [{"name": "domain", "group": "domain"},
                                       {"name": "u", "group": "user", "dynamic": True, "table": "ids"},
                                       {"name": "v", "group": "item", "table": "ids"}],
                          "tasks": [{"name": "click"}], "domain": "domain"})
    with pytest.raises(ConfigError, match="feature 'v' shares table 'ids' with dynamic feature 'u'"):
        fit_schema(s, pa.table({"domain": ["a"], "u": [1], "v": [2], "click": [0]}), "dynamic", 5, "p")


def test_csv_pass_files_with_string_ids(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(2):
        n = 300
        pacsv.write_csv(pa.table({"domain": rng.choice(["a", "b"], n), "uid": [f"user-{i}" for i in rng.integers(k * 20, k * 20 + 40, n)],
                                  "cat": rng.choice(["c1", "c2", "c3"], n), "click": rng.integers(0, 2, n)}),
                        tmp_path / f"pass-{k:04d}.csv")
    rows = online(tmp_path, tmp_path / "run", "online.max_rows=30", schema=_schema())
    assert [r["file"] for r in rows] == ["pass-0000.csv", "pass-0001.csv"]
    assert all(0 < r["table_rows"] <= 30 for r in rows) and rows[1]["evicted"] + rows[0]["evicted"] > 0
