"""Everything an online run carries from pass to pass (model, training step, index, fresh-row keeper, serving
copy, generators), built fresh from the first pass or restored from a pass checkpoint (``--resume``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynarec.data.prepare import read_raw
from dynarec.errors import DataError
from dynarec.models import build_model
from dynarec.online.config import OnlineExperiment, check_caps, eviction_config, run_config
from dynarec.online.delta import snapshot
from dynarec.online.ids import HashIndex, id_kinds
from dynarec.online.preset import apply_table_groups
from dynarec.online.rows import RowKeeper
from dynarec.online.schema import encoders_for, fit_schema
from dynarec.tables.dynamic import DynamicIndex
from dynarec.train.step import TrainStep

STATE_FORMAT = "dynarec-online-1"


def build_index(cfg: OnlineExperiment, dyn: list[str], model):
    """The dynamic index (or the hashing trick) over the features ``dyn``; None without dynamic features. The
    dynamic index is built from the eviction config of the tables it indexes (``TableSpec.eviction``), which
    the ``online:`` keys set on every table serving a dynamic feature."""
    o = cfg.online
    if not dyn:
        return None
    caps = check_caps(o, dyn)
    if o.table == "hash":
        return HashIndex(o.max_rows, len(dyn))
    model.tables.set_eviction(dyn, eviction_config(o))
    return DynamicIndex(o.max_rows, caps=caps, eviction=model.tables.eviction(), seed=cfg.seed)


@dataclass
class OnlineState:
    cfg: OnlineExperiment
    model: object
    step: TrainStep
    index: object
    keeper: RowKeeper
    encoders: object
    dynamic: list[str]
    serving: dict
    batches: torch.Generator
    files: list[str] = field(default_factory=list)  # names of the passes done, in order
    rows: list[dict] = field(default_factory=list)  # the JSON row of each pass done
    next_pass: int = 0
    kinds: dict | None = None  # id type per dynamic feature, recorded on the first pass (None: runs older than it)

    @property
    def schema(self):
        return self.model.schema

    def _wire(self):
        if self.index is not None:
            self.index.subscribe(self.keeper.on_admit, self.keeper.on_free)

    def extra(self) -> dict:
        """The online part of a pass checkpoint (``extra["online"]``)."""
        return {"format": STATE_FORMAT, "pass": self.next_pass - 1, "files": list(self.files),
                "rows": list(self.rows), "config": run_config(self.cfg), "dynamic": list(self.dynamic),
                "encoders": self.encoders.to_dict(),
                "index": self.index.state_dict() if self.index is not None else None,
                "step": self.step.state_dict(), "serving_dense": self.serving["dense"],
                "row_std": dict(self.keeper.std), "id_kinds": self.kinds,
                "table_groups": {n: s.group for n, s in self.model.tables.specs.items()},
                "rng": {"torch": torch.get_rng_state(), "batches": self.batches.get_state(),
                        "rows": self.keeper.gen.get_state()}}


def fresh_state(cfg: OnlineExperiment, schema, first_file) -> OnlineState:
    """A new run: encoders fitted and the model built on the first pass file."""
    torch.manual_seed(cfg.seed)
    first = read_raw(first_file, schema)
    mschema, enc, dyn = fit_schema(schema, first, cfg.online.table, cfg.online.max_rows, str(first_file))
    model = build_model(cfg.model, mschema, dict(cfg.params))
    apply_table_groups(cfg.online.preset, model)
    step = TrainStep(model, cfg.trainer)
    index = build_index(cfg, dyn, model)
    keeper = RowKeeper(model, step.optimizers, dyn, cfg.seed, cfg.online.fresh_row)
    st = OnlineState(cfg, model, step, index, keeper, enc, dyn, snapshot(model, index),
                     torch.Generator().manual_seed(cfg.seed), kinds=id_kinds(first, [mschema.feature(n) for n in dyn]))
    st._wire()
    return st


def restore_state(cfg: OnlineExperiment, blob: dict, where: str) -> OnlineState:
    """The state saved in a pass checkpoint ``blob`` (:func:`dynarec.train.checkpoint.read_checkpoint`)."""
    from dynarec.data.schema import Schema

    on = blob.get("extra", {}).get("online")
    if not isinstance(on, dict) or on.get("format") != STATE_FORMAT:
        raise DataError(f"{where}: not an online pass checkpoint")
    schema = Schema.from_dict(blob["schema"], where)
    dyn = list(on["dynamic"])
    model = build_model(blob["model"], schema, blob["params"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    for name, group in (on.get("table_groups") or {}).items():  # as the run trained them (older runs: the model's)
        model.tables.set_group(group, [name])
    step = TrainStep(model, cfg.trainer)
    step.load_state_dict(on["step"])
    index = build_index(cfg, dyn, model)
    if index is not None:
        index.load_state_dict(on["index"])
    keeper = RowKeeper(model, step.optimizers, dyn, cfg.seed, cfg.online.fresh_row)
    keeper.std = dict(on["row_std"])
    keeper.gen.set_state(on["rng"]["rows"])
    serving = snapshot(model, index)
    serving["dense"] = on["serving_dense"]
    gen = torch.Generator()
    gen.set_state(on["rng"]["batches"])
    torch.set_rng_state(on["rng"]["torch"])
    st = OnlineState(cfg, model, step, index, keeper, encoders_for(schema, dyn, on["encoders"]), dyn, serving, gen,
                     list(on["files"]), list(on["rows"]), on["pass"] + 1, on.get("id_kinds"))
    st._wire()
    return st
