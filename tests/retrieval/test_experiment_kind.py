"""A checkpoint is evaluated by the kind of the model it holds (the registry's), not by the files beside it;
a retrieval checkpoint scores no rows (a one-line error naming the command that serves it)."""
import pytest

from dynarec.errors import DynarecError
from dynarec.experiment import evaluate_checkpoint, load_experiment, predict_checkpoint


def test_retrieval_checkpoint_is_told_by_its_model_not_by_its_files(llo_folder, tmp_path):
    from dynarec.experiment import train_experiment

    cfg = load_experiment(None, {"model": "popularity", "data.path": str(llo_folder), "out": str(tmp_path / "p")},
                          ["trainer.progress=false"])
    res = train_experiment(cfg)
    (tmp_path / "p" / "retrieval.pt").unlink()  # the lookup file is not what makes it a retrieval checkpoint
    ev = evaluate_checkpoint(tmp_path / "p", llo_folder)
    assert ev["metrics"]["recall@10"] == pytest.approx(res.metrics["recall@10"])
    with pytest.raises(DynarecError, match="retrieval model.*dynarec retrieve"):
        predict_checkpoint(tmp_path / "p", llo_folder / "test.parquet", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
