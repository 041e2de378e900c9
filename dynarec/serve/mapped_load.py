"""Models whose large tables are mapped files, never whole in memory: built from a checkpoint for export (a
one-file ``model.pt``, or a sharded checkpoint streamed block by block, :mod:`dynarec.serve.dcp_stream`), and
read back from a bundle (``model.pt`` holding every weight but the mapped tables, which are empty there).

The model is built with the large tables deferred (:func:`dynarec.tables.deferred.deferred_tables`: zero
rows, the generator advanced as an eager build would), every other weight loaded, and each large table set to
the mapped rows of its bundle file (:func:`dynarec.serve.mapped.open_table`).

Example::

    model, blob, layers = load_for_export("runs/big", bundle_tmp, map_mb=64)   # writes table_<k>.f32 / .json
    model, blob = load_mapped_model("bundles/big")                             # a bundle with mapped tables
"""
from __future__ import annotations

from pathlib import Path

import torch

from dynarec.errors import DataError
from dynarec.serve.mapped import big_layers, open_table, set_table, weight_blocks, write_table


def _deferring(map_mb: float):
    from dynarec.tables.deferred import deferred_tables

    return deferred_tables(lambda spec: spec.rows * spec.dim * 4 >= map_mb * (1 << 20))


def _sizes(model) -> dict:
    from dynarec.serve.mapped import feature_layers

    return {p: (int(layer.layout.spec.rows), int(layer.layout.spec.dim)) for p, layer in feature_layers(model)}


