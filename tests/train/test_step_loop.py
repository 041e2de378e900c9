"""The training step alone, the epoch loop and its callbacks (early stopping, progress, log, checkpoints)."""
import copy
import io
import math

import pytest
import torch
from torch import nn

from dynarec.models import build_model
from dynarec.train.callbacks import Checkpointing, CsvLog, EarlyStopping, ProgressBar
from dynarec.train.config import TrainerConfig
from dynarec.train.loop import Loop, set_seed
from dynarec.train.step import TrainStep
from dynarec.train.trainer import Trainer

FAST = {"epochs": 1, "batch_size": 128, "progress": False}


def _model(schema, name="dnn", seed=0):
    torch.manual_seed(seed)
    return build_model(name, schema, {"hidden": [16]})


def test_hand_driven_steps_equal_one_epoch_of_fit(small_synth):
    schema, tables, _ = small_synth
    train = tables["train"].subset(torch.arange(1000))
    cfg = TrainerConfig(**FAST, lr=1e-2, embedding_lr=0.1)
    fitted = _model(schema)
    hist = Trainer(fitted, cfg, seed=3).fit(train)

    hand = _model(schema)
    step = TrainStep(hand, cfg)
    gen = set_seed(3)
    hand.train()
    losses = [step(b) for b in train.batches(cfg.batch_size, shuffle=True, generator=gen)]
    assert len(losses) == math.ceil(1000 / 128)
    a, b = fitted.state_dict(), hand.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert hist.epochs[0]["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    assert not torch.equal(a["tables.features.weight"], _model(schema).state_dict()["tables.features.weight"])


def test_step_state_round_trip_continues_identically(small_synth):
    """Model weights + ``TrainStep.state_dict()`` (Adagrad accumulators, Adam moments, the learned
    log-variances of uncertainty weighting) are enough to continue exactly."""
    schema, tables, _ = small_synth
    cfg = TrainerConfig(**FAST, task_weighting="uncertainty", embedding_grad="sparse")
    bs = [tables["train"].take(torch.arange(64 * i, 64 * (i + 1))) for i in range(4)]
    m1 = _model(schema)
    s1 = TrainStep(m1, cfg)
    for b in bs[:3]:
        s1(b)
    saved_model, saved_step = copy.deepcopy(m1.state_dict()), copy.deepcopy(s1.state_dict())  # as torch.save
    assert any(p.abs().sum() > 0 for p in s1.weighting.parameters())  # the weighting has moved
    m2 = _model(schema, seed=1)
    m2.load_state_dict(saved_model)
    s2 = TrainStep(m2, cfg)
    s2.load_state_dict(saved_step)
    fresh = _model(schema, seed=1)
    fresh.load_state_dict(saved_model)
    s3 = TrainStep(fresh, cfg)  # same weights, fresh optimizer state: must differ
    for m, s in ((m1, s1), (m2, s2), (fresh, s3)):
        s(bs[3])
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert not all(torch.equal(v, fresh.state_dict()[k]) for k, v in m1.state_dict().items())
    from dynarec.errors import DataError

    with pytest.raises(DataError, match="1 optimizer states saved, this run has 2"):
        s2.load_state_dict({"optimizers": saved_step["optimizers"][:1], "weighting": saved_step["weighting"]})


def test_nan_loss_raises_before_any_update(small_synth):
    schema, tables, _ = small_synth
    m = _model(schema)
    step = TrainStep(m, TrainerConfig(**FAST))
    b = tables["train"].take(torch.arange(64))
    b.labels["click"] = torch.full_like(b.labels["click"], float("nan"))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        step(b)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_forward_module_is_called_and_hooks_come_from_the_model(small_synth):
    """``forward=`` (e.g. a DDP wrapper) runs the forward pass; the update is the same as without it."""
    schema, tables, _ = small_synth

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, batch):
            self.calls += 1
            return self.inner(batch)

    b = tables["train"].take(torch.arange(64))
    plain, wrapped = _model(schema, "mmoe"), _model(schema, "mmoe")
    w = Wrapper(wrapped)
    torch.manual_seed(5)  # the same dropout masks
    TrainStep(plain, TrainerConfig(**FAST))(b)
    torch.manual_seed(5)
    TrainStep(wrapped, TrainerConfig(**FAST), forward=w)(b)  # the wrapper has no extra_loss: read from the model
    assert w.calls == 1
    assert all(torch.equal(v, wrapped.state_dict()[k]) for k, v in plain.state_dict().items())


