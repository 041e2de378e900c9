"""What a server holds: a loaded bundle or online pass (:class:`Served`: manifest, predictor, backend), from
the one loader (:mod:`dynarec.serve.loader`); swapped whole on reload."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dynarec.errors import DynarecError
from dynarec.serve.loader import load_pass, read_bundle
from dynarec.serve.predictor import Predictor
from dynarec.serve.sources import is_online, pass_folder, run_of


@dataclass
class Served:
    """One loaded bundle or online pass: its manifest, predictor (model + encoder) and backend."""

    path: Path
    manifest: dict
    backend_name: str
    predictor: object = None
    backend: object = None
    tasks: list = field(default_factory=list)
    run: Path | None = None  # an online run folder whose `current` marker is followed, or None
    marker: str | None = None  # the marker text naming the served pass (online runs)

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def schema(self):
        return self.predictor.schema

    def predict_columns(self, cols: dict, where: str = "request") -> tuple[list[np.ndarray], np.ndarray]:
        """Validated raw columns (:func:`dynarec.serve.rows.rows_to_columns`) -> (one array per task, unknown
        values per row and embedded field [N, F]), through the one row encoder and the backend."""
        from dynarec.serve.entry import tensor_inputs

        enc = self.predictor.encode_columns(cols, where)
        out = self.backend(tensor_inputs(self.schema, enc.table))
        return [o.float().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in out], enc.unknown_rows


def load_served(path: str | Path, backend: str | None = None) -> Served:
    """A bundle (``backend``: onnx by default) or an online run / pass (eager only) -> :class:`Served`."""
    from dynarec.serve.backends import load_backend
    from dynarec.serve.entry import input_spec

    path = Path(path)
    if not is_online(path):
        backend = backend or "onnx"
        manifest, model, encoders = read_bundle(path)
        run = load_backend(path, backend, model=model if backend == "eager" else None)
        pred = Predictor(model, encoders, manifest["model"], manifest["model_version"], str(path))
        return Served(path, manifest, backend, pred, run, [t["name"] for t in manifest["tasks"]])
    if backend not in (None, "eager"):
        raise DynarecError(f"--backend {backend}: an online pass is served by the eager backend (passes are not "
                           "exported); drop --backend or pass --backend eager")
    run = run_of(path)
    folder = pass_folder(path)  # for a run: the pass its `current` names now
    marker = folder.relative_to(run).as_posix() if run is not None else None
    pred = load_pass(folder, Predictor)
    schema = pred.schema
    manifest = {"model": pred.name, "model_version": pred.version, "inputs": input_spec(schema),
                "tasks": [{"name": t.name, "type": t.type} for t in schema.tasks], "online": pred.online}
    eager = load_backend(folder, "eager", model=pred.model)
    return Served(Path(pred.checkpoint), manifest, "eager", pred, eager, pred.tasks, run, marker)
