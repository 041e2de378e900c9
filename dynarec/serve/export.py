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
The bundle is written into a temporary folder and renamed into place, so a watcher never sees half a bundle."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from dynarec.errors import DynarecError

FORMATS = ("torch", "onnx", "all")
BUNDLE_FORMAT = "dynarec-bundle-1"
PARITY_BATCHES = (1, 7, 1024)


class TensorEntry(nn.Module):
    """``model`` behind a plain-tensor signature ``(sparse, [dense], *sequences) -> tuple of [B] per task``,
    with the output transform (sigmoid for binary tasks) inside the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        schema = model.schema
        self.has_dense = schema.dense_dim > 0
        self.seq_names = [f.name for f in schema.sequences]
        self.binary = [t.type == "binary" for t in schema.tasks]
        self.tasks = [t.name for t in schema.tasks]
        self.dense_dim = schema.dense_dim
        self.domain_col = [f.name for f in schema.sparse].index(schema.domain)

    def forward(self, sparse: torch.Tensor, *rest: torch.Tensor):
        if self.has_dense:
            dense, seqs = rest[0], rest[1:]
        else:
            dense = sparse.new_zeros((sparse.shape[0], 0), dtype=torch.float32)
            seqs = rest
        out = self.model.forward_tensors(sparse, dense, sparse[:, self.domain_col], tuple(seqs))
        return tuple(torch.sigmoid(out[t]) if b else out[t] for t, b in zip(self.tasks, self.binary))


def input_spec(schema) -> list[dict]:
    """[{name, dtype, shape}] of the exported programs' inputs (``"B"`` = the dynamic batch dimension)."""
    spec = [{"name": "sparse", "dtype": "int64", "shape": ["B", len(schema.sparse)]}]
    if schema.dense_dim:
        spec.append({"name": "dense", "dtype": "float32", "shape": ["B", schema.dense_dim]})
    spec += [{"name": f"seq_{f.name}", "dtype": "int64", "shape": ["B", f.max_len]} for f in schema.sequences]
    return spec


def batch_inputs(schema, batch) -> tuple[torch.Tensor, ...]:
    """The positional inputs of :class:`TensorEntry` for a :class:`~dynarec.data.table.Batch`."""
    args = [batch.sparse]
    if schema.dense_dim:
        args.append(batch.dense)
    return tuple(args + [batch.sequences[f.name] for f in schema.sequences])


def example_batch(schema, n: int, seed: int = 0):
    """A random batch of ``n`` rows with valid ids for every field (for tracing and parity checks)."""
    from dynarec.data.table import Batch

    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, max(f.vocab_size, 1), (n,), generator=g) for f in schema.sparse], 1)
    dense = torch.randn(n, schema.dense_dim, generator=g)
    seqs = {f.name: torch.randint(0, max(f.vocab_size, 1), (n, f.max_len), generator=g) for f in schema.sequences}
    dom = [f.name for f in schema.sparse].index(schema.domain)
    return Batch(sparse, dense, sparse[:, dom], {}, seqs)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_program(entry: TensorEntry, args: tuple) -> torch.export.ExportedProgram:
    """``torch.export`` of ``entry`` with a dynamic batch dimension on every input."""
    b = torch.export.Dim("batch", min=1, max=1 << 20)
    shapes = ({0: b}, tuple({0: b} for _ in args[1:]))
    with torch.no_grad():
        return torch.export.export(entry, args, dynamic_shapes=shapes)


def export_onnx(program: torch.export.ExportedProgram, args: tuple, names: list[str], tasks: list[str],
                path: Path) -> None:
    """ONNX (dynamo exporter, from the exported program) with named inputs / outputs and a dynamic batch."""
    import contextlib
    import io
    import warnings

    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise DynarecError("ONNX export needs the onnx extra: pip install 'dynarec[onnx]'") from None
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        onx = torch.onnx.export(program, args, dynamo=True, input_names=names, output_names=tasks,
                                optimize=True, verify=False)
        onx.save(str(path))


def export_bundle(checkpoint: str | Path, out: str | Path, fmt: str = "all", console=None) -> dict:
    """Write the bundle of ``checkpoint`` to ``out`` (see the module docstring); -> the manifest."""
    from dynarec.train.checkpoint import load_checkpoint

    if fmt not in FORMATS:
        raise DynarecError(f"--format: expected one of {' | '.join(FORMATS)}, got '{fmt}'")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DynarecError(f"{out}: exists and is not a folder")
    model, blob = load_checkpoint(checkpoint, merge=False)
    schema = model.schema
    spec = input_spec(schema)
    names = [s["name"] for s in spec]
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
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
        if fmt in ("torch", "onnx", "all"):
            program = export_program(entry, args)
            if fmt in ("torch", "all"):
                torch.export.save(program, str(tmp / "model.pt2"))
            if fmt in ("onnx", "all"):
                export_onnx(program, args, names, entry.tasks, tmp / "model.onnx")
        backends = ["eager"] + (["torch"] if fmt in ("torch", "all") else []) + (["onnx"] if fmt in ("onnx", "all") else [])
        from dynarec.serve.backends import load_backend

        for be in backends[1:]:
            run = load_backend(tmp, be, model=model)
            parity[be] = {str(n): max_abs_diff(run, entry, schema, n) for n in PARITY_BATCHES}
        manifest = {
            "format": BUNDLE_FORMAT,
            "model": blob["model"],
            "model_version": _sha256(tmp / "model.pt")[:16],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": _versions(),
            "inputs": spec,
            "tasks": [{"name": t.name, "type": t.type} for t in schema.tasks],
            "outputs": "probability (binary tasks) or value (regression), one Float [B] per task",
            "backends": backends,
            "parity": parity,
            "export_seconds": round(time.perf_counter() - t0, 2),
            "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
