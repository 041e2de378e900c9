"""The ``dynarec online --json`` contract (one object per pass per line, then the summary with every pass under
"passes") and the one-line errors of bad ``online.*`` keys and values (exit code 2)."""
import json

import pytest

from dynarec.cli import main

from tests.online.conftest import SMALL

KEYS = {"pass", "rows", "auc", "logloss", "table_rows", "admitted", "evicted", "expired", "delta_rows",
        "train_rows_per_s"}


def _args(stream, out, *sets):
    return ["online", "--schema", str(stream / "schema.yaml"), "--passes", str(stream), "--model", "pepnet",
            "--out", str(out), *[x for s in SMALL + list(sets) for x in ("--set", s)]]


def test_json_lines_one_per_pass_then_the_summary(stream, tmp_path, capsys):
    assert main(_args(stream, tmp_path / "run", "online.max_rows=100", "online.expiry_passes=1") + ["--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert [r["pass"] for r in rows] == [0, 1, 2, 3] and summary["passes"] == rows
    for r in rows:
        assert KEYS <= set(r)
        assert r["rows"] == 1500 and 0 < r["table_rows"] <= 100 and r["delta_rows"] > 0 and r["train_rows_per_s"] > 0
        for task in ("click", "conversion"):
            assert set(r["auc"][task]) >= {"all", "domain=d0"} and set(r["logloss"][task]) >= {"all"}
    assert rows[3]["auc"]["click"]["all"] > rows[0]["auc"]["click"]["all"]  # pass 0 was scored untrained
    assert (tmp_path / "run" / "current").read_text().strip() == "passes/0003"
    # a second run into the same folder without --resume is refused: it would destroy the served passes
    assert main(_args(stream, tmp_path / "run")) == 2
    assert "continue it with --resume" in capsys.readouterr().err
    # resuming a finished run with no new pass prints just the summary
    assert main(["online", "--passes", str(stream), "--out", str(tmp_path / "run"), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["passes"] == rows


@pytest.mark.parametrize("bad, msg", [
    ("online.score=lfru", "online.score: expected one of lfu | lru"),
    ("online.max_row=5", "unknown key 'max_row' (did you mean 'max_rows'?)"),
    ("online.max_rows=0", "online.max_rows: expected an integer >= 1"),
    ("online.caps={hour: 5}", "online.caps.hour: not a dynamic feature"),
    ("online.caps={user_id: -3}", "online.caps.user_id: expected an integer >= 1"),
    ("online.admit_prob=1.5", "online.admit_prob: expected a number > 0 and <= 1"),
    ("online.preset=fast", "online.preset: expected one of pepnet_online"),
    ("online.table=lsh", "online.table: expected one of dynamic | static | hash"),
    ("trainer.epochs=3", "trainer.epochs: has no effect in online training"),
    ("trainer.checkpoint_every_steps=5", "trainer.checkpoint_every_steps: has no effect in online training"),
    ("trainer.device=cuda", "trainer.device: online training runs in one CPU process"),
])
def test_bad_online_keys_are_one_line_errors(stream, tmp_path, capsys, bad, msg):
    assert main(_args(stream, tmp_path / "run", bad)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "run" / "current").exists()


def test_the_pepnet_online_preset_sets_both_optimizers_and_explicit_keys_win():
    from dynarec.online.config import load_online_config

    c = load_online_config(None, ["online.preset=pepnet_online"], "pepnet").trainer
    assert (c.embedding_optimizer, c.embedding_lr, c.dense_optimizer, c.lr) == ("adagrad", 0.05, "adam", 5e-6)
    assert load_online_config(None, ["online.preset=pepnet_online", "trainer.lr=0.001"], "pepnet").trainer.lr == 1e-3
