"""What a training run returns (:class:`Result`, for the ranking and the retrieval trainers alike) and what
marks a folder as a training run's (:data:`MARKERS`, for :func:`dynarec.outdir.check_out`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from dynarec.train.loop import History

MARKERS = ("model.pt", "shards.json")  # shards.json: a sharded checkpoint  # what makes a folder a training run's (dynarec.outdir)


@dataclass
class Result:
    """One trained model with its metrics.

    Example::

        res = train_model("dnn", schema, tables)
        res.metrics["auc"]["click"]["all"], res.history.best_epoch
    """
    model: object
    metrics: dict  # on the test split
    history: History
    train_rows_per_s: float
    params: dict
    checkpoint: str | None = None
    valid_metrics: dict = field(default_factory=dict)
    eval_rows_per_s: float = 0.0
    gate_usage: dict = field(default_factory=dict)  # MoE models: per gate usage on the test split
    hints: list = field(default_factory=list)  # advice for the user (printed by the CLI after a successful run)
    data: object = None  # retrieval runs: the RetrievalData they trained on (benchmarks reuse it)

    def summary(self, model_name: str, data: str) -> dict:
        out = {"model": model_name, "data": data, "metrics": self.metrics,
               "train_rows_per_s": self.train_rows_per_s, "epochs": len(self.history.epochs),
               "best_epoch": self.history.best_epoch, "checkpoint": self.checkpoint}
        if self.gate_usage:
            out["gate_usage"] = self.gate_usage
        return out
