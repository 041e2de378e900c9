"""YAML 1.2 numbers and declared value rules (dynarec.yamlio, dynarec.checks)."""
from dataclasses import dataclass, field

import pytest

from dynarec import yamlio
from dynarec.checks import rule, validate
from dynarec.config import apply_overrides, build_dataclass, parse_value, read_yaml_mapping
from dynarec.errors import ConfigError


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("5E+2", 500.0), ("-2e-4", -2e-4), ("1.5", 1.5),
                                        (".5", 0.5), ("3.", 3.0), ("10", 10), ("1.0e-4", 1e-4)])
def test_yaml_numbers(text, value):
    got = yamlio.load(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["abc", "1e3x", "e5", "1-e3"])
def test_yaml_non_numbers_stay_strings(text):
    assert isinstance(yamlio.load(text), str)


def test_set_and_yaml_file_read_exponents(tmp_path):
    assert parse_value("1e-3") == 1e-3
    d = apply_overrides({}, ["trainer.lr=1e-3", "model.hidden=[64, 32]"])
    assert d == {"trainer": {"lr": 1e-3}, "params": {"hidden": [64, 32]}}
    p = tmp_path / "exp.yaml"
    p.write_text("trainer: {lr: 1e-3, embedding_lr: 5E-2}\n")
    assert read_yaml_mapping(p)["trainer"] == {"lr": 1e-3, "embedding_lr": 0.05}


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        read_yaml_mapping(tmp_path)
    b = tmp_path / "bin.yaml"
    b.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match="bin.yaml"):
        read_yaml_mapping(b)


@dataclass
class _Cfg:
    epochs: int = field(default=5, metadata=rule(min=1))
    lr: float = field(default=1e-3, metadata=rule(min=0, min_open=True))
    dropout: float = field(default=0.0, metadata=rule(min=0, max=1, max_open=True))
    hidden: list[int] = field(default_factory=lambda: [8], metadata=rule(min=1, nonempty=True))
    mode: str = field(default="a", metadata=rule(choices=("a", "b")))


@pytest.mark.parametrize("key,value,msg", [
    ("epochs", 0, "x.epochs: expected an integer >= 1, got 0"),
    ("lr", 0.0, "x.lr: expected a number > 0, got 0.0"),
    ("lr", float("inf"), "x.lr: expected a finite number"),
    ("dropout", 1.0, "x.dropout: expected a number >= 0 and < 1, got 1.0"),
    ("dropout", -0.1, "x.dropout: expected a number >= 0 and < 1, got -0.1"),
    ("hidden", [8, 0], r"x.hidden\[1\]: expected an integer >= 1, got 0"),
    ("hidden", [], "x.hidden: expected a non-empty list"),
    ("mode", "c", "x.mode: expected one of a | b, got 'c'"),
])
def test_rules_reject_with_the_key(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        build_dataclass(_Cfg, {key: value}, "x")


def test_rules_accept_valid_values_and_check_direct_construction():
    c = build_dataclass(_Cfg, {"epochs": 1, "lr": 1e-9, "dropout": 0.99, "hidden": [1, 2], "mode": "b"}, "x")
    assert (c.epochs, c.hidden, c.mode) == (1, [1, 2], "b")
    with pytest.raises(ConfigError, match="y.epochs"):
        validate(_Cfg(epochs=-3), "y")
