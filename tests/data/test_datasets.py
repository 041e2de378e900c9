"""Every dataset loader on a real file of its format from ../shared/data (skipped when absent).

Counts asserted here are facts of the public files (documented in their READMEs / shared/data/README.md),
and several tests cross-check two independent layouts of the same data (they must agree row by row)."""
from __future__ import annotations

import json
from collections import Counter
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from dynarec.data.prepare import load_prepared, prepare_table
from dynarec.datasets import DATASET_OPTIONS, DATASETS, describe_dataset, load_dataset, parse_options
from dynarec.errors import DataError

DATA = Path(os.environ.get("DYNAREC_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def need(rel: str) -> Path:
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"real data '{rel}' not available (expected under {DATA}; see shared/data/README.md)")
    return p


def counts(t: pa.Table, col: str = "domain") -> dict:
    return dict(Counter(t.column(col).to_pylist()))


def rate(t: pa.Table, col: str) -> float:
    return float(np.mean(t.column(col).to_numpy(zero_copy_only=False)))


def check_prepares(t: pa.Table, schema, tmp_path: Path, split: str = "random") -> dict:
    """prepare_table writes a folder that load_prepared reads back, with the domains and labels intact."""
    out = tmp_path / "prepared"
    tabs = prepare_table(t, schema, out=out, split=split, seed=0)
    s2, back = load_prepared(out)
    assert sum(len(v) for v in back.values()) == t.num_rows
    assert s2.num_domains == len(set(t.column(schema.domain).to_pylist())) + 1  # + id 0 = unknown
    for task in schema.task_names:
        ys = np.concatenate([back[s].labels[task].numpy() for s in back])
        assert ys.mean() == pytest.approx(rate(t, task), abs=1e-6)
        assert np.array_equal(back["test"].labels[task].numpy(), tabs["test"].labels[task].numpy())
    return back


# ---------------------------------------------------------------------------------------------- registry
def test_registry_and_options():
    assert set(DATASETS) == {"movielens", "douban", "kuairand", "aliccp", "aliexpress", "amazon", "obd"}
    for name in DATASETS:
        assert DATASET_OPTIONS[name] and "options:" in describe_dataset(name)
    with pytest.raises(DataError, match="unknown dataset 'movielen'.*did you mean 'movielens'"):
        load_dataset("movielen", ".")
    with pytest.raises(DataError, match="unknown option 'domian'.*did you mean 'domain'"):
        load_dataset("movielens", ".", domian="age")
    with pytest.raises(DataError, match="option 'domain' must be one of"):
        load_dataset("movielens", ".", domain="city")
    with pytest.raises(DataError, match="option 'like_min' expects int"):
        load_dataset("movielens", ".", like_min="four")
    assert parse_options(["like_min=3", "domain=gender"]) == {"like_min": "3", "domain": "gender"}


def test_missing_raw_files_are_clear(tmp_path):
    with pytest.raises(DataError, match="raw folder .* not found"):
        load_dataset("douban", tmp_path / "nope")
    with pytest.raises(DataError, match="no MovieLens raw files"):
        load_dataset("movielens", tmp_path)
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n")
    with pytest.raises(DataError, match="raw file 'u.user' not found"):
        load_dataset("movielens", tmp_path)
    for name in ("douban", "kuairand", "aliccp", "aliexpress", "amazon", "obd"):
        with pytest.raises(DataError, match=name):
            load_dataset(name, tmp_path)


# ---------------------------------------------------------------------------------------------- movielens
def test_movielens_100k(tmp_path):
    raw = need("movielens/ml-100k")
    t, schema = load_dataset("movielens", raw, zip_prefix=2)
    assert t.num_rows == 100_000
    # Scenario-Wise-Rec's age domains (shared/data/README.md)
    assert counts(t) == {"age<25": 26_551, "age25-34": 35_444, "age35+": 38_005}
    # ML-100K rating histogram: 1: 6,110  2: 11,370  3: 27,145  4: 34,174  5: 21,201
    assert int(pc.sum(t.column("like")).as_py()) == 34_174 + 21_201
    assert int(pc.sum(t.column("love")).as_py()) == 21_201
    assert schema.feature("genres").kind == "sequence" and schema.feature("genres").group == "item"
    assert schema.timestamp == "timestamp" and schema.user == "user_id"
    # u.item row 1 is Toy Story: Animation, Children's, Comedy; u.user row 1: 24, M, technician, 85711
    first = t.filter(pc.equal(t.column("item_id"), 1)).slice(0, 1).to_pylist()[0]
    assert first["genres"] == "Animation|Children's|Comedy"
    u1 = t.filter(pc.equal(t.column("user_id"), 1)).slice(0, 1).to_pylist()[0]
    assert (u1["age"], u1["gender"], u1["occupation"], u1["zip"], u1["domain"]) == (24, "M", "technician", "85", "age<25")
    assert len(set(t.column("occupation").to_pylist())) == 21
    # other domain definitions and the like threshold option
    g, _ = load_dataset("movielens", raw, domain="gender", like_min=5, tasks="like,rating")
    assert sum(counts(g).values()) == 100_000 and set(counts(g)) == {"F", "M"}
    assert int(pc.sum(g.column("like")).as_py()) == 21_201
    back = check_prepares(t, schema, tmp_path, split="temporal")
    assert back["train"].sequences["genres"].shape[1] == 6
    assert (back["train"].sequences["genres"] > 0).sum(1).min() >= 1  # every movie has >= 1 genre


def test_movielens_1m_dat_layout_matches_merged_csv(tmp_path):
    """The 1M ``::`` files and the merged CSV of the same ratings give the same table (two parsers)."""
    part = need("movielens/ml-1m-partial")
    merged, ms = load_dataset("movielens", part, version="merged")
    assert merged.num_rows == 500
    # build a ratings.dat from the sample's (real) ratings, next to the real users.dat / movies.dat
    raw = tmp_path / "ml-1m"
    raw.mkdir()
    for f in ("users.dat", "movies.dat"):
        (raw / f).symlink_to(part / f)
    s = pacsv.read_csv(part / "ml-1m-sample_HAMUR.csv")
    lines = ["::".join(str(x) for x in r) for r in zip(*(s.column(c).to_pylist() for c in
                                                         ("user_id", "movie_id", "rating", "timestamp")))]
    (raw / "ratings.dat").write_text("\n".join(lines) + "\n")
    dat, ds = load_dataset("movielens", raw)
    assert [f.name for f in ds.features] == [f.name for f in ms.features]
    for c in ("domain", "user_id", "item_id", "gender", "age", "occupation", "zip", "genres", "like", "love"):
        assert dat.column(c).to_pylist() == merged.column(c).to_pylist(), c
    # users.dat age groups reproduce Scenario-Wise-Rec's 1,325 / 2,096 / 2,619 users
    from dynarec.datasets.movielens import age_domain
    ages = [int(line.split("::")[2]) for line in (part / "users.dat").read_text().splitlines()]
    assert dict(Counter(age_domain(np.array(ages)))) == {"age<25": 1_325, "age25-34": 2_096, "age35+": 2_619}


def test_movielens_deepctr_sample(tmp_path):
    t, schema = load_dataset("movielens", need("samples/deepctr/movielens_sample.txt"))
    assert t.num_rows == 200 and set(counts(t)) <= {"age<25", "age25-34", "age35+"}
    check_prepares(t, schema, tmp_path)


# ---------------------------------------------------------------------------------------------- douban
def test_douban_diffmsr(tmp_path):
    t, schema = load_dataset("douban", need("douban/diffmsr"))
    # book 76,832 + 9,604 + 9,605; movie val + test 2 x 113,342; music 2,498 + 312 + 313 (sparse file not added)
    assert counts(t) == {"book": 96_041, "movie": 226_684, "music": 3_123}
    assert counts(t, "raw_split")["train"] == 76_832 + 2_498
    # items are globally offset: music 0-5566, book 5567-12343, movie 12344-21908
    for dom, lo, hi in (("music", 0, 5566), ("book", 5567, 12343), ("movie", 12344, 21908)):
        items = t.filter(pc.equal(t.column("domain"), dom)).column("item_id")
        assert lo <= pc.min(items).as_py() and pc.max(items).as_py() <= hi
    assert 0.5 < rate(t, "like") < 0.8
    only_music, _ = load_dataset("douban", need("douban/diffmsr"), domains="music")
    assert counts(only_music) == {"music": 3_123}
    check_prepares(t, schema, tmp_path)


def test_douban_gadtcdr_agrees_with_diffmsr():
    g, _ = load_dataset("douban", need("douban/gadtcdr"))
    assert counts(g) == {"book": 96_041, "music": 69_709}
    d, _ = load_dataset("douban", need("douban/diffmsr"), domains="book")
    # README mapping: diffmsr user = user - 1, book item = item + 5566, label = rating > 3
    gb = g.filter(pc.equal(g.column("domain"), "book"))
    gkey = {(u - 1, int(i.split(":")[1]) + 5566): y for u, i, y in
            zip(gb.column("user_id").to_pylist(), gb.column("item_id").to_pylist(), gb.column("like").to_pylist())}
    dkey = {(u, i): y for u, i, y in zip(d.column("user_id").to_pylist(), d.column("item_id").to_pylist(),
                                        d.column("like").to_pylist())}
    assert len(gkey) == len(dkey) == 96_041 and gkey == dkey


def test_douban_scenario_wise_rec_sample(tmp_path):
    t, schema = load_dataset("douban", need("samples/scenario-wise-rec/douban_sample.csv"))
    assert counts(t) == {"movie": 2_299, "book": 364, "music": 337}
    assert "living_place" in [f.name for f in schema.features]
    check_prepares(t, schema, tmp_path)


# ---------------------------------------------------------------------------------------------- kuairand
def test_kuairand_merged_and_raw_layouts(tmp_path):
    src = need("samples/scenario-wise-rec/kuairand_sample.csv")
    t, schema = load_dataset("kuairand", src)
    assert t.num_rows == 200 and counts(t) == {"tab1": 200}
    assert rate(t, "is_click") == pytest.approx(32 / 200)
    m = pacsv.read_csv(src)
    play, dur = m.column("play_time_ms").to_numpy(), m.column("duration_ms").to_numpy()
    assert np.array_equal(t.column("long_view").to_numpy(), (play >= np.minimum(dur, 18_000)).astype(np.int8))
    check_prepares(t, schema, tmp_path)
    # the same rows in KuaiRand's raw layout: a log file + user_features + video_features_basic
    raw = tmp_path / "KuaiRand-1K" / "data"
    raw.mkdir(parents=True)
    user_cols = ["user_id"] + [c for c in m.column_names if c.startswith(("user_active", "is_low", "is_live",
                                                                         "is_video", "follow", "fans", "friend",
                                                                         "register", "onehot"))]
    log = m.select(["user_id", "video_id", "is_click", "play_time_ms", "duration_ms", "tab"])
    log = log.append_column("hourmin", pa.array(np.full(200, 1530))).append_column("time_ms", pa.array(np.arange(200)))
    pacsv.write_csv(log, raw / "log_standard_4_08_to_4_21_1k.csv")
    users = pa.Table.from_pylist(list({r["user_id"]: r for r in m.select(user_cols).to_pylist()}.values()))
    pacsv.write_csv(users, raw / "user_features_1k.csv")
    vids = pa.Table.from_pylist(list({r["video_id"]: r for r in m.select(["video_id", "video_type",
                                                                          "visible_status"]).to_pylist()}.values()))
    pacsv.write_csv(vids, raw / "video_features_basic_1k.csv")
    r, rs = load_dataset("kuairand", tmp_path / "KuaiRand-1K")
    for c in ("domain", "user_id", "video_id", "user_active_degree", "onehot_feat3", "video_type", "is_click",
              "long_view"):
        assert r.column(c).to_pylist() == t.column(c).to_pylist(), c
    assert rs.timestamp == "timestamp" and set(r.column("hour").to_pylist()) == {15}


# ---------------------------------------------------------------------------------------------- ali-ccp
def test_aliccp_processed_layout(tmp_path):
    t, schema = load_dataset("aliccp", need("samples/scenario-wise-rec"))
    assert t.num_rows == 200
    assert counts(t, "raw_split") == {"train": 100, "val": 50, "test": 50}
    assert set(counts(t)) == {1, 2, 3}
    train = pacsv.read_csv(DATA / "samples/scenario-wise-rec/ali_ccp_train_sample.csv")
    assert counts(t.filter(pc.equal(t.column("raw_split"), "train"))) == dict(Counter(train.column("301").to_pylist()))
    groups = {f.name: f.group for f in schema.features}
    assert groups["101"] == "user" and groups["205"] == "item" and groups["508"] == "context"
    assert schema.feature("D109_14").kind == "dense" and schema.task_names == ["click", "purchase"]
    assert rate(t, "purchase") <= rate(t, "click")
    check_prepares(t, schema, tmp_path)


# ---------------------------------------------------------------------------------------------- aliexpress
def test_aliexpress_country_layout(tmp_path):
    src = need("samples/torch-rechub/aliexpress")
    one, _ = load_dataset("aliexpress", src)
    assert one.num_rows == 120 and counts(one) == {"aliexpress": 120}
    # the per-country layout: AliExpress_<CC>/train.csv, test.csv
    for cc, f in (("NL", "aliexpress_train_sample.csv"), ("ES", "aliexpress_test_sample.csv")):
        d = tmp_path / "raw" / f"AliExpress_{cc}"
        d.mkdir(parents=True)
        (d / ("train.csv" if "train" in f else "test.csv")).symlink_to(src / f)
    t, schema = load_dataset("aliexpress", tmp_path / "raw")
    assert counts(t) == {"NL": 100, "ES": 20}
    assert counts(t, "raw_split") == {"train": 100, "test": 20}
    assert rate(t, "click") == pytest.approx(rate(one, "click"))
    assert len(schema.sparse) == 1 + 16 and len(schema.dense) == 63
    nl, _ = load_dataset("aliexpress", tmp_path / "raw", countries="nl")
    assert counts(nl) == {"NL": 100}
    check_prepares(t, schema, tmp_path)


# ---------------------------------------------------------------------------------------------- amazon
def test_amazon_5core_json_and_ratings_csv(tmp_path):
    # no real 5-core file is available here: rows written in the documented 2014 / 2018 formats
    raw = tmp_path / "amazon"
    raw.mkdir()
    recs = [{"reviewerID": f"U{u}", "asin": f"B{i}", "reviewerName": "x", "helpful": [0, 0], "reviewText": "t",
             "overall": float(r), "summary": "s", "unixReviewTime": 1_400_000_000 + k, "reviewTime": "05 1, 2014"}
            for k, (u, i, r) in enumerate([(1, 1, 5), (1, 2, 3), (2, 1, 4), (2, 3, 1), (3, 2, 5)])]
    (raw / "reviews_Electronics_5.json").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (raw / "ratings_Books.csv").write_text("U1,X1,4.0,1400000000\nU9,X2,2.0,1400000001\nU2,X1,5.0,1400000002\n")
    t, schema = load_dataset("amazon", raw)
    assert counts(t) == {"Electronics": 5, "Books": 3}
    e = t.filter(pc.equal(t.column("domain"), "Electronics"))
    assert e.column("like").to_pylist() == [1, 0, 1, 0, 1]
    assert t.filter(pc.equal(t.column("domain"), "Books")).column("user_id").to_pylist() == ["U1", "U9", "U2"]
    core, _ = load_dataset("amazon", raw, categories="Electronics", min_core=2)
    assert core.num_rows < 5 and set(core.column("user_id").to_pylist()) <= {"U1", "U2"}


# ---------------------------------------------------------------------------------------------- obd
def test_obd(tmp_path):
    raw = need("obd")
    t, schema = load_dataset("obd", raw, domain="policy")
    assert counts(t) == {"random": 10_000, "bts": 10_000}
    assert set(t.column("position").to_pylist()) == {1, 2, 3}
    assert schema.feature("position").group == "position"
    assert 0.002 < rate(t, "click") < 0.01  # CTR ~0.4-0.7 %
    # affinity = the user-item_affinity column of the shown item
    src = pacsv.read_csv(raw / "random/all/all.csv")
    items = src.column("item_id").to_pylist()[:50]
    want = [src.column(f"user-item_affinity_{i}")[k].as_py() for k, i in enumerate(items)]
    rnd = t.filter(pc.equal(t.column("policy"), "random"))
    assert np.allclose(rnd.column("affinity").to_pylist()[:50], want) and np.abs(want).sum() > 0
    ts = t.column("timestamp").to_numpy()
    assert ts.min() >= 1_574_553_600 - 86_400  # 2019-11-24 (UTC) in seconds
    camp, _ = load_dataset("obd", raw)
    assert counts(camp) == {"all": 20_000}
    check_prepares(t, schema, tmp_path, split="temporal")
