"""The library steps behind the data / train verbs: the synthetic truth files are row-aligned with the
prepared splits, and train_experiment leaves checkpoint + config.json."""
from __future__ import annotations

import json

import numpy as np

from dynarec.data.prepare import write_synthetic
from dynarec.experiment import load_experiment, train_experiment
from dynarec.data.prepare import load_prepared, split_indices
from dynarec.data.synthetic import generate, synthetic_schema


def test_write_synthetic_truth_files_align_with_the_prepared_splits(tmp_path):
    tables = write_synthetic(tmp_path / "d", 1000, seed=4, split="temporal")
    _, loaded = load_prepared(tmp_path / "d")
    t, truth = generate(1000, 4)
    idx = split_indices(t, synthetic_schema(), "temporal", seed=4)
    for s in ("train", "valid", "test"):
        f = np.load(tmp_path / "d" / f"truth_{s}.npz")
        assert len(f["p_click"]) == len(loaded[s]) == len(tables[s])
        np.testing.assert_array_equal(f["p_conversion"], truth["p_conversion"][idx[s]])
        np.testing.assert_array_equal(loaded[s].labels["click"].numpy(),
                                      t.column("click").to_numpy()[idx[s]].astype(np.float32))


def test_train_experiment_writes_checkpoint_and_config(tmp_path):
    write_synthetic(tmp_path / "d", 800, seed=0)
    cfg = load_experiment(None, {"model": "dnn", "data.path": str(tmp_path / "d"), "out": str(tmp_path / "run"),
                                 "trainer.epochs": 1}, ["model.hidden=[4]", "trainer.progress=false"])
    res = train_experiment(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["params"] == {"hidden": [4]} and saved["data"]["path"] == str(tmp_path / "d")
    assert (tmp_path / "run" / "model.pt").exists() and res.checkpoint


def test_batch_hint_only_below_fifty_steps_per_epoch():
    from dynarec.train.run import batch_hint

    assert batch_hint(40_000, 512) == []  # 79 steps
    (h,) = batch_hint(40_000, 4096)  # 10 steps: the Adult case
    assert "10 step(s) per epoch" in h and "--batch-size 512" in h
    assert batch_hint(100, 4096) and "--batch-size 32" in batch_hint(100, 4096)[0]
