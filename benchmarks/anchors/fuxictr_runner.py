"""Run FuxiCTR 2.3.10 models on a dynarec prepared split, through FuxiCTR's public API.

Export: the split's ALREADY-ENCODED columns are written in FuxiCTR's *processed* layout (one parquet file per
split + ``feature_map.json``), so FuxiCTR sees exactly dynarec's ids (no re-tokenisation, same vocabularies):
``categorical`` per sparse feature (``padding_idx`` 0 = dynarec's unknown id, ``oov_idx`` = an extra row),
``numeric`` per dense feature, ``sequence`` with ``layers.MaskedAveragePooling()`` per sequence feature.
Training uses FuxiCTR's own ``ParquetDataLoader`` (via ``RankDataLoader``) and ``model.fit``.

Models: ``DNN``, ``ShareBottom``, ``MMoE``, ``PPNet``, ``APG_DCNv2``, ``APG_DeepFM`` are loaded from the
``model_zoo/`` of a FuxiCTR checkout (``--fuxictr-repo``): they are not in the wheel. Nothing is copied."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import HParams, auc, split_columns

# model name -> (folder under model_zoo/ holding an ``src`` package, class name, multi-task?)
ZOO = {
    "DNN": ("DNN/DNN_torch", "DNN", False),
    "ShareBottom": ("multitask/ShareBottom", "ShareBottom", True),
    "MMoE": ("multitask/MMoE", "MMoE", True),
    "PPNet": ("PEPNet", "PPNet", False),
    "APG_DCNv2": ("APG", "APG_DCNv2", False),
    "APG_DeepFM": ("APG", "APG_DeepFM", False),
}


def load_zoo_class(repo: str | Path, name: str):
    """Import ``model_zoo/<folder>/src`` of a FuxiCTR checkout as its own package and return the class."""
    folder, cls, _ = ZOO[name]
    src = Path(repo) / "model_zoo" / folder / "src"
    if not (src / "__init__.py").exists():
        raise FileNotFoundError(f"{src}/__init__.py not found: --fuxictr-repo must be a checkout of "
                                "github.com/reczoo/FuxiCTR (model_zoo/ is not in the fuxictr wheel)")
    pkg = "fuxictr_zoo_" + folder.replace("/", "_")
    if pkg not in sys.modules:
        spec = importlib.util.spec_from_file_location(pkg, src / "__init__.py", submodule_search_locations=[str(src)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[pkg] = mod
        spec.loader.exec_module(mod)
    return getattr(sys.modules[pkg], cls)


def export(schema, tables: dict, out: str | Path, tasks: list[str], embed_dim: int,
           dataset_id: str = "dynarec_split"):
    """Write ``{train,valid,test}.parquet`` + ``feature_map.json`` in FuxiCTR's processed layout; returns the
    loaded ``FeatureMap``."""
    import pandas as pd
    from fuxictr.features import FeatureMap

    out = Path(out) / dataset_id
    out.mkdir(parents=True, exist_ok=True)
    features = []
    for f in schema.sparse:
        v = max(f.vocab_size, 1)
        features.append({f.name: {"source": f.group, "type": "categorical", "padding_idx": 0,
                                  "oov_idx": v, "vocab_size": v + 1}})
    for f in schema.dense:
        features.append({f.name: {"source": f.group, "type": "numeric"}})
    for f in schema.sequences:
        v = max(f.vocab_size, 1)
        L = tables["train"].sequences[f.name].shape[1]
        features.append({f.name: {"source": f.group, "type": "sequence", "padding_idx": 0, "oov_idx": v,
                                  "vocab_size": v + 1, "max_len": L,
                                  "feature_encoder": "layers.MaskedAveragePooling()"}})
    fmap = {"dataset_id": dataset_id, "num_fields": len(features), "total_features": 0, "input_length": 0,
            "labels": list(tasks), "features": features}
    (out / "feature_map.json").write_text(json.dumps(fmap, indent=1))
    for split, table in tables.items():
        cols = split_columns(schema, table)
        df = pd.DataFrame({k: (list(v) if v.ndim == 2 else v) for k, v in cols.items()
                           if k not in schema.task_names or k in tasks})
        df.to_parquet(out / f"{split}.parquet", index=False)
    fm = FeatureMap(dataset_id, str(out))
    fm.load(str(out / "feature_map.json"), {"embedding_dim": embed_dim})
    return fm


def model_kwargs(name: str, hp: HParams, tasks: list[str], domain: str) -> dict:
    """Translate the shared hyper-parameters into the FuxiCTR model's own argument names."""
    common = dict(learning_rate=hp.lr, embedding_dim=hp.embed_dim, net_dropout=0, batch_norm=False,
                  embedding_regularizer=0, net_regularizer=0, hidden_activations="ReLU")
    if name == "DNN":
        return {**common, "hidden_units": list(hp.hidden)}
    if name == "ShareBottom":
        return {**common, "bottom_hidden_units": list(hp.hidden), "tower_hidden_units": list(hp.tower_hidden)}
    if name == "MMoE":  # linear softmax gates, as dynarec's MMoE (SPEC) and the paper
        return {**common, "num_experts": hp.num_experts, "expert_hidden_units": list(hp.hidden),
                "gate_hidden_units": [], "tower_hidden_units": list(hp.tower_hidden)}
    if name == "PPNet":
        return {**common, "hidden_units": list(hp.hidden), "gate_hidden_dim": hp.gate_hidden_dim,
                "gate_emb_dim": hp.gate_emb_dim, "gate_priors": PPNET_PRIORS}
    if name in ("APG_DCNv2", "APG_DeepFM"):
        kw = {**common, "dnn_activations": "ReLU", "hypernet_config": {"hidden_units": list(hp.hypernet_hidden),
                                                                        "hidden_activations": "ReLU",
                                                                        "dropout_rates": 0},
              "condition_features": [domain], "condition_mode": "group-wise", "new_condition_emb": False,
              "rank_k": hp.rank_k, "overparam_p": hp.overparam_p, "generate_bias": True}
        kw.pop("hidden_activations")
        if name == "APG_DCNv2":
            kw.update(model_structure="parallel", num_cross_layers=hp.cross_layers,
                      parallel_dnn_hidden_units=list(hp.hidden))
        else:
            kw.update(hidden_units=list(hp.hidden), hidden_activations="ReLU")
            kw.pop("dnn_activations")
        return kw
    raise KeyError(name)


