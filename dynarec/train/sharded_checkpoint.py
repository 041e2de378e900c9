"""Sharded checkpoints of a ``trainer.distributed: torchrec`` run, for tables larger than one process should
hold: every rank writes its own table shards through ``torch.distributed.checkpoint`` (DCP, the engine
TorchRec's own checkpoints use) — no rank assembles a table, nothing is copied into an in-memory buffer.

The folder (the run's ``--out``) holds, instead of ``model.pt``:

* ``shards/``: DCP's files (one ``__<rank>_0.distcp`` per rank and ``.metadata``): the TorchRec tables
  (``<layer path>.ebc.embedding_bags.<table>.weight``, as the sharded tensors they are), the dense weights
  (written once: DCP de-duplicates the ranks' replicas) and the optimizers' state (``optim.fused.*``:
  TorchRec's fused Adagrad accumulators, sharded like their tables; ``optim.dense.<i>.*``: the step's
  optimizers, the dense Adam among them);
* ``meta.pt``: what ``model.pt`` holds besides the weights (model name, params, schema, encoders, extra)
  and where each TorchRec table lives in its fused table;
* ``shards.json`` (written LAST, atomically, by rank 0): the format and the SHA-256 of every other file,
  checked on every load — a corrupted or missing file is one :class:`~dynarec.errors.DataError` naming it.

``trainer.checkpoint`` chooses: ``file`` (``model.pt``: the tables assembled on rank 0 first), ``sharded``
(this; a TorchRec run only) or ``auto`` (sharded when the TorchRec tables exceed :data:`AUTO_BYTES`).
:func:`load_sharded` reads the folder into ONE process's usual model (the other world size: DCP reshards;
each shard is copied straight into its rows of the fused table, so the table is held once).

Example::

    from dynarec.train.checkpoint import load_checkpoint

    model, blob = load_checkpoint("runs/big")   # a folder with shards.json: read through here
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dynarec.data.schema import Schema
from dynarec.errors import ConfigError, DataError
from dynarec.outdir import file_sha256, write_atomic

FORMAT = "dynarec-sharded-1"
MANIFEST = "shards.json"
SHARDS = "shards"
META = "meta.pt"
CHOICES = ("auto", "file", "sharded")
AUTO_BYTES = 1 << 30  # auto: sharded above 1 GiB of TorchRec tables (rank 0 would need ~4x that for model.pt)


def check(cfg, torchrec: bool) -> None:
    """``trainer.checkpoint: sharded`` needs the TorchRec placement (one line otherwise)."""
    if cfg.checkpoint not in CHOICES:
        raise ConfigError(f"trainer.checkpoint: expected {' | '.join(CHOICES)}, got '{cfg.checkpoint}'")
    if cfg.checkpoint == "sharded" and not torchrec:
        raise ConfigError("trainer.checkpoint: sharded needs trainer.distributed: torchrec with several processes "
                          "(other runs hold every table whole: use file or auto)")


def wanted(cfg, layers) -> bool:
    """Whether a TorchRec run with these attached ``layers`` writes a sharded checkpoint."""
    if cfg.checkpoint == "auto":
        return sum(layer.held_bytes()["table"] for _, layer in layers) > AUTO_BYTES
    return cfg.checkpoint == "sharded"


def _names_of(model, param) -> set[str]:
    """Every state-dict name of ``param`` in ``model`` (a table may be reachable by two module paths)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p is param}


def _table_keys(layers) -> dict[str, dict]:
    """DCP key of each TorchRec table -> where its rows go in the fused table of one process (``layer``: the
    path of its :class:`~dynarec.nn.embedding.FeatureEmbedding`)."""
    out = {}
    for path, layer in layers:
        for tname, logical in layer.logical.items():
            out[f"{path}.ebc.embedding_bags.{tname}.weight"] = {
                "layer": path, "offset": int(layer.layout.table_offsets[logical]),
                "rows": int(layer.layout.table_sizes[logical]), "dim": int(layer.embed_dim)}
    return out


