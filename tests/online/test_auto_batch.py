"""Online passes are trained on once, so the batch adapts to the pass (at least 50 steps, as `train`'s hint
asks of an epoch) unless the config sets trainer.batch_size; online.json records no epoch-training keys."""
import json

import pytest

from dynarec.data.schema import Schema
from dynarec.online.config import load_online_config, pass_batch
from dynarec.online.runner import run_online

from tests.online.conftest import SMALL


@pytest.mark.parametrize("rows,want", [(1, 32), (1600, 32), (3200, 64), (4700, 64), (12_800, 256),
                                       (204_800, 4096), (10**8, 4096)])
def test_the_automatic_batch_gives_at_least_50_steps_between_32_and_the_cap(rows, want):
    cfg = load_online_config(None, [])
    assert cfg.online.auto_batch and pass_batch(rows, cfg) == want
    if rows >= 50 * 32:
        assert -(-rows // want) >= 50 and (want == 4096 or -(-rows // (2 * want)) < 50)  # the largest such


def test_an_explicit_batch_size_is_used_as_it_is():
    cfg = load_online_config(None, ["trainer.batch_size=512"])
    assert not cfg.online.auto_batch and pass_batch(4700, cfg) == 512
    cap = load_online_config(None, ["trainer.batch_size=48", "online.auto_batch=true"])
    assert pass_batch(4700, cap) == 48 and pass_batch(100, cap) == 32  # auto, under the given cap


def test_a_run_without_batch_size_trains_each_pass_with_the_automatic_batch(stream, tmp_path):
    sets = [s for s in SMALL if not s.startswith("trainer.batch_size")]
    cfg = load_online_config(None, sets, "pepnet")
    rows = list(run_online(Schema.load(stream / "schema.yaml"), stream, tmp_path / "run", cfg))
    assert [r["batch_size"] for r in rows] == [32] * len(rows)  # 1,500-row passes: 47 steps of 32
    rec = json.loads((tmp_path / "run" / "online.json").read_text())["config"]
    assert rec["online"]["auto_batch"] is True
    assert not {"epochs", "patience", "monitor"} & set(rec["trainer"])
