"""Export conformance: for every registered model (and the conformance variants) the ``torch.export`` program
and the ONNX model (run by ONNX Runtime) give the eager outputs to 1e-5 at batch sizes 1, 7 and 1024. A model
that cannot be exported must be listed in ``EXPORT_EXCEPTIONS`` with its reason — never skipped silently."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
from test_conformance import CASES, _warmed  # noqa: E402

from dynarec.serve.export import (PARITY_BATCHES, TensorEntry, batch_inputs, example_batch, export_onnx,  # noqa: E402
                                  export_program, input_spec)

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is an optional extra: pip install 'dynarec[onnx]'")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript: pip install 'dynarec[onnx]'")

# name -> reason. Empty: every registered model exports.
EXPORT_EXCEPTIONS: dict[str, str] = {}


@pytest.mark.parametrize("name,params", [c.values for c in CASES], ids=[c.id for c in CASES])
def test_export_parity(name, params, small_synth, tmp_path):
    if name in EXPORT_EXCEPTIONS:
        pytest.xfail(EXPORT_EXCEPTIONS[name])
    schema, tables, _ = small_synth
    model = _warmed(name, schema, params, tables["train"])
    model.merge_for_inference()
    entry = TensorEntry(model).eval()
    program = export_program(entry, batch_inputs(schema, example_batch(schema, 7)))
    names = [s["name"] for s in input_spec(schema)]
    export_onnx(program, batch_inputs(schema, example_batch(schema, 7)), names, entry.tasks, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == names
    assert [o.name for o in sess.get_outputs()] == entry.tasks
    exported = program.module()
    for n in PARITY_BATCHES:
        args = batch_inputs(schema, example_batch(schema, n, seed=n))
        with torch.no_grad():
            ref = entry(*args)
            got = exported(*args)
        onnx_out = sess.run(None, {k: a.numpy() for k, a in zip(names, args)})
        for r, g, o in zip(ref, got, onnx_out):
            assert r.shape == (n,)
            torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.from_numpy(o), r, atol=1e-5, rtol=0)
