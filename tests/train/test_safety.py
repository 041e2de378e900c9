"""Training safety (issue 23 B, issue 27): a collapsed run (finite loss, nothing learned) is one line naming
the lr and never reaches model.pt; a run never replaces a better checkpoint without --overwrite; early stopping
watches the mean over the tasks; old checkpoints with keys that no longer have an effect still load."""
import hashlib
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynarec.cli import main
from dynarec.train.better import WorseRunError, better
from dynarec.train.callbacks import monitor_value
from dynarec.train.checkpoint import load_checkpoint, read_checkpoint, sealed, FORMAT, _bytes
from dynarec.train.collapse import CollapsedError, CollapseGuard, auc_noise, no_better_than_constant
from dynarec.train.loop import History
from dynarec.train.run import train_model

P = {"hidden": [16]}
FAST = {"batch_size": 256, "progress": False}


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety") / "data"
    assert main(["data", "synthetic", "--rows", "3000", "--out", str(d)]) == 0
    return d


def _train(data, out, *extra):
    return main(["train", "--model", "dnn", "--data", str(data), "--epochs", "2", "--batch-size", "256",
                 "--set", "model.hidden=[16]", "--set", "trainer.progress=false", "--out", str(out), *extra])


# ---- collapse ----------------------------------------------------------------------------------------
def test_auc_noise_is_the_std_of_a_random_scorers_auc():
    """Known answer: the Mann-Whitney null std, against 4000 random scorers (the empirical std's relative
    standard error is 1/sqrt(2 * 3999) = 1.1 %: 5 of them allowed)."""
    rng = np.random.default_rng(0)
    n_pos, n_neg = 40, 160
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    aucs = []
    for _ in range(4000):
        r = rng.permutation(n_pos + n_neg) + 1  # ranks of continuous random scores
        aucs.append((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    assert np.std(aucs) == pytest.approx(auc_noise(n_pos, n_neg), rel=5 / math.sqrt(2 * 3999))


def test_no_better_than_constant_needs_every_task_on_both_measures():
    base = {"click": {"auc_bound": 0.55, "logloss": 0.6}, "buy": {"auc_bound": 0.6, "logloss": 0.3}}
    collapsed = {"valid_auc_click": 0.5, "valid_logloss_click": 24.0, "valid_auc_buy": 0.5, "valid_logloss_buy": 2.8}
    assert "click: AUC 0.5 <= 0.550, logloss 24" in no_better_than_constant(collapsed, base)
    assert no_better_than_constant({**collapsed, "valid_auc_click": 0.56}, base) is None  # ranks better than chance
    assert no_better_than_constant({**collapsed, "valid_logloss_buy": 1.38}, base) is None  # below 2 ln 2 = 1.386
    assert no_better_than_constant({**collapsed, "valid_logloss_buy": 1.39}, base) is not None
    assert no_better_than_constant({**collapsed, "valid_auc_click": float("nan")}, base) is not None
    # a barely trained model (one short epoch: AUC 0.56, logloss just above the base rate) is not collapsed
    weak = {"valid_auc_click": 0.56, "valid_logloss_click": 0.65, "valid_auc_buy": 0.6, "valid_logloss_buy": 0.29}
    assert no_better_than_constant(weak, base) is None


def _loop(rows, best_epoch=1):
    hist = History(epochs=rows, best_epoch=best_epoch)
    return SimpleNamespace(history=hist, epoch=len(rows), hint="trainer.lr 1e+06 / trainer.embedding_lr 0.2 too high")


def test_guard_signs():
    g = CollapseGuard()
    g.on_batch_end(None, 256, 1.4)
    g.on_batch_end(None, 256, 99.0)  # the start is the first step's loss
    g.on_epoch_end(_loop([{}]), {"train_loss": 13.9})  # below 10x the start: no error
    with pytest.raises(CollapsedError, match=r"training collapsed at epoch 1: the mean training loss 14\.1 is "
                                             r"10\.1x the first step's 1\.4; likely cause: trainer\.lr 1e\+06"):
        g.on_epoch_end(_loop([{}]), {"train_loss": 14.1})
    g.base = {"click": {"auc_bound": 0.55, "logloss": 0.6}}
    g.on_fit_end(_loop([{"epoch": 1, "valid_auc_click": 0.52, "valid_logloss_click": 0.7},
                        {"epoch": 2, "valid_auc_click": 0.5, "valid_logloss_click": 9.0}], best_epoch=1))  # kept: 1
    with pytest.raises(CollapsedError, match="at the kept epoch 2 the model ranks no better than chance and its "
                                             "outputs are saturated"):
        g.on_fit_end(_loop([{"epoch": 1, "valid_auc_click": 0.52, "valid_logloss_click": 0.7},
                            {"epoch": 2, "valid_auc_click": 0.5, "valid_logloss_click": 9.0}], best_epoch=2))


def test_a_collapsed_run_is_one_line_naming_the_lr_and_keeps_the_good_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data, out) == 0
    before = _digest(out)
    capsys.readouterr()
    assert _train(data, out, "--lr", "1e6") == 2  # finite loss (no NaN): exit 0 and AUC 0.5 before
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "training collapsed" in err[0] and "trainer.lr 1e+06" in err[0], err
    assert _digest(out) == before and not (tmp_path / ".run.partial").exists()


# ---- never replace a better checkpoint -----------------------------------------------------------------
def test_better_is_strict_and_nan_aware():
    hi = {"monitor": "auc", "score": 0.9, "higher": True}
    assert better(hi, {**hi, "score": 0.5}) and not better(hi, {**hi, "score": 0.95}) and not better(hi, hi)
    assert better(hi, {**hi, "score": float("nan")}) and not better({**hi, "score": float("nan")}, hi)
    lo = {"monitor": "logloss", "score": 0.3, "higher": False}
    assert better(lo, {**lo, "score": 0.4}) and not better(lo, {**lo, "score": 0.2})


def test_a_worse_run_never_replaces_a_better_checkpoint(small_synth, tmp_path):
    schema, tables, _ = small_synth
    out = tmp_path / "run"
    good = train_model("dnn", schema, tables, P, {**FAST, "epochs": 3, "lr": 3e-3}, out=out)
    before = _digest(out)
    rec = read_checkpoint(out / "model.pt")["extra"]["valid"]
    assert rec["monitor"] == "auc" and rec["score"] == good.history.best_score and rec["higher"] is True
    worse = dict(FAST, epochs=1, lr=1e-4)
    ref = train_model("dnn", schema, tables, P, worse)  # the same run without an out folder: its score
    assert ref.history.best_score < good.history.best_score
    with pytest.raises(WorseRunError) as e:
        train_model("dnn", schema, tables, P, worse, out=out)
    msg = str(e.value)
    assert "\n" not in msg and f"better validation auc ({good.history.best_score:.4f} against this run's " \
        f"{ref.history.best_score:.4f})" in msg and "--overwrite" in msg
    assert _digest(out) == before and not (tmp_path / ".run.partial").exists()  # kept; the new one not written
    train_model("dnn", schema, tables, P, worse, out=out, overwrite=True)
    assert read_checkpoint(out / "model.pt")["extra"]["valid"]["score"] == ref.history.best_score
    # a better run replaces it without --overwrite
    train_model("dnn", schema, tables, P, {**FAST, "epochs": 3, "lr": 3e-3}, out=out)
    assert read_checkpoint(out / "model.pt")["extra"]["valid"]["score"] == good.history.best_score


def test_cli_worse_run_is_exit_2_one_line_and_overwrite_replaces(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data, out, "--lr", "3e-3") == 0
    before = _digest(out)
    capsys.readouterr()
    assert _train(data, out, "--lr", "1e-4", "--epochs", "1") == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "holds a run with a better validation auc" in err[0], err
    assert _digest(out) == before
    assert _train(data, out, "--lr", "1e-4", "--epochs", "1", "--overwrite") == 0
    assert _digest(out)["model.pt"] != before["model.pt"]


# ---- early stopping over the mean of the tasks ----------------------------------------------------------
def test_monitor_is_the_mean_over_tasks_unless_a_task_is_named():
    m = {"auc": {"click": {"all": 0.6}, "buy": {"all": 0.8}}, "logloss": {"click": {"all": 0.5}, "buy": {"all": 0.3}},
         "rmse": {"watch": {"all": 2.0}}}
    tasks = ["click", "buy", "watch"]
    assert monitor_value(m, "auc", tasks) == (pytest.approx(0.7), True)
    assert monitor_value(m, "auc:buy", tasks) == (0.8, True)
    assert monitor_value(m, "logloss", tasks) == (pytest.approx(0.4), False)
    assert monitor_value(m, "rmse", tasks) == (2.0, False)
    assert monitor_value({"rmse": {"watch": {"all": 2.0}}}, "auc", ["watch"]) == (2.0, False)


def test_early_stopping_watches_the_mean_auc_and_records_it(small_synth):
    schema, tables, _ = small_synth
    r = train_model("mmoe", schema, tables, P, {**FAST, "epochs": 3, "lr": 3e-3, "patience": 3})
    rows = r.history.epochs
    assert r.history.monitor == "auc"
    for row in rows:
        assert row["valid_auc"] == pytest.approx((row["valid_auc_click"] + row["valid_auc_conversion"]) / 2, abs=1e-12)
    means = [row["valid_auc"] for row in rows]
    assert r.history.best_epoch == 1 + means.index(max(means)) and r.history.best_score == max(means)
    one = train_model("mmoe", schema, tables, P, {**FAST, "epochs": 3, "lr": 3e-3, "patience": 3,
                                                  "monitor": "auc:conversion"})
    assert one.history.monitor == "auc:conversion"
    conv = [row["valid_auc:conversion"] for row in one.history.epochs]
    assert conv == [row["valid_auc_conversion"] for row in one.history.epochs]
    assert one.history.best_epoch == 1 + conv.index(max(conv))


def test_a_single_class_task_is_left_out_of_the_mean(small_synth, capsys):
    import copy

    schema, tables, _ = small_synth
    valid = copy.copy(tables["valid"])
    valid.labels = {**valid.labels, "click": torch.zeros_like(valid.labels["click"])}
    r = train_model("mmoe", schema, {**tables, "valid": valid}, P, {**FAST, "epochs": 2, "lr": 3e-3})
    assert "task 'click'" in capsys.readouterr().err and r.history.monitor == "auc"
    assert all(row["valid_auc"] == row["valid_auc_conversion"] for row in r.history.epochs)


# ---- old checkpoints --------------------------------------------------------------------------------
def test_a_checkpoint_recording_a_key_without_effect_loads_with_one_note(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data, out) == 0
    f = out / "model.pt"
    blob = read_checkpoint(f)
    blob["params"] = {**blob["params"], "tower_hidden": [8], "num_experts": 3}  # recorded by an older version
    f.write_bytes(sealed(FORMAT, _bytes(blob)))
    capsys.readouterr()
    model, b = load_checkpoint(out)
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == [f"note: {f}: dropped saved model key(s) num_experts, tower_hidden: no effect on dnn today"] \
        or notes == [f"note: {f}: dropped saved model key(s) tower_hidden, num_experts: no effect on dnn today"]
    assert b["params"] == {"hidden": [16]}
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--json"]) == 0
    assert re.search(r"dropped saved model key\(s\) .*tower_hidden", capsys.readouterr().err)


def test_mc_dropout_on_a_model_without_dropout_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data, out) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--mc-dropout", "4"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--mc-dropout: the dnn model has no dropout" in err[0], err
