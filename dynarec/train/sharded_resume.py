"""The resume point of a ``trainer.distributed: torchrec`` run: ``last.shards/`` in the run's work folder,
rewritten by EVERY rank after every epoch (:class:`ShardedLastState`) through ``torch.distributed.checkpoint``
(DCP) — the table shards, the dense weights, every optimizer's state (TorchRec's fused Adagrad accumulators,
sharded like their tables; the dense Adam), early stopping's best-state copy (its shards as sharded tensors
with the live tables' layout) — plus one small ``position.<rank>.pt`` per rank (the epoch, the random
generators, the history, the callbacks' other state) and, last, ``shards.json`` with the SHA-256 of every
file (:func:`~dynarec.train.sharded_checkpoint.verify`). No rank assembles a table or copies it into a buffer.

``dynarec train --resume`` loads it back:

* into the same or another number of TorchRec processes (:func:`load_sharded_resume`): DCP reads each
  rank's shards of the NEW plan from whatever shards were written (resharding is DCP's job), in place;
* into ONE process (:func:`load_into_one`, e.g. to continue a 2-process run on one machine with ``ddp``):
  each table's rows go straight into its slice of the fused table, the fused Adagrad accumulators into
  ``torch.optim.Adagrad``'s ``sum`` (the same update: ``sum += g²``, ``w -= lr·g/(√sum + eps)``).

Example::

    from dynarec.train.sharded_resume import load_into_one

    state = load_into_one(".runs/big.partial/last.shards", trainer)   # a one-process Trainer
    trainer.fit(tables["train"], tables["valid"], resume=state)
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from dynarec.errors import DataError, DynarecError
from dynarec.outdir import file_sha256, write_atomic
from dynarec.train.callbacks import Checkpointing
from dynarec.train.sharded_checkpoint import FORMAT, MANIFEST, SHARDS, _names_of, _table_keys, verify

LAST_SHARDED = "last.shards"
BEST = "best."


def _position(loop, meta) -> dict:
    """The loop's state without its tensors of model and optimizers (those go through DCP)."""
    cbs = {}
    for i, cb in enumerate(loop.callbacks):
        if hasattr(cb, "state_dict") and not isinstance(cb, Checkpointing):
            s = dict(cb.state_dict())
            if "best_state" in s:
                s["best_state"] = s["best_state"] is not None  # the copy itself goes through DCP
            cbs[f"{i}:{type(cb).__name__}"] = s
    weighting = getattr(loop.step, "weighting", None)
    return {"format": FORMAT, "meta": meta, "epoch": loop.epoch, "stop": loop.stop,
            "weighting": weighting.state_dict() if weighting is not None else {},
            "rng": {"batches": loop.generator.get_state() if loop.generator is not None else None,
                    "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "history": {"epochs": list(loop.history.epochs), "best_epoch": loop.history.best_epoch,
                        "best_score": loop.history.best_score, "train_seconds": loop.history.train_seconds},
            "callbacks": cbs}


def _best_state(loop):
    for cb in loop.callbacks:
        if getattr(cb, "best_state", None) is not None:
            return cb
    return None


def _best_entries(best: dict, sharding) -> dict:
    """DCP entries of a best-state copy ``best`` (this rank's ``model.state_dict()``): dense keys as they
    are, the copied shards (``<path>.local_shard.<i>``) as sharded tensors with the live tables' layout."""
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor

    out = {BEST + k: v for k, v in best.items() if ".local_shard." not in k}
    for path, layer in sharding.layers:
        i = 0
        for key, v in layer.ebc.state_dict().items():
            if hasattr(v, "local_shards"):
                shards = []
                for s in v.local_shards():
                    shards.append(Shard(best[f"{path}.local_shard.{i}"], s.metadata))
                    i += 1
                out[f"{BEST}{path}.ebc.{key}"] = ShardedTensor._init_from_local_shards_and_global_metadata(
                    shards, v.metadata())
            else:
                out[f"{BEST}{path}.ebc.{key}"] = best[f"{path}.local_shard.{i}"]
                i += 1
    return out


