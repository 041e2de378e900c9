"""Inference backends over a bundle (:mod:`dynarec.serve.export`), as a registry: each backend is one class
declaring its ``name``, the ``file`` the exporter writes for it (None: the eager model needs none), how that
file is written (``write``) and how it is run (an instance is a callable ``run(inputs) -> tuple`` taking the
bundle's positional inputs ``sparse``, [``dense``], ``seq_<name>``... and returning one probability / value
array per task, in the manifest's task order). The exporter's ``--format`` values, the loader and the CLI
choices are all read from :data:`BACKENDS`.

Example::

    run = load_backend("bundle", "onnx")
    probs = run(tensor_inputs(schema, encoded.table))

A new backend is one class here plus ``@register_backend``."""
from __future__ import annotations

from pathlib import Path

from dynarec.errors import DynarecError

BACKENDS: dict[str, type] = {}  # name -> backend class, in registration order


def register_backend(cls: type) -> type:
    """Class decorator: add a backend to :data:`BACKENDS` under ``cls.name``."""
    BACKENDS[cls.name] = cls
    return cls


def exported_formats() -> tuple[str, ...]:
    """The backends the exporter writes a file for (``--format`` values, besides ``all``)."""
    return tuple(n for n, c in BACKENDS.items() if c.file)


def formats() -> tuple[str, ...]:
    return exported_formats() + ("all",)


def backends_of(fmt: str) -> list[str]:
    """The backends a bundle exported with ``--format fmt`` can run (eager always)."""
    if fmt not in formats():
        raise DynarecError(f"--format: expected one of {' | '.join(formats())}, got '{fmt}'")
    return [n for n, c in BACKENDS.items() if not c.file or fmt in (n, "all")]


class Backend:
    """The contract: ``name``, ``file`` (None: nothing to export), ``write(program, args, names, tasks, path)``
    (the exporter), ``__init__(bundle, model=None)`` (the loader), ``__call__(inputs) -> tuple``."""

    name = ""
    file: str | None = None

    @staticmethod
    def write(program, args: tuple, names: list[str], tasks: list[str], path: Path) -> None:
        raise NotImplementedError

    def _file(self, bundle: Path) -> Path:
        f = Path(bundle) / self.file
        if not f.exists():
            raise DynarecError(f"{bundle}: no {self.file} in the bundle (export with --format {self.name} or all)")
        return f


@register_backend
class EagerBackend(Backend):
    """The checkpoint's own model (merged for inference) behind :class:`~dynarec.serve.entry.TensorEntry`."""

    name = "eager"

    def __init__(self, bundle: Path, model=None):
        from dynarec.serve.entry import TensorEntry
        from dynarec.train.checkpoint import load_checkpoint

        if model is None:
            from dynarec.serve.mapped_load import mapped_manifest

            m = mapped_manifest(bundle)
            if m is not None:  # large tables are mapped files beside a model.pt without them
                from dynarec.serve.mapped_load import load_mapped_model

                model, _ = load_mapped_model(bundle, m)
            else:
                model, _ = load_checkpoint(Path(bundle) / "model.pt", merge=True)
        self.entry = TensorEntry(model).eval()

    def __call__(self, inputs):
        import torch

        with torch.no_grad():
            return self.entry(*inputs)


@register_backend
class TorchExportBackend(Backend):
    """The ``torch.export`` program (``model.pt2``)."""

    name, file = "torch", "model.pt2"

    @staticmethod
    def write(program, args, names, tasks, path) -> None:
        import torch

        torch.export.save(program, str(path))

    def __init__(self, bundle: Path, model=None):
        import torch

        self.module = torch.export.load(str(self._file(bundle))).module()

    def __call__(self, inputs):
        import torch

        with torch.no_grad():
            return self.module(*inputs)


@register_backend
class OnnxBackend(Backend):
    """The ONNX model (``model.onnx``, dynamo exporter) run by ONNX Runtime."""

    name, file = "onnx", "model.onnx"

    @staticmethod
    def write(program, args, names, tasks, path) -> None:
        export_onnx(program, args, names, tasks, path)

    def __init__(self, bundle: Path, model=None, threads: int = 0):
        import torch

        f = self._file(bundle)
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
        import torch

        feed = {n: (x.numpy() if isinstance(x, torch.Tensor) else x) for n, x in zip(self.names, inputs)}
        return tuple(torch.from_numpy(o) for o in self.session.run(None, feed))


# torch's ONNX exporter registers onnxscript decompositions for torchvision's ops too, and logs one warning per
# op ("torchvision is not installed. Skipping torchvision::nms", 4 of them) through this logger when torchvision
# is absent; dynarec never uses those ops, so the logger is quieted while exporting.
_TORCHVISION_NOTE = "torch.onnx._internal.exporter._registration"


def export_onnx(program, args: tuple, names: list[str], tasks: list[str], path: Path) -> None:
    """ONNX (dynamo exporter, from the exported program) with named inputs / outputs and a dynamic batch."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise DynarecError("ONNX export needs the onnx extra: pip install 'dynarec[onnx]'") from None
    sink = io.StringIO()
    log = logging.getLogger(_TORCHVISION_NOTE)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            onx = torch.onnx.export(program, args, dynamo=True, input_names=names, output_names=tasks,
                                    optimize=True, verify=False)
            onx.save(str(path))
    finally:
        log.setLevel(level)


def load_backend(bundle: str | Path, name: str, model=None, mapped: dict | None = None):
    """The backend ``name`` of the bundle folder ``bundle`` (``model``: the eager backend's model, if loaded).
    A bundle with mapped tables (``mapped``: its manifest's entry; read from the manifest when None) runs
    an exported backend behind the host lookup (:class:`~dynarec.serve.lookup.MappedRunner`)."""
    cls = BACKENDS.get(name)
    if cls is None:
        raise DynarecError(f"--backend: expected one of {' | '.join(BACKENDS)}, got '{name}'")
    run = cls(Path(bundle), model)
    if cls.file is None:
        return run
    if mapped is None:
        from dynarec.serve.mapped_load import mapped_manifest

        mapped = (mapped_manifest(bundle) or {}).get("mapped")
    if not mapped:
        return run
    from dynarec.serve.lookup import HostLookup, MappedRunner
    from dynarec.serve.mapped import RowFile

    tables = [RowFile(bundle, t["k"]) for t in mapped["tables"]]
    return MappedRunner(run, HostLookup(mapped["tables"], tables, mapped["has_dense"]))
