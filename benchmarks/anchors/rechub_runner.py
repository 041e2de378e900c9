"""Run torch-rechub multi-task models (SharedBottom, MMOE) on a dynarec prepared split, through its public API.

Export: torch-rechub's input format is a dict of numpy columns + a label matrix, fed to its ``DataGenerator``
(per-row ``TorchDataset.__getitem__`` + PyTorch's default collate). The columns are dynarec's encoded ids:
``SparseFeature(vocab_size=V)`` per sparse feature, ``SequenceFeature(pooling="mean", padding_idx=0)`` per
sequence feature, ``DenseFeature`` per dense feature. Training: ``MTLTrainer.fit`` (Adam).

Architecture notes (torch-rechub's fixed choices, not switchable): its ``MLP`` puts BatchNorm1d after every
hidden Linear (so the driver compares it with dynarec run with ``batch_norm: true``), and its MMoE gate is
``Linear -> BatchNorm1d -> softmax``; its loss is the mean of the task losses; no gradient clipping; when
training ends without an early stop, the LAST epoch's weights are kept."""
from __future__ import annotations

import time

import numpy as np

from common import HParams, auc, split_columns

MODELS = ("SharedBottom", "MMOE")


def features(schema, hp: HParams, train_table):
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature

    feats = [SparseFeature(f.name, vocab_size=max(f.vocab_size, 1), embed_dim=hp.embed_dim) for f in schema.sparse]
    feats += [SequenceFeature(f.name, vocab_size=max(f.vocab_size, 1), embed_dim=hp.embed_dim, pooling="mean",
                              padding_idx=0) for f in schema.sequences]
    feats += [DenseFeature(f.name) for f in schema.dense]
    return feats


def export(schema, table, tasks):
    cols = split_columns(schema, table)
    x = {k: v for k, v in cols.items() if k not in schema.task_names}
    y = np.stack([cols[t] for t in tasks], 1)
    return x, y


def run(name: str, schema, tables: dict, hp: HParams, workdir: str, tasks: list[str], seed: int = 0,
        num_workers: int = 0, log=print) -> dict:
    import contextlib
    import io

    import torch
    from torch_rechub.models.multi_task import MMOE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch.utils.data import DataLoader
    from torch_rechub.utils.data import DataGenerator, PredictDataset

    torch.manual_seed(seed)
    np.random.seed(seed)
    tasks = list(tasks)
    feats = features(schema, hp, tables["train"])
    task_types = ["classification"] * len(tasks)
    towers = [{"dims": list(hp.tower_hidden)} for _ in tasks]
    if name == "SharedBottom":
        model = SharedBottom(feats, task_types, bottom_params={"dims": list(hp.hidden)}, tower_params_list=towers)
    elif name == "MMOE":
        model = MMOE(feats, task_types, n_expert=hp.num_experts, expert_params={"dims": list(hp.hidden)},
                     tower_params_list=towers)
    else:
        raise KeyError(name)
    xs, ys = {}, {}
    for s in ("train", "valid", "test"):
        xs[s], ys[s] = export(schema, tables[s], tasks)
    dg = DataGenerator(xs["train"], ys["train"])
    train_dl, val_dl, test_dl = dg.generate_dataloader(x_val=xs["valid"], y_val=ys["valid"], x_test=xs["test"],
                                                       y_test=ys["test"], batch_size=hp.batch_size,
                                                       num_workers=num_workers)
    trainer = MTLTrainer(model, task_types=task_types, optimizer_params={"lr": hp.lr, "weight_decay": 0.0},
                         n_epoch=hp.epochs, earlystop_patience=hp.patience, device="cpu", model_path=workdir)
    train_time = [0.0]
    epochs_seen = [0]
    orig = trainer.train_one_epoch

    def timed_epoch(*a, **k):
        t = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            train_time[0] += time.perf_counter() - t
            epochs_seen[0] += 1

    trainer.train_one_epoch = timed_epoch
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(train_dl, val_dl)
        pred_dl = DataLoader(PredictDataset(xs["test"]), batch_size=hp.batch_size, shuffle=False)
        pred = np.asarray(trainer.predict(trainer.model, pred_dl)).reshape(len(ys["test"]), len(tasks))
    aucs = {t: auc(ys["test"][:, i], pred[:, i]) for i, t in enumerate(tasks)}
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"library": "torch-rechub", "model": name, "auc": aucs,
            "train_rows_per_s": epochs_seen[0] * len(ys["train"]) / max(train_time[0], 1e-9),
            "epochs": epochs_seen[0], "train_seconds": train_time[0], "params": n_params,
            "threads": torch.get_num_threads()}