def _from_sharded(folder: Path, map_mb: float):
    """(model with the large tables empty, blob, layers) of a sharded checkpoint: every other weight loaded
    through DCP (a small TorchRec table into its slice of its fused table, as ``load_sharded`` does)."""
    import torch.distributed.checkpoint as dcp

    from dynarec.data.schema import Schema
    from dynarec.models import build_model
    from dynarec.train.sharded_checkpoint import META, SHARDS, _names_of, verify

    verify(folder)
    try:
        meta = torch.load(folder / META, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"{folder / META}: not readable ({type(e).__name__})") from None
    with _deferring(map_mb):
        model = build_model(meta["model"], Schema.from_dict(meta["schema"], str(folder / META)), meta["params"])
    layers = big_layers(model, map_mb, _sizes(model))
    mapped = {p for p, _ in layers}
    skip, target = set(), {}
    for path, layer in layers:
        skip |= _names_of(model, layer.weight.weight)
    for k, t in meta["tables"].items():
        if t["layer"] in mapped:
            continue
        w = model.get_submodule(t["layer"]).weight.weight
        target[k] = w.data.narrow(0, t["offset"], t["rows"])
        skip |= _names_of(model, w)
    target.update({k: v for k, v in model.state_dict().items() if k not in skip})
    import warnings

    try:
        with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(target, storage_reader=dcp.FileSystemReader(str(folder / SHARDS)), no_dist=True)
    except Exception as e:
        raise DataError(f"{folder / SHARDS}: cannot be loaded into model {meta['model']} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    blob = {k: v for k, v in meta.items() if k != "tables"}
    fallback = {p: sorted(_names_of(model, layer.weight.weight))[0] for p, layer in layers}
    return model, blob, layers, (folder / SHARDS, meta, fallback)


def load_for_export(checkpoint: str | Path, out: Path, map_mb: float):
    """-> (model, blob, layers): ``checkpoint``'s model (not merged) with each table of ``map_mb`` MiB or more
    written to ``out`` as mapped table ``k`` (block by block) and read from there batch by batch (its layer's
    own table left empty, :func:`~dynarec.serve.lookup.read_through`); ``layers``: [(path,
    layer)] of those tables, in ``k`` order (empty: nothing to map, the model is the usual one)."""
    from dynarec.serve.dcp_stream import fused_blocks
    from dynarec.serve.lookup import read_through
    from dynarec.serve.mapped import RowFile
    from dynarec.train.checkpoint import load_checkpoint

    p = Path(checkpoint)
    if p.is_dir() and not (p / "model.pt").exists() and (p / "shards.json").exists():
        model, blob, layers, (shards, meta, fallback) = _from_sharded(p, map_mb)
        for k, (path, layer) in enumerate(layers):
            rows, dim = int(layer.layout.spec.rows), int(layer.layout.spec.dim)
            write_table(out, k, path, fused_blocks(shards, meta, path, rows, fallback_key=fallback[path]), rows, dim)
            read_through(layer, RowFile(out, k))
        return model, blob, layers
    model, blob = load_checkpoint(checkpoint, merge=False)
    layers = big_layers(model, map_mb, _sizes(model))
    for k, (path, layer) in enumerate(layers):
        w = layer.weight.weight.data
        write_table(out, k, path, weight_blocks(w), w.shape[0], w.shape[1])
        set_table(layer, torch.empty(0, w.shape[1]))  # the in-memory copy is released here
        read_through(layer, RowFile(out, k))
    return model, blob, layers


def mapped_manifest(bundle: str | Path) -> dict | None:
    """The manifest of ``bundle`` when it lists mapped tables (unverified: the loaders verify it), else None."""
    import json

    f = Path(bundle) / "manifest.json"
    try:
        m = json.loads(f.read_text()) if Path(bundle).is_dir() and f.is_file() else None
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("mapped") else None


def load_mapped_model(bundle: str | Path, manifest: dict, merge: bool = True):
    """(model in eval mode, blob) of a bundle whose manifest lists mapped tables: ``model.pt`` (every weight but
    those tables) loaded into a model built with them deferred; each such layer then reads its batch's rows
    from its table file (:func:`~dynarec.serve.lookup.read_through`)."""
    from dynarec.data.schema import Schema
    from dynarec.models import build_model
    from dynarec.serve.lookup import read_through
    from dynarec.serve.mapped import RowFile
    from dynarec.train.checkpoint import read_checkpoint, recorded_params

    f = Path(bundle) / "model.pt"
    blob = read_checkpoint(f)
    schema = Schema.from_dict(blob["schema"], str(f))
    blob["params"] = recorded_params(blob["model"], blob["params"], f)
    info = manifest["mapped"]
    with _deferring(info["map_mb"]):
        model = build_model(blob["model"], schema, blob["params"])
    model.prepare_for_load(blob["state_dict"])
    model.load_state_dict(blob["state_dict"])
    by_path = dict(big_layers(model, info["map_mb"], _sizes(model)))
    for spec in info["tables"]:
        layer = by_path.get(spec["layer"])
        if layer is None:
            raise DataError(f"{f}: model {blob['model']} has no large table at {spec['layer']} (manifest 'mapped')")
        read_through(layer, RowFile(bundle, spec["k"]))  # each call reads its batch's rows (no map)
    model.eval()
    if merge:
        model.merge_for_inference()
    return model, blob


def load_sharded_mapped(folder: str | Path, map_mb: float | None = None, merge: bool = True):
    """(model in eval mode, blob) of a sharded checkpoint for ``dynarec evaluate / predict``, its tables of
    ``map_mb`` MiB or more (default :data:`dynarec.serve.mapped.MAP_MB`) streamed from the shards, block by block,
    into a private temporary file each (under ``$TMPDIR``), opened and unlinked at once (the disk space is
    freed when the process exits); the layer reads the rows of each batch from it with ``os.pread``
    (:func:`~dynarec.serve.lookup.read_through`): the process holds a batch's rows, never the table."""
    import shutil
    import tempfile

    from dynarec.serve import mapped
    from dynarec.serve.dcp_stream import fused_blocks
    from dynarec.serve.lookup import read_through
    from dynarec.serve.mapped import RowFile

    map_mb = mapped.MAP_MB if map_mb is None else map_mb
    model, blob, layers, (shards, meta, fallback) = _from_sharded(Path(folder), map_mb)
    if layers:
        tmp = Path(tempfile.mkdtemp(prefix="dynarec-mapped-"))
        try:
            for k, (path, layer) in enumerate(layers):
                rows, dim = int(layer.layout.spec.rows), int(layer.layout.spec.dim)
                write_table(tmp, k, path, fused_blocks(shards, meta, path, rows, fallback_key=fallback[path]), rows,
                            dim)
                read_through(layer, RowFile(tmp, k))
        finally:
            shutil.rmtree(tmp)  # the open file keeps the rows readable
    model.eval()
    if merge:
        model.merge_for_inference()
    blob["state_dict"] = None  # the weights are in the model
    return model, blob