# ---- the loop with a scripted step: fast and exact --------------------------------------------------
class Counter(nn.Module):
    """A stand-in model whose one weight counts the steps taken."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))


def _counting_step(model):
    def step(batch):
        with torch.no_grad():
            model.w += 1
        return float(len(batch))
    return step


class Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def on_fit_start(self, loop):
        self.log.append((self.name, "fit_start"))

    def on_epoch_start(self, loop, epoch):
        self.log.append((self.name, "epoch_start", epoch, loop.model.training))

    def on_batch_end(self, loop, rows, loss):
        self.log.append((self.name, "batch", rows))

    def on_epoch_end(self, loop, row):
        self.log.append((self.name, "epoch_end", row["epoch"], row["train_loss"]))

    def on_fit_end(self, loop):
        self.log.append((self.name, "fit_end"))

    def close(self, loop):
        self.log.append((self.name, "close"))


def test_callbacks_are_called_in_order(small_synth):
    train = small_synth[1]["train"].subset(torch.arange(250))
    log = []
    model = Counter().eval()
    Loop(model, _counting_step(model), [Recorder("a", log), Recorder("b", log)]).fit(train, epochs=2, batch_size=100)
    want = [("fit_start",)]
    for e in (1, 2):
        want += [("epoch_start", e, True)] + [("batch", n) for n in (100, 100, 50)] + [("epoch_end", e, 250 / 3)]
    want += [("fit_end",), ("close",)]
    assert log == [(who, *ev) for ev in want for who in "ab"]
    assert not model.training and model.w.item() == 6


def test_close_runs_and_fit_end_does_not_when_the_step_fails(small_synth):
    train = small_synth[1]["train"].subset(torch.arange(250))
    log = []

    def bad(batch):
        raise FloatingPointError("boom")
    with pytest.raises(FloatingPointError):
        Loop(Counter(), bad, [Recorder("a", log)]).fit(train, epochs=2, batch_size=100)
    assert log == [("a", "fit_start"), ("a", "epoch_start", 1, True), ("a", "close")]


class Scripted:
    """Sets ``loop.monitor`` from a fixed sequence and keeps the model's state at each epoch's end."""

    def __init__(self, values, higher):
        self.values, self.higher, self.states = values, higher, {}

    def on_epoch_end(self, loop, row):
        loop.monitor = (self.values[loop.epoch - 1], self.higher)
        self.states[loop.epoch] = loop.model.w.detach().clone()


@pytest.mark.parametrize("values,higher,patience,stop,best", [
    ([0.5, 0.7, 0.6, 0.65, 0.9, 0.95], True, 2, 4, 2),  # two epochs without a higher value after epoch 2
    ([0.5, 0.4, 0.45, 0.3, 0.35, 0.36, 0.1, 0.1], False, 2, 6, 4),  # lower is better
    ([0.5, 0.6, 0.7, 0.8], True, 1, 4, 4),  # always improving: runs every epoch
    ([0.5, float("nan"), 0.5, 0.4], True, 2, 3, 1),  # NaN never improves, an equal value neither
])
def test_early_stopping_on_a_scripted_monitor(small_synth, values, higher, patience, stop, best):
    train = small_synth[1]["train"].subset(torch.arange(300))  # 3 steps per epoch
    model = Counter()
    script = Scripted(values, higher)
    hist = Loop(model, _counting_step(model), [script, EarlyStopping(patience)]).fit(
        train, epochs=len(values), batch_size=100)
    assert len(hist.epochs) == stop and hist.best_epoch == best
    assert hist.best_score == values[best - 1]
    assert model.w.item() == 3 * best == script.states[best].item()  # the best epoch's state is reloaded


def test_checkpoint_hook_after_every_nth_epoch_the_last_and_a_stop(small_synth, tmp_path):
    train = small_synth[1]["train"].subset(torch.arange(200))
    model = Counter()
    saved = []
    hook = Checkpointing(lambda loop: saved.append((loop.epoch, loop.model.w.item())), every=2)
    Loop(model, _counting_step(model), [hook]).fit(train, epochs=5, batch_size=100)
    assert saved == [(2, 4.0), (4, 8.0), (5, 10.0)]
    saved.clear()
    script = Scripted([0.9, 0.8, 0.7, 0.6], True)
    Loop(Counter(), _counting_step(model), [script, EarlyStopping(1), hook]).fit(train, epochs=4, batch_size=100)
    assert [e for e, _ in saved] == [2]  # stopped at epoch 2: saved there, once
    from dynarec.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint every: expected an integer >= 1, got 0"):
        Checkpointing(print, every=0)


def test_trainer_progress_bar_and_csv_log(small_synth, tmp_path):
    from rich.console import Console

    schema, tables, _ = small_synth
    out = io.StringIO()
    cfg = TrainerConfig(epochs=2, batch_size=256, patience=5)
    tr = Trainer(_model(schema), cfg, log_path=tmp_path / "log.csv",
                 console=Console(file=out, width=160, force_terminal=False))
    cbs = tr.callbacks(tables["valid"])
    assert [type(c).__name__ for c in cbs] == ["Validation", "EarlyStopping", "ProgressBar", "CsvLog"]
    hist = tr.fit(tables["train"], tables["valid"])
    text = out.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "valid auc" in text
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["epoch", "train_loss", "rows_per_s", "seconds", "valid_auc"]
    assert len(rows) == 3 and len(hist.epochs) == 2
    assert [type(c).__name__ for c in Trainer(_model(schema), TrainerConfig(**FAST)).callbacks()] == []


def test_csv_log_appends_rows_under_one_header(tmp_path):
    log = CsvLog(tmp_path / "sub" / "log.csv")
    log.on_epoch_end(None, {"epoch": 1, "x": 0.5})
    log.on_epoch_end(None, {"epoch": 2, "x": 0.25})
    assert (tmp_path / "sub" / "log.csv").read_text().splitlines() == ["epoch,x", "1,0.5", "2,0.25"]


def test_trainer_config_lives_next_to_the_trainer_and_the_experiment_holds_it():
    import dynarec.config as config
    from dynarec.experiment import load_experiment

    assert not hasattr(config, "TrainerConfig")  # no upward import: dynarec.config knows no trainer
    exp = load_experiment(None, sets=["trainer.epochs=3"])
    assert isinstance(exp.trainer, TrainerConfig) and exp.trainer.epochs == 3
    assert ProgressBar is not None