def save_sharded_resume(work: Path | None, loop, sharding, meta: dict) -> None:
    """A collective call: the resume point of this TorchRec fit into ``work/last.shards`` (``work``: rank
    0's; the others pass ``None``). The previous one is replaced only once the new one is complete."""
    import shutil

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from dynarec.train.sharded_checkpoint import state_of

    box = [str(work) if work is not None else None]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        return
    final, rank = Path(box[0]) / LAST_SHARDED, dist.get_rank()
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    state = state_of(loop.model, sharding, loop.step.optimizers)
    cb = _best_state(loop)
    if cb is not None:
        state.update(_best_entries(cb.best_state, sharding))
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp / SHARDS)))
    torch.save(_position(loop, meta), tmp / f"position.{rank}.pt")
    dist.barrier()
    if rank == 0:
        torch.save({"tables": _table_keys(sharding.layers), "world": dist.get_world_size(),
                    "fused": _fused_keys(state, sharding.layers)}, tmp / "meta.pt")
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {"format": FORMAT, "files": {str(p.relative_to(tmp)): file_sha256(p) for p in files}}
        write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        shutil.rmtree(final, ignore_errors=True)  # our own previous resume point
        tmp.rename(final)
    dist.barrier()


def _fused_keys(state: dict, layers) -> dict:
    """DCP key of each table -> {optimizer state name (e.g. ``momentum1``): its DCP key}."""
    out = {}
    for tk in _table_keys(layers):
        for pk, sub in state["optim.fused"].items():
            if pk == tk or pk.endswith("." + tk):
                out[tk] = {name.rsplit(".", 1)[-1]: f"optim.fused.{pk}.{name}" for name in sub}
    return out


class ShardedLastState(Checkpointing):
    """Writes the sharded resume point after every epoch (every rank; ``work`` is rank 0's work folder)."""

    def __init__(self, work: Path | None, sharding, meta: dict):
        super().__init__(lambda loop: save_sharded_resume(work, loop, sharding, meta), every=1)


def exists(work: Path) -> bool:
    return (Path(work) / LAST_SHARDED / MANIFEST).exists()


def _read(folder: Path, meta: dict | None, check: bool = True) -> tuple[dict, dict]:
    """(meta.pt, this rank's position) of a verified resume point; the data ``meta`` must match."""
    import torch.distributed as dist

    if check:
        verify(folder)
    rank = dist.get_rank() if dist.is_initialized() else 0
    pos = folder / f"position.{rank}.pt"
    pos = pos if pos.exists() else folder / "position.0.pt"
    try:
        info = torch.load(folder / "meta.pt", map_location="cpu", weights_only=False)
        position = torch.load(pos, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"{folder}: not a readable resume point ({type(e).__name__})") from None
    for k, v in (meta or {}).items():
        if position["meta"].get(k) != v:
            raise DataError(f"{pos}: saved with {k} = {position['meta'].get(k)}, this data has {v}: "
                            "the prepared data changed since the run started")
    return info, position


def _dense_optim_targets(folder: Path, optimizers) -> dict:
    """DCP targets for ``optim.dense.<i>.state.*`` (empty tensors of the saved sizes: a fresh optimizer has
    no state yet) -> {i: {param index: {name: tensor}}}, filled by the load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = dcp.FileSystemReader(str(folder / SHARDS)).read_metadata().state_dict_metadata
    out: dict = {}
    for k, m in md.items():
        parts = k.split(".")
        if k.startswith("optim.dense.") and parts[3] == "state" and isinstance(m, TensorStorageMetadata):
            i, pid, name = int(parts[2]), int(parts[4]), ".".join(parts[5:])
            if i >= len(optimizers):
                raise DataError(f"{folder}: holds the state of optimizer {i}, which this run does not have "
                                f"(it has {len(optimizers)} besides the tables' own)")
            out.setdefault(i, {}).setdefault(pid, {})[name] = torch.empty(m.size, dtype=m.properties.dtype)
    return out


def _load_dense_optim(targets: dict, optimizers, folder: Path) -> None:
    for i, state in targets.items():
        sd = optimizers[i].state_dict()
        sd["state"] = state
        try:
            optimizers[i].load_state_dict(sd)
        except (ValueError, KeyError, RuntimeError) as e:
            raise DataError(f"{folder}: optimizer {i}'s state does not fit this run ({e})") from None


def _dcp_load(target: dict, folder: Path, no_dist: bool) -> None:
    import torch.distributed.checkpoint as dcp

    try:
        dcp.load(target, storage_reader=dcp.FileSystemReader(str(folder / SHARDS)), no_dist=no_dist)
    except Exception as e:  # a key of this run absent from the resume point, an unreadable file
        raise DataError(f"{folder / SHARDS}: cannot be loaded into this run "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _loop_state(position: dict, best: dict | None) -> dict:
    """The :meth:`~dynarec.train.loop.Loop.state_dict` of a resume point whose tensors are already loaded
    (``model`` / ``step``: None) with early stopping's best-state copy ``best`` put back."""
    cbs = {}
    for k, s in position["callbacks"].items():
        s = dict(s)
        if "best_state" in s:
            s["best_state"] = best if s["best_state"] else None
        cbs[k] = s
    return {"epoch": position["epoch"], "stop": position["stop"], "model": None, "step": None,
            "rng": position["rng"], "history": position["history"], "callbacks": cbs,
            "weighting": position["weighting"]}


