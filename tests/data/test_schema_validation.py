"""Every bad schema value or key is one SchemaError (a ConfigError) line naming the file and the key."""
import json

import pytest
import yaml

from dynarec.data.schema import Schema
from dynarec.data.synthetic import synthetic_schema
from dynarec.errors import ConfigError, SchemaError


def _base():
    return {"domain": "dom", "features": [{"name": "uid", "group": "user"},
                                          {"name": "price", "kind": "dense", "group": "item"},
                                          {"name": "hist", "kind": "sequence", "group": "user"}],
            "tasks": [{"name": "click"}]}


def _feature(i, **kw):
    def edit(d):
        d["features"][i].update(kw)
    return edit


def _task(**kw):
    def edit(d):
        d["tasks"][0].update(kw)
    return edit


def _top(**kw):
    def edit(d):
        d.update(kw)
    return edit


CASES = [
    (_feature(0, min_count="two"), "feature 'uid': key 'min_count' expects an integer >= 1, got 'two'"),
    (_feature(0, min_count=0), "key 'min_count' expects an integer >= 1, got 0"),
    (_feature(0, min_count=1.5), "key 'min_count' expects an integer >= 1, got 1.5"),
    (_feature(1, fill_value="zero"), "feature 'price': key 'fill_value' expects a number or null, got 'zero'"),
    (_feature(2, max_len=-1), "feature 'hist': key 'max_len' expects an integer >= 1, got -1"),
    (_feature(0, type="dense"), "feature 'uid': unknown key 'type' (did you mean 'kind'?)"),
    (_feature(0, kind="categorical"), "key 'kind' expects one of sparse, dense, sequence, text, got 'categorical'"),
    (_feature(0, group="users"), "key 'group' expects one of user, item"),
    (_feature(1, normalize="zscore"), "key 'normalize' expects one of standard, minmax, none, got 'zscore'"),
    (_feature(1, buckets=1), "key 'buckets' expects an integer >= 2 or null, got 1"),
    (_feature(1, buckets="ten"), "key 'buckets' expects an integer >= 2 or null, got 'ten'"),
    (_feature(1, boundaries=[3, 1]), "key 'boundaries' expects a strictly increasing list"),
    (_feature(1, boundaries="1,2"), "key 'boundaries' expects a strictly increasing list"),
    (_feature(1, clip=[5, 1]), "key 'clip' expects [low, high]"),
    (_feature(1, clip=[0]), "key 'clip' expects [low, high]"),
    (_feature(1, transform="log"), "key 'transform' expects one of log1p or null, got 'log'"),
    (_feature(1, missing_indicator="yes"), "key 'missing_indicator' expects true or false, got 'yes'"),
    (_feature(1, nan_policy="drop"), "key 'nan_policy' expects one of fill, error, got 'drop'"),
    (_feature(1, null_values=[]), "key 'null_values' expects a non-empty list of values, got []"),
    (_feature(1, bins=4), "feature 'price': key 'bins' applies to features with embedding: ple (for bucketisation use 'buckets')"),
    (_feature(1, embedding="pl"), "feature 'price': key 'embedding' expects one of ple, plr or null, got 'pl'"),
    (_feature(1, embedding="ple", buckets=8), "feature 'price': key 'embedding' cannot be combined with 'buckets'"),
    (_feature(1, embedding="plr", boundaries=[1, 2]), "key 'embedding' cannot be combined with 'boundaries'"),
    (_feature(1, embedding="ple", bins=1), "feature 'price': key 'bins' expects an integer >= 2 or null, got 1"),
    (_feature(1, embedding="ple", sigma=2), "feature 'price': key 'sigma' applies to features with embedding: plr"),
    (_feature(1, embedding="plr", sigma=0), "feature 'price': key 'sigma' expects a number > 0 or null, got 0"),
    (_feature(1, embedding="plr", bins=8), "key 'bins' applies to features with embedding: ple"),
    (_feature(0, embedding="ple"), "feature 'uid': key 'embedding' applies to dense features only"),
    (_feature(2, separator=""), "key 'separator' expects a non-empty string"),
    (_feature(2, pooling="max"), "key 'pooling' expects one of mean, sum, got 'max'"),
    (_feature(0, buckets=3), "feature 'uid': key 'buckets' applies to dense features only"),
    (_feature(0, name=3), "key 'name' expects a non-empty string, got 3"),
    (_task(type="multiclass"), "task 'click': key 'type' expects one of binary, regression, got 'multiclass'"),
    (_task(kind="binary"), "task 'click': unknown key 'kind' (did you mean 'type'?)"),
    (_task(threshold="high"), "task 'click': key 'threshold' expects a number or null, got 'high'"),
    (_task(positive={"a": 1}), "key 'positive' expects a non-empty list of values"),
    (_task(label="y"), "task 'click': unknown key 'label' (did you mean 'column'?)"),
    (_top(read={"sep": ";"}), "read: unknown key 'sep' (did you mean 'delimiter'?)"),
    (_top(read={"delimiter": ";;"}), "read: key 'delimiter' expects one character"),
    (_top(read={"rename": ["a", "b"]}), "read: key 'rename' expects a mapping of column name -> new name"),
    (_top(read="csv"), "read: expected a mapping, got str"),
    (_top(user=5), "key 'user' expects a non-empty string or null, got 5"),
    (_top(tasks={"name": "click"}), "key 'tasks' expects a list, got dict"),
    (_top(domian="dom"), "unknown key 'domian' (did you mean 'domain'?)"),
]


@pytest.mark.parametrize("edit,msg", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_schema_value_is_one_config_error_line_naming_file_and_key(tmp_path, edit, msg):
    d = _base()
    edit(d)
    p = tmp_path / "my_schema.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(SchemaError) as e:
        Schema.load(p)
    text = str(e.value)
    assert isinstance(e.value, ConfigError)
    assert "\n" not in text and text.startswith(str(p) + ": ")
    assert msg in text


def test_values_are_coerced_where_yaml_reads_them_as_text(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("domain: dom\nfeatures:\n  - {name: price, kind: dense, fill_value: 1e-3, clip: [0, 1e3]}\n"
                 "tasks:\n  - {name: click, column: stars, threshold: 3.5e0}\nread: {delimiter: tab}\n")
    s = Schema.load(p)
    f = s.feature("price")
    assert f.fill_value == 0.001 and f.clip == [0.0, 1000.0] and s.task("click").threshold == 3.5
    assert s.read.delimiter == "\t"


def test_invalid_yaml_and_directory_name_the_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("domain: [unclosed\n")
    with pytest.raises(SchemaError, match="broken.yaml: not a valid YAML schema"):
        Schema.load(p)
    with pytest.raises(SchemaError, match="expected a schema file, got a directory"):
        Schema.load(tmp_path)


def test_schema_json_of_the_earlier_format_still_loads(tmp_path):
    d = synthetic_schema().to_dict()
    del d["read"]
    for f in d["features"]:  # before: no numeric / null keys, fill_value 0.0 on every feature
        for k in ("null_values", "clip", "transform", "buckets", "boundaries"):
            del f[k]
        f["fill_value"] = 0.0
    for t in d["tasks"]:
        for k in ("column", "positive", "threshold", "transform"):
            del t[k]
    (tmp_path / "schema.json").write_text(json.dumps(d))
    s = Schema.load(tmp_path / "schema.json")
    assert [f.name for f in s.sparse] == [f.name for f in synthetic_schema().sparse]
    assert s.feature("item_price").fill_value == 0.0 and s.task("click").source == "click"
