"""Inference backends over a bundle (dynarec.serve.export): ``eager`` (the checkpoint's model), ``torch``
(the ``torch.export`` program) and ``onnx`` (ONNX Runtime). Each is a callable ``run(inputs) -> tuple`` taking
the bundle's positional inputs (``sparse``, [``dense``], ``seq_<name>``... as tensors) and returning one
probability / value array per task, in the manifest's task order."""
from __future__ import annotations

from pathlib import Path

import torch

from dynarec.errors import DynarecError

BACKENDS = ("eager", "torch", "onnx")


class EagerBackend:
    def __init__(self, bundle: Path, model=None):
        from dynarec.serve.export import TensorEntry
        from dynarec.train.checkpoint import load_checkpoint

        if model is None:
            model, _ = load_checkpoint(bundle / "model.pt", merge=True)
        self.entry = TensorEntry(model).eval()

    def __call__(self, inputs):
        with torch.no_grad():
            return self.entry(*inputs)


class TorchExportBackend:
    def __init__(self, bundle: Path):
        f = bundle / "model.pt2"
        if not f.exists():
            raise DynarecError(f"{bundle}: no model.pt2 in the bundle (export with --format torch or all)")
        self.module = torch.export.load(str(f)).module()

    def __call__(self, inputs):
        with torch.no_grad():
            return self.module(*inputs)


class OnnxBackend:
    def __init__(self, bundle: Path, threads: int = 0):
        f = bundle / "model.onnx"
        if not f.exists():
            raise DynarecError(f"{bundle}: no model.onnx in the bundle (export with --format onnx or all)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise DynarecError("the onnx backend needs ONNX Runtime: pip install 'dynarec[onnx]'") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs):
        feed = {n: (x.numpy() if isinstance(x, torch.Tensor) else x) for n, x in zip(self.names, inputs)}
        return tuple(torch.from_numpy(o) for o in self.session.run(None, feed))


def load_backend(bundle: str | Path, name: str, model=None):
    """The backend ``name`` of the bundle folder ``bundle``."""
    bundle = Path(bundle)
    if name == "eager":
        return EagerBackend(bundle, model)
    if name == "torch":
        return TorchExportBackend(bundle)
    if name == "onnx":
        return OnnxBackend(bundle)
    raise DynarecError(f"--backend: expected one of {' | '.join(BACKENDS)}, got '{name}'")
