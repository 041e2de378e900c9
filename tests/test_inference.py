"""The shared scoring pieces: eval_mode restores the caller's mode (also after an error) and task_output is
the sigmoid for binary tasks, the identity for regression ones."""
import pytest
import torch

from dynarec.inference import eval_mode, task_output, task_outputs


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_even_after_an_error(training):
    m = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    m.train(training)
    with eval_mode(m):
        assert not m.training and not m[0].training
    assert m.training is training and m[0].training is training
    with pytest.raises(RuntimeError), eval_mode(m):
        raise RuntimeError("boom")
    assert m.training is training


def test_task_output_is_sigmoid_for_binary_and_identity_for_regression():
    x = torch.tensor([-30.0, 0.0, 2.0])
    assert torch.equal(task_output(x, "binary"), torch.sigmoid(x))
    assert torch.equal(task_output(x, "regression"), x)
    out = task_outputs({"click": x, "time": x}, {"time": "regression"})  # unlisted: binary
    assert torch.equal(out["click"], torch.sigmoid(x)) and torch.equal(out["time"], x)
