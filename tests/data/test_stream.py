"""Streams for online training: the drifting synthetic pass stream, the on-the-fly id stream, the real
MovieLens-100K stream cut by time, and the schema key ``dynamic``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from dynarec.data.schema import Feature, Schema
from dynarec.data.stream import ID_SHARE, NEW_DOMAIN, expected_auc, generate_stream, id_stream, write_stream
from dynarec.errors import SchemaError
from dynarec.metrics import auc

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
PASSES, ROWS = 6, 30_000


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream")
    r = subprocess.run([sys.executable, "-m", "dynarec", "data", "synthetic", "--stream", "--passes", str(PASSES),
                        "--rows-per-pass", str(ROWS), "--seed", "3", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    files = sorted(out.glob("pass-*.parquet"))
    return out, [pq.read_table(f) for f in files], [dict(np.load(out / f"truth-{k:04d}.npz")) for k in range(PASSES)]


def ids(t, col):
    return set(t.column(col).to_numpy().tolist())


def test_pass_files_in_name_order_with_increasing_ts(stream):
    out, tables, _ = stream
    assert [f.name for f in sorted(out.glob("pass-*.parquet"))] == [f"pass-{k:04d}.parquet" for k in range(PASSES)]
    ts = [t.column("ts").to_numpy() for t in tables]
    assert all(np.all(np.diff(x) >= 0) for x in ts)
    assert all(a[-1] < b[0] for a, b in zip(ts, ts[1:]))
    assert all(t.num_rows == ROWS for t in tables)


@pytest.mark.parametrize("col", ["user_id", "item_id", "author_id"])
def test_distinct_ids_grow_while_active_ids_stay_bounded(stream, col):
    _, tables, _ = stream
    active = [len(ids(t, col)) for t in tables]
    seen, cum = set(), []
    for t in tables:
        seen |= ids(t, col)
        cum.append(len(seen))
    assert max(active) <= 1.2 * min(active)  # the live pool has a fixed size
    growth = np.diff(cum)
    assert np.all(growth > 0.05 * active[0])  # every pass brings many never-seen ids
    assert cum[-1] > 1.5 * max(active)  # a static vocabulary would keep growing


@pytest.mark.parametrize("col", ["user_id", "item_id", "author_id"])
def test_ids_retire_and_are_born(stream, col):
    _, tables, truth = stream
    per = [ids(t, col) for t in tables]
    for k in range(1, PASSES):
        before = set().union(*per[:k])
        assert per[k] - before, f"no new {col} in pass {k}"
        later = set().union(*per[k:])
        assert per[k - 1] - later, f"no {col} of pass {k - 1} retired"
    # the truth flags say exactly which rows carry an id born in this pass
    for k in range(1, PASSES):
        if col == "author_id":
            continue
        flag = truth[k]["new_user" if col == "user_id" else "new_item"]
        before = set().union(*per[:k])
        col_ids = tables[k].column(col).to_numpy()
        assert np.array_equal(flag, ~np.isin(col_ids, list(before)))
    assert truth[0]["new_user"].all()


def test_new_domain_appears_midway(stream):
    _, tables, truth = stream
    for k, t in enumerate(tables):
        share = np.mean(np.array(t.column("domain").to_pylist()) == NEW_DOMAIN)
        if k < PASSES // 2:
            assert share == 0
        else:
            assert 0.1 < share < 0.3
            assert np.array_equal(np.array(t.column("domain").to_pylist()) == NEW_DOMAIN, truth[k]["domain"] == 6)


def test_truth_probabilities_and_bayes_auc(stream):
    _, tables, truth = stream
    for t, tr in zip(tables, truth):
        for k in ("p_click", "p_conversion"):
            assert np.all((tr[k] > 0) & (tr[k] < 1))
        assert np.all(tr["p_conversion"] <= tr["p_click"])
        assert auc(t.column("click").to_numpy(), tr["p_click"]) > 0.6
        assert abs(t.column("click").to_numpy().mean() - tr["p_click"].mean()) < 0.02


def test_popularity_drifts():
    """The most popular users of the first pass lose rank over passes (ranks reshuffle, ids retire)."""
    tables = [t for t, _ in generate_stream(4, 20_000, seed=1)]
    top = [set(np.argsort(-np.bincount(t.column("user_id").to_numpy()))[:20].tolist()) for t in tables]
    assert len(top[0] & top[-1]) < 15


def test_reproducible_by_seed(tmp_path):
    a, b, c = (write_stream(tmp_path / n, 2, 500, seed=s) for n, s in (("a", 7), ("b", 7), ("c", 8)))
    assert all(pq.read_table(x).equals(pq.read_table(y)) for x, y in zip(a, b))
    assert not pq.read_table(a[1]).equals(pq.read_table(c[1]))
    assert np.array_equal(np.load(tmp_path / "a" / "truth-0001.npz")["p_click"],
                          np.load(tmp_path / "b" / "truth-0001.npz")["p_click"])


def test_schema_yaml_marks_ids_dynamic(stream):
    out, tables, _ = stream
    s = Schema.load(out / "schema.yaml")
    assert {f.name for f in s.features if f.dynamic} == {"user_id", "item_id", "author_id"}
    assert set(s.columns()) <= set(tables[0].column_names)


def test_dynamic_key_checks():
    assert Feature("hist", "sequence", dynamic=True).dynamic
    with pytest.raises(SchemaError) as e:
        Feature("price", "dense", dynamic=True)
    msg = str(e.value)
    assert "\n" not in msg and "'price'" in msg and "'dynamic'" in msg
    with pytest.raises(SchemaError, match="key 'dynamic' expects true or false"):
        Schema.from_dict({"features": [{"name": "u", "dynamic": "yes"}], "tasks": [{"name": "y"}], "domain": "d"})


def test_dynamic_on_dense_in_yaml_names_file_and_feature(tmp_path):
    p = tmp_path / "schema.yaml"
    p.write_text("features:\n- {name: price, kind: dense, dynamic: true}\ntasks: [{name: y}]\ndomain: d\n")
    with pytest.raises(SchemaError) as e:
        Schema.load(p)
    assert str(e.value).startswith(str(p)) and "'price'" in str(e.value) and "\n" not in str(e.value)


def test_id_stream_distinct_ids_and_churn():
    total, batch, window = 200_000, 4096, 30_000
    n, seen = 0, np.zeros(total, bool)
    last = np.full(total, -1)
    first = np.full(total, -1)
    for k, b in enumerate(id_stream(total, batch, window, seed=0)):
        assert b.dtype == np.int64 and len(b) == batch
        first[b[first[b] < 0]] = k
        last[b] = k
        seen[b] = True
        n = k + 1
    assert seen.all()  # every id of the stream appears
    assert n == -(-total // (batch // 4))
    # churn: ids born early are no longer seen at the end; the life span is bounded by the window
    assert last[: total // 4].max() < n - 1
    assert np.max(last - first) <= window // (batch // 4) + 1


def test_cut_stream_movielens(tmp_path):
    raw = DATA / "movielens" / "ml-100k"
    if not raw.exists():
        pytest.skip(f"real data 'movielens/ml-100k' not available (expected under {DATA})")
    from dynarec.datasets import load_dataset
    from dynarec.datasets.stream_cut import cut_stream

    table, schema = load_dataset("movielens", raw)
    files = cut_stream(table, schema, 5, tmp_path)
    assert [f.name for f in files] == [f"pass-{k:04d}.parquet" for k in range(5)]
    parts = [pq.read_table(f) for f in files]
    assert sum(p.num_rows for p in parts) == table.num_rows == 100_000
    ts = [p.column("timestamp").to_numpy() for p in parts]
    assert all(np.all(np.diff(x) >= 0) for x in ts) and all(a[-1] < b[0] for a, b in zip(ts, ts[1:]))
    t0, t1 = ts[0][0], ts[-1][-1]
    span = (t1 - t0) / 5
    for k, x in enumerate(ts):  # equal time spans
        assert x[0] >= t0 + k * span - 1 and x[-1] <= t0 + (k + 1) * span + 1
    s = Schema.load(tmp_path / "schema.yaml")
    assert {f.name for f in s.features if f.dynamic} == {"user_id", "item_id"}
    assert set(s.columns()) <= set(parts[0].column_names)
    # a real stream has new users arriving over time
    seen = set(parts[0].column("user_id").to_pylist())
    assert set(parts[-1].column("user_id").to_pylist()) - seen


def _logit(p):
    return np.log(p) - np.log1p(-p)


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5, 0.8])
def test_id_share_is_what_the_generator_does(share):
    """The recorded id terms are the ones in the click logit, and their share of its variance is ``id_share`` on
    pass 0 (where the scale is solved) and is measured, not assumed, on the later passes."""
    for k, (t, tr) in enumerate(generate_stream(3, 20_000, seed=1, id_share=share)):
        logit = _logit(tr["p_click"])
        assert np.allclose(tr["id_logit"] + tr["rest_logit"], logit, atol=1e-6)
        assert np.allclose(tr["user_logit"] + tr["item_logit"] + tr["author_logit"], tr["id_logit"])
        assert np.isclose(tr["id_share"], np.var(tr["id_logit"]) / np.var(logit))
        if k == 0:
            assert abs(float(tr["id_share"]) - share) < 1e-9
        # the id terms are a function of (user, item, author): rows with the same three ids carry the same term
        key = np.stack([t.column(c).to_numpy() for c in ("user_id", "item_id", "author_id")], 1)
        _, inv = np.unique(key, axis=0, return_inverse=True)
        inv = inv.ravel()
        n, first = np.bincount(inv), np.bincount(inv, tr["id_logit"])
        spread = np.bincount(inv, tr["id_logit"] ** 2) / n - (first / n) ** 2
        assert spread.max() < 1e-9


def test_an_id_only_oracle_reaches_its_predicted_auc_and_gains_with_the_share():
    """Scoring the sampled clicks by the id terms alone reaches the AUC that ``expected_auc`` predicts from the true
    probabilities; that AUC grows with ``id_share`` and the no-id oracle's falls (0.5 / Bayes at share 0)."""
    got = {}
    for share in (0.0, 0.25, 0.5, 0.75):
        (t, tr), = generate_stream(1, 60_000, seed=2, id_share=share)
        y, p = t.column("click").to_numpy(), tr["p_click"]
        ids_auc, rest_auc = expected_auc(tr["id_logit"], p), expected_auc(tr["rest_logit"], p)
        assert abs(auc(y, tr["id_logit"]) - ids_auc) < 0.01  # predicted = measured on 60k sampled clicks
        assert abs(auc(y, tr["rest_logit"]) - rest_auc) < 0.01
        got[share] = ids_auc, rest_auc, expected_auc(p, p)
    assert got[0.0][0] == 0.5 and abs(got[0.0][1] - got[0.0][2]) < 1e-12  # ids carry nothing
    ids_only = [got[s][0] for s in sorted(got)]
    no_ids = [got[s][1] for s in sorted(got)]
    assert all(a < b for a, b in zip(ids_only, ids_only[1:])) and all(a > b for a, b in zip(no_ids, no_ids[1:]))
    assert got[0.5][0] > 0.75 and got[0.5][1] < got[0.5][2] - 0.1  # at the default, ids carry much of the signal


