"""What the trainer refuses and what it never loses: value rules on every trainer key (checked before any
training), a diverging loss as one line, the single-class validation fallback, runs written aside and swapped
in (a failing or refused run leaves the good one byte-identical) and checksummed checkpoints."""
import dataclasses
import hashlib
import io
import re

import pytest
import torch

from dynarec.cli import main
from dynarec.config import build_dataclass
from dynarec.errors import ConfigError, DataError, DynarecError
from dynarec.train.checkpoint import load_checkpoint
from dynarec.train.config import TrainerConfig
from dynarec.train.run import train_model

FAST = {"epochs": 1, "batch_size": 512, "progress": False}
P = {"hidden": [16]}


@pytest.mark.parametrize("key,value,msg", [
    ("epochs", 0, "trainer.epochs: expected an integer >= 1, got 0"),
    ("batch_size", -5, "trainer.batch_size: expected an integer >= 1, got -5"),
    ("eval_batch_size", 0, "trainer.eval_batch_size: expected an integer >= 1"),
    ("lr", 0.0, "trainer.lr: expected a number > 0"),
    ("lr", float("nan"), "trainer.lr: expected a finite number"),
    ("embedding_lr", -1.0, "trainer.embedding_lr: expected a number > 0"),
    ("weight_decay", -0.1, "trainer.weight_decay: expected a number >= 0"),
    ("patience", -1, "trainer.patience: expected an integer >= 0"),
    ("grad_clip", -1.0, "trainer.grad_clip: expected a number >= 0"),
    ("threads", -2, "trainer.threads: expected an integer >= 0"),
    ("embedding_optimizer", "adamax", "trainer.embedding_optimizer: expected one of adagrad | sgd"),
    ("embedding_grad", "row", "trainer.embedding_grad: expected one of auto | sparse | dense"),
    ("dense_optimizer", "lion", "trainer.dense_optimizer: expected one of adam | adamw | sgd"),
    ("task_weighting", "magic", "trainer.task_weighting: expected one of equal | fixed | uncertainty"),
    ("monitor", "accuracy", "trainer.monitor: expected auc | logloss | gauc | rmse"),
    ("loss_weights", {"click": -1.0}, "trainer.loss_weights.click: expected a finite number >= 0"),
])
def test_every_trainer_value_is_checked_with_its_key(key, value, msg):
    with pytest.raises(ConfigError, match=re.escape(msg)):
        build_dataclass(TrainerConfig, {key: value}, "trainer")


def test_off_values_and_choices_match_what_the_trainer_builds():
    from dynarec.losses import WEIGHTINGS
    from dynarec.train import config, optim

    assert build_dataclass(TrainerConfig, {"grad_clip": None, "patience": 0, "threads": 0}, "trainer").grad_clip is None
    assert build_dataclass(TrainerConfig, {"grad_clip": 0}, "trainer").grad_clip == 0.0
    assert config.EMBEDDING_OPTIMIZERS == optim.EMBEDDING_OPTIMIZERS and config.EMBEDDING_GRADS == optim.EMBEDDING_GRADS
    assert set(config.TASK_WEIGHTINGS) == set(WEIGHTINGS)


def test_a_trainer_config_from_python_is_checked_too(small_synth, tmp_path):
    schema, tables, _ = small_synth
    with pytest.raises(ConfigError, match="trainer.epochs: expected an integer >= 1, got 0"):
        train_model("dnn", schema, tables, P, TrainerConfig(epochs=0, progress=False), out=tmp_path / "r")
    with pytest.raises(ConfigError, match="trainer.lr"):
        train_model("dnn", schema, tables, P, dataclasses.replace(TrainerConfig(progress=False), lr=-1.0))
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()


@pytest.mark.parametrize("over,msg", [
    ({"monitor": "auc:nope"}, "trainer.monitor: unknown task 'nope'"),
    ({"monitor": "rmse:click"}, "trainer.monitor: 'rmse:click' does not exist for the binary task 'click'"),
    ({"task_weighting": "fixed", "loss_weights": {"nope": 1.0}}, "trainer.loss_weights: unknown task 'nope'"),
    ({"loss_weights": {"click": 2.0}}, "trainer.loss_weights: only used with trainer.task_weighting: fixed"),
])
def test_task_checks_fail_before_any_training(small_synth, monkeypatch, over, msg):
    schema, tables, _ = small_synth
    from dynarec.train.step import TrainStep

    def never(*a, **k):
        raise AssertionError("a step ran")
    monkeypatch.setattr(TrainStep, "step", never)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        train_model("mmoe", schema, tables, P, {**FAST, **over})


def test_fixed_loss_weights_change_the_training(small_synth):
    schema, tables, _ = small_synth
    a = train_model("mmoe", schema, tables, P, {**FAST, "task_weighting": "fixed", "loss_weights": {"click": 1.0}})
    b = train_model("mmoe", schema, tables, P, {**FAST, "task_weighting": "fixed", "loss_weights": {"click": 5.0}})
    assert a.metrics["auc"]["click"]["all"] != b.metrics["auc"]["click"]["all"]


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def good_run(small_synth, tmp_path):
    schema, tables, _ = small_synth
    out = tmp_path / "run"
    train_model("dnn", schema, tables, P, {**FAST, "epochs": 2}, out=out)
    assert {"model.pt", "metrics.json", "log.csv", "config.json"} <= set(_digest(out))
    return out, _digest(out)