def load_sharded_resume(work: Path | None, meta: dict | None, model, sharding, optimizers) -> dict:
    """A collective call (every rank of a TorchRec run; ``work``: rank 0's work folder, ``meta``: rank 0's
    data record): the resume point loaded IN PLACE into this rank's shards, dense weights and optimizers
    (any world size wrote it: DCP reshards) -> the loop state to :meth:`~dynarec.train.loop.Loop.fit` with."""
    import torch.distributed as dist

    from dynarec.train.sharded_checkpoint import state_of

    box = [None, None]
    if work is not None:
        folder = Path(work) / LAST_SHARDED
        try:
            if not exists(Path(work)):
                raise DynarecError(f"no interrupted run to resume (no {folder / MANIFEST})")
            _read(folder, meta)
            box = [str(folder), None]
        except DynarecError as e:
            box = [None, e]
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    folder = Path(box[0])
    info, position = _read(folder, None, check=False)  # rank 0 verified every file above
    target = state_of(model, sharding, optimizers)
    del target["optim.fused"]  # the live accumulators, as DCP keys: loaded in place below
    fused_state = sharding.dmp.fused_optimizer.state_dict()
    target["optim.fused"] = fused_state["state"]
    for k in [k for k in target if k.startswith("optim.dense.")]:
        del target[k]
    dense = _dense_optim_targets(folder, optimizers)
    target.update({f"optim.dense.{i}.state.{p}.{n}": t for i, s in dense.items() for p, d in s.items()
                   for n, t in d.items()})
    best = None
    if any(s.get("best_state") for s in position["callbacks"].values()):
        from dynarec.tables.torchrec_adapter import dense_state

        best = {k: torch.empty_like(v) for k, v in dense_state(model).items()}  # early stopping's copy
        for path, layer in sharding.layers:
            best.update({f"{path}.local_shard.{i}": torch.empty_like(t) for i, (*_, t) in enumerate(layer._pieces())})
        target.update(_best_entries(best, sharding))
    _dcp_load(target, folder, no_dist=False)
    sharding.dmp.fused_optimizer.load_state_dict(fused_state)
    _load_dense_optim(dense, optimizers, folder)
    return _loop_state(position, best)


def load_into_one(folder: str | Path, model, optimizers, meta: dict | None = None) -> dict:
    """The resume point in ``folder`` (written by any number of TorchRec processes) loaded in ONE process
    into ``model`` (built whole: the fused tables with all their rows) and the one-process step's
    ``optimizers`` (the tables' Adagrad, the dense optimizer) -> the loop state to fit with."""
    folder = Path(folder)
    info, position = _read(folder, meta)
    target, fused = {}, set()
    table_opt = next((o for o in optimizers if isinstance(o, torch.optim.Adagrad)), None)
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    has_best = any(s.get("best_state") for s in position["callbacks"].values())
    for k, t in info["tables"].items():
        w = model.get_submodule(t["layer"]).weight.weight
        if w.dim() != 2 or w.shape[1] != t["dim"] or w.shape[0] < t["offset"] + t["rows"]:
            raise DataError(f"{folder / 'meta.pt'}: table {k} has no fused table of width {t['dim']} at "
                            f"{t['layer']}")
        target[k] = w.data.narrow(0, t["offset"], t["rows"])
        names = _names_of(model, w)
        fused |= names
        if has_best:
            target[BEST + k] = best[sorted(names)[0]].narrow(0, t["offset"], t["rows"])
        for name, key in info["fused"].get(k, {}).items():
            if name != "momentum1" or table_opt is None or w not in table_opt.state:
                raise DataError(f"{folder}: the tables' optimizer state {name} has no place in this run "
                                "(one process needs trainer.embedding_optimizer: adagrad)")
            target[key] = table_opt.state[w]["sum"].narrow(0, t["offset"], t["rows"])
    target.update({k: v for k, v in model.state_dict().items() if k not in fused})
    if has_best:
        target.update({BEST + k: v for k, v in best.items() if k not in fused})
    others = [o for o in optimizers if o is not table_opt]
    dense = _dense_optim_targets(folder, others)
    target.update({f"optim.dense.{i}.state.{p}.{n}": t for i, s in dense.items() for p, d in s.items()
                   for n, t in d.items()})
    _dcp_load(target, folder, no_dist=True)
    _load_dense_optim(dense, others, folder)
    return _loop_state(position, best if has_best else None)
