"""Export a trained checkpoint to a self-describing serving bundle: a ``torch.export`` program (``model.pt2``,
dynamic batch dimension) and an ONNX model (``model.onnx``, dynamo exporter), both on plain tensors and both
returning probabilities (binary tasks) or values (regression), plus the checkpoint itself (the eager backend)
and what turns raw rows into those tensors (schema + encoders). APG and any over-parameterised layer are merged
before export (``load_checkpoint(merge=True)``).

Bundle layout::

    BUNDLE/manifest.json   format, model, model_version, versions, inputs (name, dtype, shape), tasks,
                           files {name: sha256}, parity {backend: max |exported - eager| per batch size}
    BUNDLE/model.pt        the checkpoint (eager backend, and the source of the other two)
    BUNDLE/model.pt2       torch.export program          (format torch | all)
    BUNDLE/model.onnx      ONNX model                    (format onnx | all)

Inputs (stable names): ``sparse`` Long [B, S] (schema.sparse order), ``dense`` Float [B, D] (only when D > 0),
``seq_<name>`` Long [B, L] per sequence feature. Outputs: one Float [B] per task, named after the task.
The bundle is written beside ``out`` and renamed into place (:func:`dynarec.outdir.atomic_dir`), so a watcher
never sees half a bundle and a folder that is not a bundle is never replaced. A new format is a backend class
in :mod:`dynarec.serve.backends` (the registry this module reads)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from dynarec.outdir import file_sha256
from dynarec.serve.backends import BACKENDS, backends_of, export_onnx, formats, load_backend  # noqa: F401
from dynarec.serve.entry import TensorEntry, batch_inputs, example_batch, export_program, input_spec  # noqa: F401

FORMATS = formats()  # read from the backend registry: every backend with a file, plus "all"
BUNDLE_FORMAT = "dynarec-bundle-1"
PARITY_BATCHES = (1, 7, 1024)
PARITY_TOL = 1e-5  # max |exported - eager| a bundle states: float32 re-association of the same graph (~1e-7 per op)
MARKERS = ("manifest.json",)  # what makes a folder a bundle (the only kind of folder --out may replace)


def export_bundle(checkpoint: str | Path, out: str | Path, fmt: str = "all", console=None) -> dict:
    """Write the bundle of ``checkpoint`` to ``out`` (see the module docstring); -> the manifest.

    ``out`` is written with the one output-folder discipline (:func:`dynarec.outdir.atomic_dir`): built beside
    it, swapped in when complete; an existing bundle is replaced, any other non-empty folder is refused.

    Example::

        m = export_bundle("runs/pepnet", "bundles/pepnet", fmt="onnx")
        m["parity"]["onnx"]  # {"1": 6e-08, "7": ..., "1024": ...} <= m["parity_tolerance"]
    """
    from dynarec.outdir import atomic_dir, check_out
    from dynarec.train.checkpoint import load_checkpoint

    backends = backends_of(fmt)
    check_out(out, MARKERS, "bundle")
    model, blob = load_checkpoint(checkpoint, merge=False)
    schema = model.schema
    spec = input_spec(schema)
    names = [s["name"] for s in spec]
    with atomic_dir(out, MARKERS, "bundle") as tmp:
        src = Path(checkpoint)
        if blob.get("state_dict") is None:  # a sharded checkpoint (trainer.checkpoint: sharded): model.pt written here
            from dynarec.train.checkpoint import save_checkpoint

            save_checkpoint(tmp, model, blob["params"], blob.get("encoders"), blob.get("extra"))
        else:
            shutil.copyfile(src / "model.pt" if src.is_dir() else src, tmp / "model.pt")
        model.merge_for_inference()  # e.g. APG v5 -> v4 form, after the checkpoint's own form is kept
        entry = TensorEntry(model).eval()
        args = batch_inputs(schema, example_batch(schema, 7))
        parity: dict[str, dict] = {}
        t0 = time.perf_counter()
        exported = [b for b in backends if BACKENDS[b].file]
        if exported:
            program = export_program(entry, args)
            for be in exported:
                BACKENDS[be].write(program, args, names, entry.tasks, tmp / BACKENDS[be].file)
        for be in exported:
            run = load_backend(tmp, be, model=model)
            parity[be] = {str(n): max_abs_diff(run, entry, schema, n) for n in PARITY_BATCHES}
        manifest = {
            "format": BUNDLE_FORMAT,
            "model": blob["model"],
            "model_version": file_sha256(tmp / "model.pt")[:16],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": _versions(),
            "inputs": spec,
            "tasks": [{"name": t.name, "type": t.type} for t in schema.tasks],
            "outputs": "probability (binary tasks) or value (regression), one Float [B] per task",
            "backends": backends,
            "parity": parity,
            "parity_tolerance": PARITY_TOL,
            "export_seconds": round(time.perf_counter() - t0, 2),
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def max_abs_diff(run, entry: TensorEntry, schema, n: int, seed: int = 1) -> float:
    """max |backend(x) - eager(x)| over tasks on a random batch of ``n`` rows."""
    args = batch_inputs(schema, example_batch(schema, n, seed))
    with torch.no_grad():
        ref = entry(*args)
    got = run(args)
    return max(float((torch.as_tensor(g) - r).abs().max()) for g, r in zip(got, ref))


def _versions() -> dict:
    import platform

    import dynarec

    v = {"python": platform.python_version(), "torch": torch.__version__,
         "dynarec": getattr(dynarec, "__version__", "0")}
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return v