def _strkeys(obj):
    """A state dict with every mapping key a string (DCP flattens nested state by key paths)."""
    if isinstance(obj, dict):
        return {str(k): _strkeys(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return {str(i): _strkeys(v) for i, v in enumerate(obj)}
    return obj


def state_of(model, sharding, optimizers) -> dict:
    """What each rank gives DCP: its table shards, the dense weights, the optimizers' state."""
    from dynarec.tables.torchrec_adapter import dense_state

    fused = set().union(*(_names_of(model, layer.orig.weight.weight) for _, layer in sharding.layers))
    state = {k: v for k, v in dense_state(model).items() if k not in fused}
    for path, layer in sharding.layers:
        for k, v in layer.ebc.state_dict().items():
            state[f"{path}.ebc.{k}"] = v
    state["optim.fused"] = _strkeys(sharding.dmp.fused_optimizer.state_dict()["state"])
    for i, opt in enumerate(optimizers):  # the dense ones, then those of data-parallel table replicas
        state[f"optim.dense.{i}"] = _strkeys(opt.state_dict())
    return state


def save_sharded(folder: Path | None, model, sharding, optimizers, meta: dict) -> Path | None:
    """A collective call (every rank, ``folder`` taken from rank 0): the sharded checkpoint of ``model``
    (its TorchRec ``sharding`` still in place) into ``folder``; -> the manifest's path (rank 0)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    box = [str(folder) if folder is not None else None]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        return None
    folder = Path(box[0])
    main = dist.get_rank() == 0
    if main:
        (folder / MANIFEST).unlink(missing_ok=True)  # a folder without its manifest is no checkpoint
    dcp.save(state_of(model, sharding, optimizers),
             storage_writer=dcp.FileSystemWriter(str(folder / SHARDS)))
    dist.barrier()
    if not main:
        return None
    torch.save({**meta, "tables": _table_keys(sharding.layers), "world": dist.get_world_size()}, folder / META)
    files = sorted(p for p in folder.joinpath(SHARDS).rglob("*") if p.is_file()) + [folder / META]
    manifest = {"format": FORMAT, "files": {str(p.relative_to(folder)): file_sha256(p) for p in files}}
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return folder / MANIFEST


def verify(folder: Path, only: tuple[str, ...] | None = None) -> dict:
    """The manifest of ``folder``, every file it lists (or the ``only`` ones) present with its recorded
    SHA-256; a one-line DataError naming the first file that is missing or differs."""
    f = folder / MANIFEST
    try:
        manifest = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{f}: not a readable sharded-checkpoint manifest ({type(e).__name__})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{f}: not a dynarec sharded-checkpoint manifest (format {FORMAT})")
    for rel, digest in files.items():
        if only is not None and rel not in only:
            continue
        p = folder / rel
        if not p.is_file():
            raise DataError(f"{p}: missing from the sharded checkpoint {folder} (listed in {MANIFEST})")
        got = file_sha256(p)
        if got != digest:
            raise DataError(f"{p}: checksum mismatch (sha256 {got[:16]}…, recorded {digest[:16]}…): the file is "
                            "corrupted; restore it or retrain")
    return manifest


def read_meta(folder: str | Path, check_all: bool = True) -> dict:
    """``meta.pt`` of the sharded checkpoint in ``folder`` (model, params, schema, encoders, extra, tables),
    verified against the manifest (every file, or only ``meta.pt`` without ``check_all``)."""
    folder = Path(folder)
    verify(folder, None if check_all else (META,))
    try:
        return torch.load(folder / META, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"{folder / META}: not readable ({type(e).__name__})") from None


def load_sharded(folder: str | Path, merge: bool = True):
    """-> (model in eval mode, blob) of the sharded checkpoint in ``folder``, in this one process (as
    :func:`~dynarec.train.checkpoint.load_checkpoint`): the files verified, the model built, and DCP
    copies every shard / dense weight straight into the model's tensors (a table's rows into their
    slice of the fused table: no second copy)."""
    import torch.distributed.checkpoint as dcp

    from dynarec.models import build_model

    folder = Path(folder)
    meta = read_meta(folder)
    model = build_model(meta["model"], Schema.from_dict(meta["schema"], str(folder / META)), meta["params"])
    target, fused = {}, set()
    for k, t in meta["tables"].items():
        try:
            w = model.get_submodule(t["layer"]).weight.weight
        except AttributeError:
            w = None
        if w is None or w.dim() != 2 or w.shape[1] != t["dim"] or w.shape[0] < t["offset"] + t["rows"]:
            raise DataError(f"{folder / META}: table {k} has no fused table of width {t['dim']} at {t['layer']} "
                            f"in model {meta['model']}")
        target[k] = w.data.narrow(0, t["offset"], t["rows"])
        fused |= _names_of(model, w)
    target.update({k: v for k, v in model.state_dict().items() if k not in fused})
    try:
        dcp.load(target, storage_reader=dcp.FileSystemReader(str(folder / SHARDS)), no_dist=True)
    except Exception as e:  # a key of this model absent from the checkpoint, an unreadable file
        raise DataError(f"{folder / SHARDS}: cannot be loaded into model {meta['model']} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    model.eval()
    if merge:
        model.merge_for_inference()
    blob = {k: v for k, v in meta.items() if k != "tables"}
    blob["state_dict"] = None  # the weights are in the model (never gathered into one dict)
    return model, blob
