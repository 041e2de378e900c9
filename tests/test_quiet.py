"""Noise a user should not see (issue 23 B): the CLI silences fbgemm_gpu's import-time deprecation warnings and
torchvision's warnings by module, and nothing else; DDP's C++ warning is covered by tests/scale/test_ddp.py."""
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dynarec.quiet import silence

ROOT = Path(__file__).resolve().parent.parent


def test_only_the_named_noise_is_silenced():
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        silence()
        warnings.warn_explicit("vision", UserWarning, "image.py", 1, module="torchvision.io.image")
        warnings.warn_explicit("renamed", DeprecationWarning, "ops.py", 1, module="fbgemm_gpu.split_table_batched_embeddings_ops")
        warnings.warn_explicit("fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not "
                               "registered to the Autograd key(s) but we are trying to backprop through it.",
                               UserWarning, "graph.py", 979, module="torch.autograd.graph")
        warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="dynarec.train.loop")  # still shown
        warnings.warn_explicit("fbgemm user", UserWarning, "x.py", 1, module="fbgemm_gpu.x")  # not a deprecation: shown
        warnings.warn_explicit("lookalike", UserWarning, "x.py", 1, module="torchvisionary")  # another package: shown
    assert [str(w.message) for w in got] == ["ours", "fbgemm user", "lookalike"]


@pytest.mark.skipif(importlib.util.find_spec("fbgemm_gpu") is None, reason="fbgemm_gpu (extra 'torchrec') not installed")
def test_fbgemm_deprecation_warnings_are_gone_from_the_cli():
    """With every warning shown (-W always), importing fbgemm's deprecated module warns; after the CLI's
    import it does not."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    imp = "import fbgemm_gpu.split_table_batched_embeddings_ops"
    bare = subprocess.run([sys.executable, "-W", "always", "-c", imp], env=env, capture_output=True, text=True,
                          timeout=120)
    cli = subprocess.run([sys.executable, "-W", "always", "-c", "import dynarec.cli; " + imp], env=env,
                         capture_output=True, text=True, timeout=120)
    assert "DEPRECATED" in bare.stderr and "DeprecationWarning" in bare.stderr
    assert "DeprecationWarning" not in cli.stderr, cli.stderr[-2000:]
