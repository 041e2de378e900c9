"""The suite runner's data step: the splits and the synthetic truth come back as separate fields, the truth
row-aligned with each split (it is what the bayes-optimal reference row is computed from)."""
from __future__ import annotations

import numpy as np

from dynarec.bench.runner import bayes_rows, prepare_dataset
from dynarec.bench.suite import DatasetSpec
from dynarec.data.prepare import split_indices
from dynarec.data.synthetic import generate, synthetic_schema
from dynarec.metrics import auc


def test_synthetic_dataset_returns_truth_explicitly_and_aligned(tmp_path):
    prep = prepare_dataset(DatasetSpec(name="s", dataset="synthetic", rows=1200, split_seed=5), tmp_path)
    assert set(prep.tables) == {"train", "valid", "test"}  # no sentinel among the splits
    t, truth = generate(1200, 5)
    idx = split_indices(t, synthetic_schema(), "random", seed=5)
    for split, ix in idx.items():
        assert len(prep.truth[split]["p_click"]) == len(prep.tables[split])
        np.testing.assert_array_equal(prep.truth[split]["p_click"], truth["p_click"][ix])
        # the labels of the prepared split are the raw labels of the same rows
        np.testing.assert_array_equal(prep.tables[split].labels["click"].numpy(),
                                      t.column("click").to_numpy()[ix].astype(np.float32))
    rows = {(m, task, d): v for m, task, d, v in bayes_rows(prep.schema, prep.tables, prep.truth)}
    test = prep.tables["test"]
    assert rows[("auc", "click", "all")] == auc(test.labels["click"].double().numpy(),
                                                np.asarray(prep.truth["test"]["p_click"], np.float64))


def test_prepared_folder_has_no_truth(tmp_path):
    from dynarec.data.prepare import prepare_table

    t, _ = generate(600, 1)
    prepare_table(t, synthetic_schema(), tmp_path / "p")
    prep = prepare_dataset(DatasetSpec(name="p", prepared="p"), tmp_path)  # relative to the suite's folder
    assert prep.truth is None and set(prep.tables) == {"train", "valid", "test"}
    assert len(prep.tables["test"]) == 60