def test_a_diverging_run_is_one_line_and_leaves_the_good_run_byte_identical(small_synth, good_run):
    schema, tables, _ = small_synth
    out, before = good_run
    with pytest.raises(DynarecError) as e:
        train_model("dnn", schema, tables, P, {**FAST, "epochs": 2, "lr": 1e12, "embedding_lr": 1e12}, out=out)
    msg = str(e.value)
    assert "\n" not in msg and re.search(r"diverged at epoch 1, step \d+ of \d+: training loss became (nan|inf)", msg)
    assert "trainer.lr 1e+12" in msg and "too high" in msg
    assert _digest(out) == before
    assert not (out.parent / ".run.partial").exists()


def test_a_refused_run_leaves_the_good_run_byte_identical(small_synth, good_run, capsys):
    schema, tables, _ = small_synth
    out, before = good_run
    with pytest.raises(ConfigError):
        train_model("dnn", schema, tables, P, {**FAST, "monitor": "auc:nope"}, out=out)
    with pytest.raises(ConfigError):
        train_model("dnn", schema, tables, {"hiden": [4]}, FAST, out=out)
    assert _digest(out) == before


def test_a_new_run_replaces_the_whole_folder(small_synth, good_run):
    schema, tables, _ = small_synth
    out, before = good_run
    (out / "stale.txt").write_text("from an earlier run")
    r = train_model("dnn", schema, tables, P, {**FAST, "epochs": 1}, seed=5, out=out, overwrite=True)  # scores lower
    after = _digest(out)
    assert "stale.txt" not in after and after["model.pt"] != before["model.pt"]
    assert len((out / "log.csv").read_text().splitlines()) == 2 and r.checkpoint == str(out)
    assert load_checkpoint(out)[1]["extra"]["seed"] == 5


def test_out_naming_a_file_or_a_foreign_folder_is_refused(small_synth, tmp_path):
    schema, tables, _ = small_synth
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    with pytest.raises(DynarecError, match=re.escape(f"{f}: exists and is a file")):
        train_model("dnn", schema, tables, P, FAST, out=f)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("x")
    with pytest.raises(DynarecError, match="not a training run folder"):
        train_model("dnn", schema, tables, P, FAST, out=tmp_path / "home")
    assert f.read_text() == "mine" and (tmp_path / "home" / "thesis.tex").read_text() == "x"


def test_cli_divergence_is_exit_2_one_line(small_synth, tmp_path, capsys):
    assert main(["data", "synthetic", "--rows", "2000", "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    rc = main(["train", "--model", "dnn", "--data", str(tmp_path / "d"), "--epochs", "2", "--lr", "1e12",
               "--set", "trainer.embedding_lr=1e12", "--set", "trainer.progress=false", "--out", str(tmp_path / "r")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "diverged at epoch" in err[0], err
    assert not (tmp_path / "r").exists()


def test_flipped_bytes_in_model_pt_are_a_one_line_error_naming_the_file(good_run):
    out, _ = good_run
    load_checkpoint(out)  # intact: loads
    f = out / "model.pt"
    b = bytearray(f.read_bytes())
    mid = len(b) // 2
    b[mid - 2000: mid + 2000] = bytes(x ^ 0xFF for x in b[mid - 2000: mid + 2000])
    f.write_bytes(bytes(b))
    with pytest.raises(DataError) as e:
        load_checkpoint(out)
    assert str(e.value).startswith(f"{f}: checksum mismatch") and "\n" not in str(e.value)


def test_flipping_only_weight_bytes_is_a_checksum_mismatch(good_run):
    out, _ = good_run
    f = out / "model.pt"
    blob = torch.load(f, weights_only=False)
    payload = blob["payload"].clone()
    mid = len(payload) // 2
    payload[mid: mid + 4000] ^= 1
    buf = io.BytesIO()
    torch.save({**blob, "payload": payload}, buf)
    f.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=re.escape(f"{f}: checksum mismatch")):
        load_checkpoint(out)


def test_old_checkpoints_without_a_checksum_still_load(good_run, tmp_path):
    out, _ = good_run
    model, blob = load_checkpoint(out, merge=False)
    old = {**blob, "format": "dynarec-checkpoint-1"}  # the layout before checksums: the dict itself
    torch.save(old, tmp_path / "old.pt")
    m2, b2 = load_checkpoint(tmp_path / "old.pt", merge=False)
    assert b2["model"] == "dnn"
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in model.state_dict().items())


def test_single_class_validation_labels_warn_and_monitor_logloss(small_synth, capsys):
    schema, tables, _ = small_synth
    import copy

    valid = copy.copy(tables["valid"])
    valid.labels = {**valid.labels, "click": torch.zeros_like(valid.labels["click"])}
    r = train_model("dnn", schema, {**tables, "valid": valid}, P,
                    {**FAST, "epochs": 3, "lr": 0.05, "patience": 5, "monitor": "auc:click"})
    err = capsys.readouterr().err
    assert "task 'click'" in err and "monitors logloss:click instead of auc:click" in err
    scores = [row["valid_logloss:click"] for row in r.history.epochs]
    assert all(s == s for s in scores)  # finite, not NaN
    assert r.history.best_epoch == 1 + scores.index(min(scores))

