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
    BUNDLE/table_<k>.f32   a table of --map-tables-mb MiB or more, float32 row-major (dynarec.serve.mapped), with
    BUNDLE/table_<k>.json  its header (layer, shape, dtype, sha256); model.pt then holds that table empty

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
from dynarec.serve.mapped import MAP_MB
from dynarec.serve.entry import TensorEntry, batch_inputs, example_batch, export_program, input_spec  # noqa: F401

FORMATS = formats()  # read from the backend registry: every backend with a file, plus "all"
BUNDLE_FORMAT = "dynarec-bundle-1"
PARITY_BATCHES = (1, 7, 1024)
PARITY_TOL = 1e-5  # max |exported - eager| a bundle states: float32 re-association of the same graph (~1e-7 per op)
MARKERS = ("manifest.json",)  # what makes a folder a bundle (the only kind of folder --out may replace)


def export_bundle(checkpoint: str | Path, out: str | Path, fmt: str = "all", console=None,
                  map_mb: float = MAP_MB) -> dict:
    """Write the bundle of ``checkpoint`` to ``out`` (see the module docstring); -> the manifest.

    Every feature table of ``map_mb`` MiB or more is written as a memory-mapped file (:mod:`dynarec.serve.mapped`)
    and the exported graphs start after its lookup (:mod:`dynarec.serve.lookup`); a sharded checkpoint's tables
    are streamed from its shards block by block. ``out`` is written with the one output-folder discipline
    (:func:`dynarec.outdir.atomic_dir`): built beside it, swapped in when complete; an existing bundle is
    replaced, any other non-empty folder is refused.

    Example::

        m = export_bundle("runs/pepnet", "bundles/pepnet", fmt="onnx")
        m["parity"]["onnx"]  # {"1": 6e-08, "7": ..., "1024": ...} <= m["parity_tolerance"]
    """
    from dynarec.outdir import atomic_dir, check_out
    from dynarec.serve.mapped_load import load_for_export

    backends = backends_of(fmt)
    check_out(out, MARKERS, "bundle")
    with atomic_dir(out, MARKERS, "bundle") as tmp:
        model, blob, layers = load_for_export(checkpoint, tmp, map_mb)  # large tables: mapped files in tmp
        schema = model.schema
        spec = input_spec(schema)
        names = [s["name"] for s in spec]
        src = Path(checkpoint)
        if layers or blob.get("state_dict") is None:  # mapped tables (model.pt without them) or a sharded run
            _save_model(tmp, model, blob, layers)
        else:
            shutil.copyfile(src / "model.pt" if src.is_dir() else src, tmp / "model.pt")
        model.merge_for_inference()  # e.g. APG v5 -> v4 form, after the checkpoint's own form is kept
        entry = TensorEntry(model).eval()
        args = batch_inputs(schema, example_batch(schema, 7))
        mapped = _mapped_info(tmp, layers, schema, map_mb)
        parity: dict[str, dict] = {}
        t0 = time.perf_counter()
        exported = [b for b in backends if BACKENDS[b].file]
        if exported:
            program, gargs, gnames = _program(entry, args, names, layers, mapped, tmp)
            for be in exported:
                BACKENDS[be].write(program, gargs, gnames, entry.tasks, tmp / BACKENDS[be].file)
        for be in exported:
            run = load_backend(tmp, be, model=model, mapped=mapped)
            parity[be] = {str(n): max_abs_diff(run, entry, schema, n) for n in PARITY_BATCHES}
        manifest = {
            "format": BUNDLE_FORMAT,
            "model": blob["model"],
            "model_version": _version(tmp, mapped),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": _versions(),
            "inputs": spec,
            "tasks": [{"name": t.name, "type": t.type} for t in schema.tasks],
            "outputs": "probability (binary tasks) or value (regression), one Float [B] per task",
            "backends": backends,
            "parity": parity,
            "parity_tolerance": PARITY_TOL,
            **({"mapped": mapped} if mapped else {}),
            "export_seconds": round(time.perf_counter() - t0, 2),
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _version(tmp: Path, mapped: dict | None) -> str:
    """The first 16 hex digits of model.pt's SHA-256 (with mapped tables: of model.pt's and the tables')."""
    digest = file_sha256(tmp / "model.pt")
    if not mapped:
        return digest[:16]
    import hashlib

    heads = [json.loads((tmp / f"table_{t['k']}.json").read_text())["sha256"] for t in mapped["tables"]]
    return hashlib.sha256("".join([digest, *heads]).encode()).hexdigest()[:16]


def _save_model(tmp: Path, model, blob: dict, layers: list) -> None:
    """``tmp/model.pt`` of ``model``, the mapped tables' weights empty in it (their rows are the mapped files)."""
    import torch.nn as nn

    from dynarec.train.checkpoint import save_checkpoint

    kept = [layer.weight.weight for _, layer in layers]
    for _, layer in layers:
        layer.weight.weight = nn.Parameter(torch.empty(0, layer.weight.weight.shape[1]), requires_grad=False)
    try:
        save_checkpoint(tmp, model, blob["params"], blob.get("encoders"), blob.get("extra"))
    finally:
        for (_, layer), w in zip(layers, kept):
            layer.weight.weight = w


def _mapped_info(tmp: Path, layers: list, schema, map_mb: float) -> dict | None:
    from dynarec.serve.lookup import layer_spec

    if not layers:
        return None
    shape = lambda layer: [int(layer.layout.spec.rows), int(layer.layout.spec.dim)]  # noqa: E731
    return {"map_mb": map_mb, "has_dense": schema.dense_dim > 0,
            "tables": [{**layer_spec(k, p, layer, schema), "shape": shape(layer)}
                       for k, (p, layer) in enumerate(layers)]}


def _program(entry, args: tuple, names: list[str], layers: list, mapped: dict | None, tmp: Path):
    """(program, its example inputs, its input names): the whole entry, or the graph after the mapped lookups
    (each mapped table emptied while tracing, so the program holds no copy of it)."""
    if not mapped:
        return export_program(entry, args), args, names
    import torch.nn as nn

    from dynarec.serve.lookup import export_after_lookup, graph_input_names

    from dynarec.serve.mapped import RowFile

    kept = [layer.weight.weight for _, layer in layers]
    tables = [RowFile(tmp, t["k"]) for t in mapped["tables"]]
    for _, layer in layers:
        layer.weight.weight = nn.Parameter(torch.empty(0, layer.weight.weight.shape[1]), requires_grad=False)
    try:
        program, gargs = export_after_lookup(entry, layers, mapped["tables"], tables, args)
    finally:
        for (_, layer), w in zip(layers, kept):
            layer.weight.weight = w
    return program, gargs, graph_input_names(names, mapped["tables"])


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
