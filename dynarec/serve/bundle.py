"""Reading a serving bundle (written by :func:`dynarec.serve.export.export_bundle`): manifest + checksums
verified, the checkpoint's model (merged for inference) and encoders, and raw rows -> the bundle's inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dynarec.errors import DynarecError


def read_manifest(path: str | Path) -> dict:
    """The manifest of bundle folder ``path``; every listed file's sha256 checked."""
    from dynarec.serve.export import BUNDLE_FORMAT, _sha256

    p = Path(path)
    f = p / "manifest.json"
    if not f.exists():
        raise DynarecError(f"{p}: not a dynarec bundle (no manifest.json; write one with `dynarec export`)")
    try:
        m = json.loads(f.read_text())
    except ValueError:
        raise DynarecError(f"{f}: not valid JSON (a truncated bundle?)") from None
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise DynarecError(f"{f}: not a {BUNDLE_FORMAT} manifest")
    for name, digest in m.get("files", {}).items():
        q = p / name
        if not q.exists():
            raise DynarecError(f"{q}: listed in the manifest but missing")
        if _sha256(q) != digest:
            raise DynarecError(f"{q}: checksum mismatch (the file changed after export)")
    return m


def read_bundle(path: str | Path):
    """-> (manifest, model in eval mode and merged, fitted Encoders)."""
    from dynarec.data.encode import Encoders
    from dynarec.train.checkpoint import load_checkpoint

    m = read_manifest(path)
    model, blob = load_checkpoint(Path(path) / "model.pt", merge=True)
    if not blob.get("encoders"):
        raise DynarecError(f"{path}: the checkpoint has no encoders; raw rows cannot be encoded")
    return m, model, Encoders.from_dict(model.schema, blob["encoders"])


def encode_features(schema, encoders, table, where: str = "request"):
    """Raw feature columns (a pyarrow table) -> (the bundle's positional inputs, unknown flags [N, F]).

    ``unknown[i, j]`` counts the values of embedded field j (``schema.fields`` order) in row i that the
    encoders did not know (mapped to id 0); for a sequence it counts the unknown tokens within ``max_len``."""
    import pyarrow.compute as pc

    from dynarec.data.prepare import to_tensor_table
    from dynarec.serve.export import batch_inputs

    cols = encoders.transform(table, where, labels=False)
    tt = to_tensor_table(schema, cols)
    n = len(tt)
    unknown = np.zeros((n, len(schema.fields)), dtype=np.int64)
    sp = tt.sparse.numpy()
    for j, f in enumerate(schema.sparse):
        unknown[:, j] = sp[:, j] == 0
    for k, f in enumerate(schema.sequences):
        ids = tt.sequences[f.name].numpy()
        lens = pc.list_value_length(pc.split_pattern(table.column(f.name), f.separator)).to_numpy(
            zero_copy_only=False) if table.num_rows else np.zeros(0)
        lens = np.minimum(np.nan_to_num(np.asarray(lens, dtype=np.float64)), f.max_len).astype(np.int64)
        empty = np.asarray(pc.equal(table.column(f.name), "").to_numpy(zero_copy_only=False), dtype=bool)
        lens[empty] = 0
        unknown[:, len(schema.sparse) + k] = np.maximum(lens - (ids != 0).sum(1), 0)
    return batch_inputs(schema, _batch(tt)), unknown


def _batch(tt):
    from dynarec.data.table import Batch

    return Batch(tt.sparse, tt.dense, tt.domain, {}, tt.sequences)
