import numpy as np
import pyarrow as pa
import pytest

from dynarec.data.labels import check_label_rules, label_column
from dynarec.data.prepare import prepare_table
from dynarec.data.schema import Feature, Schema, Task
from dynarec.errors import DataError, SchemaError


def _raw(n=200, seed=0):
    rng = np.random.default_rng(seed)
    income = np.where(rng.random(n) < 0.3, " >50K", " <=50K")
    hours = rng.integers(1, 80, n)
    return pa.table({"dom": rng.choice(["a", "b"], n), "job": rng.choice(["x", "y", "z"], n),
                     "income": income, "hours": hours, "spend": rng.exponential(50.0, n)})


def _schema(tasks):
    return Schema(features=[Feature("dom", "sparse", "domain"), Feature("job", "sparse", "user")],
                  tasks=tasks, domain="dom")


def test_positive_rule_threshold_and_log1p_several_tasks_on_one_column():
    t = _raw()
    s = _schema([Task("rich", column="income", positive=[" >50K"]),
                 Task("long_week", column="hours", threshold=40),
                 Task("very_long_week", column="hours", threshold=60),
                 Task("log_hours", type="regression", column="hours", transform="log1p")])
    inc = np.array(t.column("income").to_pylist())
    hrs = t.column("hours").to_numpy()
    assert label_column(t, s.task("rich"), "t").tolist() == (inc == " >50K").astype(np.float32).tolist()
    assert np.array_equal(label_column(t, s.task("long_week"), "t"), (hrs > 40).astype(np.float32))
    assert np.array_equal(label_column(t, s.task("very_long_week"), "t"), (hrs > 60).astype(np.float32))
    assert np.allclose(label_column(t, s.task("log_hours"), "t"), np.log1p(hrs))
    assert s.columns().count("hours") == 1  # read once
    tables = prepare_table(t, s, None, seed=0)
    for split, tab in tables.items():
        rows = tab.row.numpy()
        assert np.array_equal(tab.labels["long_week"].numpy(), (hrs[rows] > 40).astype(np.float32))
        assert np.array_equal(tab.labels["rich"].numpy(), (inc[rows] == " >50K").astype(np.float32))


def test_positive_values_compare_as_category_text():
    t = pa.table({"dom": ["a"] * 4, "stars": [1.0, 4.0, 5.0, 2.0]})
    s = _schema([Task("liked", column="stars", positive=[4, 5])])
    assert s.task("liked").positive == ["4", "5"]
    assert label_column(t, s.task("liked"), "t").tolist() == [0, 1, 1, 0]


def test_positive_rule_matching_nothing_names_the_column_and_shows_values():
    t = _raw()
    s = _schema([Task("rich", column="income", positive=[">50K"])])  # the file has a leading space
    with pytest.raises(DataError, match=r"column 'income' is in positive \['>50K'\] \(values seen: ' <=50K', ' >50K'\)"):
        check_label_rules(t, s, "data.csv")
    with pytest.raises(DataError, match="data.csv"):
        prepare_table(t, s, None, source="data.csv")


def test_rule_giving_one_class_is_an_error():
    t = _raw()
    with pytest.raises(DataError, match=r"threshold 100 puts every row of column 'hours' on one side \(values range from 1"):
        check_label_rules(t, _schema([Task("x", column="hours", threshold=100)]), "f")
    with pytest.raises(DataError, match="no negative row"):
        check_label_rules(t, _schema([Task("x", column="income", positive=[" >50K", " <=50K"])]), "f")


def test_threshold_on_text_and_plain_non_binary_show_values_seen():
    t = _raw()
    with pytest.raises(DataError, match=r"label column 'income' of task 'x' has type string; a threshold needs numbers "
                                         r"\(values seen: ' <=50K', ' >50K'\)"):
        label_column(t, Task("x", column="income", threshold=1), "f")
    with pytest.raises(DataError, match=r"'income' of task 'income' has type string.*positive: \[values\].*values seen"):
        label_column(t, Task("income"), "f")
    t2 = pa.table({"dom": ["a"] * 3, "y": [0, 1, 2]})
    with pytest.raises(DataError, match=r"'y' must be binary 0/1 but has values seen: '0', '1', '2'"):
        label_column(t2, Task("y"), "f")


def test_missing_labels_and_bad_log1p_are_errors():
    t = pa.table({"dom": ["a"] * 3, "y": [1.0, None, 0.0], "z": [0.5, -1.0, 3.0]})
    with pytest.raises(DataError, match="label column 'y' has 1 missing value"):
        label_column(t, Task("y"), "f")
    with pytest.raises(DataError, match="log1p needs values > -1, but column 'z' has -1"):
        label_column(t, Task("lz", type="regression", column="z", transform="log1p"), "f")


def test_rules_that_do_not_fit_the_task_type_are_schema_errors():
    with pytest.raises(SchemaError, match="task 'r'.*binary label; this task is type regression"):
        Task("r", type="regression", positive=["a"])
    with pytest.raises(SchemaError, match="'transform' applies to regression tasks"):
        Task("b", transform="log1p")
    with pytest.raises(SchemaError, match="'positive' or 'threshold', not both"):
        Task("b", positive=["a"], threshold=1)
    with pytest.raises(SchemaError, match="label column 'job' is also declared as a feature"):
        _schema([Task("b", column="job", positive=["x"])])
    with pytest.raises(SchemaError, match="task declared twice"):
        _schema([Task("b", column="hours", threshold=1), Task("b", column="income", positive=["x"])])
