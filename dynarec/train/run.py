"""One call from (model name, tables) to a trained model with test metrics: used by the CLI, the demo,
the benchmark harness and tests."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynarec.config import build_dataclass, to_dict
from dynarec.train.distributed import evaluate_split, is_main
from dynarec.models import build_model
from dynarec.train.checkpoint import save_checkpoint
from dynarec.train.config import TrainerConfig
from dynarec.train.loop import History
from dynarec.train.trainer import Trainer


@dataclass
class Result:
    model: object
    metrics: dict  # on the test split
    history: History
    train_rows_per_s: float
    params: dict
    checkpoint: str | None = None
    valid_metrics: dict = field(default_factory=dict)
    eval_rows_per_s: float = 0.0
    gate_usage: dict = field(default_factory=dict)  # MoE models: per gate usage on the test split

    def summary(self, model_name: str, data: str) -> dict:
        out = {"model": model_name, "data": data, "metrics": self.metrics,
               "train_rows_per_s": self.train_rows_per_s, "epochs": len(self.history.epochs),
               "best_epoch": self.history.best_epoch, "checkpoint": self.checkpoint}
        if self.gate_usage:
            out["gate_usage"] = self.gate_usage
        return out


def gate_usage_of(model, table) -> dict:
    """``model.gate_usage(table)`` for models with softmax / top-k gates (MMoE, PLE, sparse MoE), else {}."""
    if table is None or not hasattr(model, "gate_usage") or not model.gate_modules():
        return {}
    return model.gate_usage(table)


def train_model(model_name: str, schema, tables: dict, params: dict | None = None, trainer: dict | TrainerConfig | None = None,
                seed: int = 0, out: str | Path | None = None, encoders: dict | None = None,
                task_weighting: str | None = None, console=None) -> Result:
    """Build ``model_name`` on ``schema``, train on tables['train'] with early stopping on tables['valid'],
    evaluate on tables['test'] (or 'valid' when there is no test). With ``out``: checkpoint + log there."""
    import torch

    cfg = trainer if isinstance(trainer, TrainerConfig) else build_dataclass(TrainerConfig, trainer or {}, "trainer")
    params = dict(params or {})
    torch.manual_seed(seed)
    model = build_model(model_name, schema, params)
    log = Path(out) / "log.csv" if out else None
    if log and log.exists():
        log.unlink()
    hist = Trainer(model, cfg, seed, log, task_weighting, console).fit(tables["train"], tables.get("valid"))
    test = tables.get("test") or tables.get("valid")
    t0 = time.perf_counter()
    metrics = evaluate_split(model, test, cfg.eval_batch_size) if test is not None else {}  # gathered over ranks
    eval_rps = len(test) / max(time.perf_counter() - t0, 1e-9) if test is not None else 0.0
    model.to("cpu")  # trained on trainer.device; results, gate usage and checkpoint on the host
    usage = gate_usage_of(model, test)
    ckpt = None
    if out and is_main():  # several processes: rank 0 writes
        ckpt = str(save_checkpoint(out, model, params, encoders,
                                   {"trainer": to_dict(cfg), "seed": seed, "best_epoch": hist.best_epoch}).parent)
        (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if usage:
            (Path(out) / "gate_usage.json").write_text(json.dumps(usage, indent=2))
    return Result(model, metrics, hist, hist.train_rows_per_s, params, ckpt, eval_rows_per_s=eval_rps,
                  gate_usage=usage)


def train_experiment(cfg, console=None) -> Result:
    """``dynarec train``: train ``cfg`` (an ``ExperimentConfig``) on its prepared folder; checkpoint (with the
    folder's encoders), log and ``config.json`` in ``cfg.out``. Returns the ``train_model`` result."""
    from dynarec.config import to_dict
    from dynarec.data.prepare import load_encoders, load_prepared
    from dynarec.errors import DynarecError

    if not cfg.data.path:
        raise DynarecError("train: no data; give --data DIR (a prepared folder) or data.path in the config")
    schema, tables = load_prepared(cfg.data.path)
    load_encoders(cfg.data.path, schema)  # a missing / broken encoders.json is a one-line error
    enc = json.loads((Path(cfg.data.path) / "encoders.json").read_text())
    res = train_model(cfg.model, schema, tables, cfg.params, cfg.trainer, cfg.seed, cfg.out, enc, console=console)
    if is_main():
        Path(cfg.out, "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    return res