def test_expected_auc_matches_the_pair_count():
    rng = np.random.default_rng(0)
    s, p = rng.integers(0, 5, 40).astype(float), rng.random(40)
    num = den = 0.0
    for i in range(40):
        for j in range(40):
            if i != j:
                w = p[i] * (1 - p[j])
                num += w * ((s[i] > s[j]) + 0.5 * (s[i] == s[j]))
                den += w
    assert np.isclose(expected_auc(s, p), num / den)


def test_stream_yaml_records_the_measured_share_and_oracles(stream):
    out, _, truth = stream
    meta = yaml.safe_load((out / "stream.yaml").read_text())
    assert meta["id_share"] == ID_SHARE and meta["passes"] == PASSES and len(meta["per_pass"]) == PASSES
    for k, row in enumerate(meta["per_pass"]):
        assert row["id_share"] == round(float(truth[k]["id_share"]), 4)
        assert row["id_only_auc"] < row["bayes_auc"] and row["no_id_auc"] < row["bayes_auc"]
    assert meta["per_pass"][0]["id_share"] == ID_SHARE


def test_new_domain_has_its_own_domain_id(stream):
    """``d6`` is declared in the schema, so the encoders fitted on pass 0 (where it does not occur) give it its own
    id instead of the unknown id 0."""
    from dynarec.online.schema import fit_schema

    out, tables, _ = stream
    s, enc, _ = fit_schema(Schema.load(out / "schema.yaml"), tables[0], "dynamic", 1000, "pass-0")
    assert s.domain_values == ["d0", "d1", "d2", "d3", "d4", "d5", NEW_DOMAIN] and s.num_domains == 8
    assert NEW_DOMAIN not in tables[0].column("domain").to_pylist()
    last = tables[-1]
    dom = enc.transform(last, "pass-last")["domain"]
    is_new = np.array(last.column("domain").to_pylist()) == NEW_DOMAIN
    assert is_new.any() and np.all(dom[is_new] == 7) and np.all((dom[~is_new] >= 1) & (dom[~is_new] <= 6))


def _main(argv) -> int:
    """``dynarec`` in this process (argparse's own refusals exit through SystemExit)."""
    from dynarec.cli import main

    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize("value", ["1", "-0.1", "abc", "nan"])
def test_cli_id_share_rejects_bad_values(tmp_path, value, capsys):
    rc = _main(["data", "synthetic", "--stream", "--passes", "1", "--rows-per-pass", "200", "--id-share", value,
                "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "--id-share" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_cli_id_share_is_written(tmp_path, capsys):
    assert _main(["data", "synthetic", "--stream", "--passes", "2", "--rows-per-pass", "2000", "--id-share", "0.3",
                  "--out", str(tmp_path / "s")]) == 0, capsys.readouterr().err
    meta = yaml.safe_load((tmp_path / "s" / "stream.yaml").read_text())
    assert meta["id_share"] == 0.3 and meta["per_pass"][0]["id_share"] == 0.3


def test_generate_stream_rejects_bad_id_share():
    for bad in (1.0, -0.5, "0.5", True):
        with pytest.raises(ValueError, match="id_share"):
            next(generate_stream(1, 200, id_share=bad))
