"""Run under torchrun (or with WORLD_SIZE unset, as one process): train each model of CASES on the same small
synthetic split and save (rank 0) its weights, validation history and test metrics, plus, for the first
model, the gathered validation predictions and their metrics. Used by tests/scale/test_ddp.py."""
import sys

import torch

from dynarec.data.prepare import synthetic_tables
from dynarec.train.distributed import context, gather_predictions, shutdown

# no dropout and no batch statistics: with them one process and several cannot end with the same weights
CASES = {
    "dnn": ({"hidden": [16]}, {"embedding_grad": "sparse"}),  # sparse table gradients, all-gathered by gloo
    "mmoe": ({"hidden": [8], "num_experts": 2, "expert_dropout": 0.0}, {}),
    "pepnet": ({}, {}),
    "star": ({"hidden": [16], "aux_hidden": [8], "partitioned_norm": False}, {}),
    "apg_dnn": ({"hidden": [16], "rank_k": 8}, {"embedding_grad": "dense"}),
}
TRAINER = {"epochs": 2, "batch_size": 256, "patience": 1, "progress": False, "eval_batch_size": 300}


def data():
    schema, tables, _ = synthetic_tables(4000, seed=0)
    pick = lambda t, n: t.subset(torch.arange(n))  # noqa: E731
    return schema, {"train": pick(tables["train"], 1024), "valid": pick(tables["valid"], 333),
                    "test": pick(tables["test"], 301)}


def main(out: str, names: list[str]) -> None:
    from dynarec.metrics import compute_metrics, predict_table
    from dynarec.train.run import train_model

    torch.set_num_threads(1)
    schema, tables = data()
    saved = {}
    for name in names:
        params, extra = CASES[name]
        res = train_model(name, schema, tables, params, {**TRAINER, **extra}, seed=0)
        saved[name] = {"state": {k: v.detach().clone() for k, v in res.model.state_dict().items()},
                       "history": res.history.epochs, "best_epoch": res.history.best_epoch,
                       "metrics": res.metrics}
        if name == names[0]:
            valid = tables["valid"]
            preds = gather_predictions(res.model, valid, 100)
            labels = {t: v.double().numpy() for t, v in valid.labels.items()}
            saved["gathered"] = {"preds": preds, "local": predict_table(res.model, valid, 100),
                                 "metrics": compute_metrics(labels, preds, valid.domain.numpy(),
                                                            schema.domain_values)}
    ctx = context()
    saved["world"] = ctx.world
    if ctx.main:
        torch.save(saved, out)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