PPNET_PRIORS: list[str] = []  # set by run() from the schema's user/item/author groups


def run(name: str, schema, tables: dict, hp: HParams, repo: str, workdir: str, tasks: list[str],
        seed: int = 0, num_workers: int = 1, log=print) -> dict:
    """Train FuxiCTR ``name`` on the split; returns test AUC per task and train rows/s (fit time minus the
    validation passes, data loading included: FuxiCTR's per-row collation is part of its training loop)."""
    import torch
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    logging.getLogger().setLevel(logging.WARNING)
    import ray

    # FuxiCTR's parquet loader starts Ray itself; we start it quieter, on our CPUs, and shut it down after the
    # run (its idle daemons would otherwise share the 2 cores with every later run in this process)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=max(torch.get_num_threads(), 1), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, ignore_reinit_error=True)
        ray.data.DataContext.get_current().enable_progress_bars = False
    cls = load_zoo_class(repo, name)
    multi = ZOO[name][2]
    tasks = list(tasks) if multi else [tasks[0]]
    global PPNET_PRIORS
    PPNET_PRIORS = [f.name for f in schema.sparse if f.group in ("user", "item", "author")]
    fm = export(schema, tables, workdir, tasks, hp.embed_dim)
    data_dir = Path(workdir) / fm.dataset_id
    seed_everything(seed)
    kw = dict(model_id=f"{name}_anchor", gpu=-1, optimizer="adam", loss="binary_crossentropy",
              metrics=["AUC", "logloss"], model_root=str(Path(workdir) / "ckpt"), verbose=0,
              early_stop_patience=hp.patience, monitor="AUC", monitor_mode="max", save_best_only=True,
              reduce_lr_on_plateau=False, eval_steps=None)
    if multi:
        kw.update(task=["binary_classification"] * len(tasks), num_tasks=len(tasks))
    else:
        kw.update(task="binary_classification")
    kw.update(model_kwargs(name, hp, tasks, schema.domain))
    model = cls(fm, **kw)
    os.makedirs(model.model_dir, exist_ok=True)  # FuxiCTR's run script creates it before fit
    # 2.3.10's RankDataLoader is a function returning the generators (the GitHub HEAD run script still calls
    # ``.make_iterator()`` on it: the "one-line fix"); its parquet loader streams with Ray Data.
    train_gen, valid_gen, test_gen = RankDataLoader(fm, stage="both", train_data=str(data_dir / "train.parquet"),
                          valid_data=str(data_dir / "valid.parquet"), test_data=str(data_dir / "test.parquet"),
                          batch_size=hp.batch_size, shuffle=True, data_format="parquet",
                          num_workers=num_workers)
    # time spent in validation passes is excluded from the training throughput
    eval_time = [0.0]
    orig_eval = model.evaluate

    def timed_evaluate(*a, **k):
        t = time.perf_counter()
        try:
            return orig_eval(*a, **k)
        finally:
            eval_time[0] += time.perf_counter() - t

    model.evaluate = timed_evaluate
    epochs_seen = [0]
    orig_epoch = model.train_epoch

    def counted_epoch(*a, **k):
        epochs_seen[0] += 1
        return orig_epoch(*a, **k)

    model.train_epoch = counted_epoch
    t0 = time.perf_counter()
    model.fit(train_gen, epochs=hp.epochs, validation_data=valid_gen, max_gradient_norm=10.0)
    fit_s = time.perf_counter() - t0
    train_s = max(fit_s - eval_time[0], 1e-9)
    n_train = len(tables["train"])
    pred = model.predict(test_gen)
    test_cols = split_columns(schema, tables["test"])
    if multi:
        aucs = {t: auc(test_cols[t], np.asarray(pred[t])) for t in tasks}
    else:
        aucs = {tasks[0]: auc(test_cols[tasks[0]], np.asarray(pred))}
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if started:
        ray.shutdown()
    return {"library": "fuxictr", "model": name, "auc": aucs, "train_rows_per_s": epochs_seen[0] * n_train / train_s,
            "epochs": epochs_seen[0], "train_seconds": train_s, "params": n_params,
            "threads": torch.get_num_threads()}
