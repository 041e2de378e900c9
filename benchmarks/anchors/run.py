"""Side-by-side: dynarec vs FuxiCTR 2.3.10 vs torch-rechub 0.9.0 on the SAME prepared split, same model, same
hyper-parameters; prints test AUC and train rows/s per library and the ratios, in one run.

Run it with the anchor virtualenv (``bash benchmarks/anchors/setup.sh``), never with dynarec's own venv:

    .venv-anchors/bin/python benchmarks/anchors/run.py --data PREPARED_DIR \
        --fuxictr-repo /path/to/FuxiCTR-checkout [--models dnn,shared_bottom,mmoe,ppnet,apg_dcnv2] \
        [--epochs 2 --batch-size 1024 --lr 1e-3 --embed-dim 16 --hidden 256,128] [--json out.json]
    .venv-anchors/bin/python benchmarks/anchors/run.py --synthetic 100000 --fuxictr-repo ...

PREPARED_DIR comes from ``dynarec data prepare ...`` / ``dynarec data synthetic --rows N --out DIR``.
Single-task models (dnn, ppnet, apg_*) are trained on the first task on every side.

dynarec rows (``--dynarec-optim``, see VARIANTS): ``default`` = dynarec's own defaults (sparse Adagrad 0.2 on
embeddings, Adam on the rest); ``matched`` = Adam at ``--lr`` everywhere, SparseAdam on the tables; ``exact`` =
FuxiCTR's recipe (dense Adam on the tables, N(0, 1e-4) init, xavier-normal Linear init); ``init`` / ``dense`` /
``dense_init`` = part of it.
torch-rechub's MLPs always carry BatchNorm, so its ratios use dynarec runs with ``batch_norm: true``.
Throughput = training rows / training seconds (validation passes excluded, data loading included) on every side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from common import HParams, gemm_peak_gflops, train_flops_per_row  # noqa: E402

# our model name -> (dynarec registry name, FuxiCTR model_zoo name, torch-rechub name, multi-task?)
MODELS = {
    "dnn": ("dnn", "DNN", None, False),
    "shared_bottom": ("shared_bottom", "ShareBottom", "SharedBottom", True),
    "mmoe": ("mmoe", "MMoE", "MMOE", True),
    "ppnet": ("ppnet", "PPNet", None, False),
    "apg_dcnv2": ("apg_dcnv2", "APG_DCNv2", None, False),
    "apg_deepfm": ("apg_deepfm", "APG_DeepFM", None, False),
}


# dynarec variant -> (embedding optimizer at --lr or None for dynarec's default, embedding init std or None,
#                     FuxiCTR's Linear init: xavier_normal_ weights and zero biases instead of torch's default)
VARIANTS = {
    "default": (None, None, False),  # sparse Adagrad 0.2 on the tables, N(0, 1e-2) init
    "matched": ("sparse_adam", None, False),  # Adam everywhere, lazily on the tables (only rows in the batch move)
    "init": ("sparse_adam", 1e-4, False),  # matched + the anchors' N(0, 1e-4) table init
    "dense": ("adam", None, False),  # dense Adam on the tables: every row moves every step, as in the anchors
    "dense_init": ("adam", 1e-4, False),  # dense Adam + N(0, 1e-4)
    "exact": ("adam", 1e-4, True),  # FuxiCTR's recipe: dense Adam on the tables, N(0, 1e-4), xavier Linear init
}


def xavier_linears(model) -> None:
    """FuxiCTR's default re-initialisation (its BaseModel.reset_parameters): every nn.Linear gets
    xavier_normal_ weights and zero biases. Our own code, applied only for the ``exact`` variant."""
    import math

    from torch import nn

    from dynarec.nn.moe import Experts

    for m in model.modules():
        if type(m) is nn.Linear:
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, Experts):  # FuxiCTR's experts are nn.Linear MLPs: the same init per expert
            for w, b in zip(m.weights, m.biases):
                nn.init.normal_(w, std=math.sqrt(2.0 / (w.shape[1] + w.shape[2])))
                nn.init.zeros_(b)


def single_task(schema, tables):
    """Same split restricted to the first task (for single-task models on every side)."""
    from dynarec.data.schema import Schema
    from dynarec.data.table import TensorTable

    s1 = Schema(features=schema.features, tasks=[schema.tasks[0]], domain=schema.domain, user=schema.user,
                timestamp=schema.timestamp, domain_values=list(schema.domain_values))
    t0 = schema.task_names[0]
    return s1, {k: TensorTable(s1, t.sparse, t.dense, {t0: t.labels[t0]}, t.sequences, t.user)
                for k, t in tables.items()}


def dynarec_params(model: str, hp: HParams, schema, batch_norm: bool) -> dict:
    p = {"embed_dim": hp.embed_dim, "hidden": list(hp.hidden), "dropout": 0.0, "batch_norm": batch_norm}
    if model in ("shared_bottom", "mmoe"):
        p["tower_hidden"] = list(hp.tower_hidden)
    if model == "mmoe":
        p.update(num_experts=hp.num_experts, expert_dropout=0.0, gate="softmax")
    if model == "ppnet":  # FuxiCTR's PPNet: gates on hidden outputs, priors = user/item/author ids
        p.update(gate_hidden_dim=hp.gate_hidden_dim, gate_emb_dim=hp.gate_emb_dim, gate_position="output",
                 gate_init="default",
                 gate_features=[f.name for f in schema.sparse if f.group in ("user", "item", "author")])
    if model.startswith("apg_"):
        p.update(condition_mode="group-wise", condition_groups=["domain"], condition_dim=hp.embed_dim,
                 rank_k=hp.rank_k, overparam_p=hp.overparam_p, hypernet_hidden=list(hp.hypernet_hidden),
                 generate_bias=True)
    if model == "apg_dcnv2":
        p.update(cross_layers=hp.cross_layers, structure="parallel")
    return p


def run_dynarec(model: str, schema, tables, hp: HParams, optim: str, batch_norm: bool, seed: int) -> dict:
    import torch
    from dynarec.train.run import train_model

    trainer = {"epochs": hp.epochs, "batch_size": hp.batch_size, "lr": hp.lr, "patience": hp.patience,
               "progress": False, "grad_clip": 10.0, "threads": torch.get_num_threads()}
    params = dynarec_params(model, hp, schema, batch_norm)
    if optim not in VARIANTS:
        raise ValueError(f"--dynarec-optim: unknown '{optim}' (choose from {', '.join(VARIANTS)})")
    emb_opt, init_std, xavier = VARIANTS[optim]
    if emb_opt:
        trainer.update(embedding_optimizer=emb_opt, embedding_lr=hp.lr)
    if init_std:
        params["embedding_init_std"] = init_std
    import dynarec.train.run as dr

    build = dr.build_model
    if xavier:  # re-initialise right after construction, as FuxiCTR does in its constructor
        dr.build_model = lambda *a, **k: (lambda m: (xavier_linears(m), m)[1])(build(*a, **k))
    try:
        res = train_model(model, schema, tables, params, trainer, seed=seed)
    finally:
        dr.build_model = build
    aucs = {t: res.metrics["auc"][t]["all"] for t in schema.task_names}
    first = next(iter(tables["train"].batches(hp.batch_size, shuffle=False)))
    flops = train_flops_per_row(res.model, first)
    n_params = sum(p.numel() for p in res.model.parameters() if p.requires_grad)
    return {"library": "dynarec", "model": model, "variant": f"{optim}{'+bn' if batch_norm else ''}", "auc": aucs,
            "train_rows_per_s": res.train_rows_per_s, "epochs": len(res.history.epochs),
            "train_seconds": getattr(res.history, "train_seconds", None), "params": n_params,
            "threads": torch.get_num_threads(), "seed": seed, "train_flop_per_row": flops}


def fmt_auc(a: dict) -> str:
    return " / ".join(f"{v:.4f}" for v in a.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a dynarec prepared folder (schema.json + train/valid/test.parquet)")
    src.add_argument("--synthetic", type=int, metavar="ROWS", help="use dynarec's synthetic data with ROWS rows")
    ap.add_argument("--fuxictr-repo", default=os.environ.get("FUXICTR_REPO"),
                    help="checkout of github.com/reczoo/FuxiCTR (model_zoo/ is not in the wheel)")
    ap.add_argument("--models", default="dnn,shared_bottom,mmoe,ppnet,apg_dcnv2")
    ap.add_argument("--libs", default="dynarec,fuxictr,rechub")
    ap.add_argument("--dynarec-optim", default="matched,default", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--hidden", default="256,128")
    ap.add_argument("--tower-hidden", default="64")
    ap.add_argument("--num-experts", type=int, default=4)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--seeds", default="0", help="comma list; every library runs once per seed")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every library (2-core machine)")
    ap.add_argument("--fuxictr-workers", type=int, default=1, help="FuxiCTR DataLoader workers (its loader default: 1)")
    ap.add_argument("--workdir", default=None, help="where the exported anchor inputs go (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write all results to this JSON file")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    hp = HParams(embed_dim=a.embed_dim, hidden=[int(x) for x in a.hidden.split(",") if x],
                 tower_hidden=[int(x) for x in a.tower_hidden.split(",") if x], num_experts=a.num_experts,
                 lr=a.lr, batch_size=a.batch_size, epochs=a.epochs, patience=a.patience)
    if a.data:
        from dynarec.data.prepare import load_prepared

        schema, tables = load_prepared(a.data)
        data_name = Path(a.data).name
    else:
        from dynarec.data.prepare import synthetic_tables

        schema, tables, _ = synthetic_tables(a.synthetic, seed=0)
        data_name = f"synthetic-{a.synthetic}"
    libs = {x.strip() for x in a.libs.split(",")}
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    optims = [x.strip() for x in a.dynarec_optim.split(",") if x.strip()]
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"--models: unknown '{m}' (choose from {', '.join(MODELS)})")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="dynarec-anchors-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"data {data_name}: train {len(tables['train']):,} / valid {len(tables['valid']):,} / "
          f"test {len(tables['test']):,} rows, tasks {schema.task_names}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    print(f"hyper-parameters: {json.dumps(hp.to_dict())}", flush=True)

    results, failures = [], []
    peak = gemm_peak_gflops()  # before any library runs: the machine's clean fp32 GEMM speed
    print(f"fp32 GEMM speed at {torch.get_num_threads()} thread(s), before the runs: {peak:.1f} GFLOP/s", flush=True)

    def attempt(what, fn):
        t, c = time.perf_counter(), time.process_time()
        try:
            r = fn()
            # the whole call's process CPU seconds (training, validation, test): on a shared machine, at
            # --threads 1, the load-robust measure of the same work on every side (wall time is not)
            r["wall_s"], r["cpu_s"] = time.perf_counter() - t, time.process_time() - c
            results.append(r)
            print(f"  {what:<34} AUC {fmt_auc(r['auc'])}  {r['train_rows_per_s']:>10,.0f} rows/s  "
                  f"({r['epochs']} ep, {r['wall_s']:.0f}s wall, {r['cpu_s']:.1f}s CPU)", flush=True)
            return r
        except Exception as e:  # record, keep going with the other libraries
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            failures.append({"what": what, "error": msg, "traceback": traceback.format_exc()})
            print(f"  {what:<34} FAILED: {msg}", flush=True)
            return None

    # which dynarec variants are compared with which anchor (torch-rechub's MLPs always carry BatchNorm; its
    # recipe is dense Adam + N(0, 1e-4) with torch's Linear init, FuxiCTR's adds xavier Linear init)
    shown = {"fuxictr": [o for o in optims if o != "dense_init"],
             "torch-rechub": [o + "+bn" for o in optims if o not in ("exact", "init", "dense")]}
    for seed in seeds:
        print(f"===== seed {seed} =====", flush=True)
        for m in models:
            dyn_name, fx_name, rh_name, multi = MODELS[m]
            s, tb = (schema, tables) if multi else single_task(schema, tables)
            print(f"[{m}] tasks {s.task_names}", flush=True)
            if "dynarec" in libs:
                for o in optims:
                    if o in shown["fuxictr"]:
                        attempt(f"dynarec {dyn_name} ({o})",
                                lambda o=o: run_dynarec(dyn_name, s, tb, hp, o, False, seed))
                    if rh_name and "rechub" in libs and o + "+bn" in shown["torch-rechub"]:
                        attempt(f"dynarec {dyn_name} ({o}+bn)",
                                lambda o=o: run_dynarec(dyn_name, s, tb, hp, o, True, seed))
            if "fuxictr" in libs and fx_name:
                def fx():
                    import fuxictr_runner

                    if not a.fuxictr_repo:
                        raise RuntimeError("--fuxictr-repo not given (FuxiCTR's model_zoo is not in its wheel)")
                    r = fuxictr_runner.run(fx_name, s, tb, hp, a.fuxictr_repo, str(work / f"fuxictr_{m}_{seed}"),
                                           s.task_names, seed=seed, num_workers=a.fuxictr_workers)
                    r.update(model=m, seed=seed)
                    return r
                attempt(f"FuxiCTR {fx_name}", fx)
            if "rechub" in libs and rh_name:
                def rh():
                    import rechub_runner

                    r = rechub_runner.run(rh_name, s, tb, hp, str(work / f"rechub_{m}_{seed}"), s.task_names,
                                          seed=seed)
                    r.update(model=m, seed=seed)
                    return r
                (work / f"rechub_{m}_{seed}").mkdir(parents=True, exist_ok=True)
                attempt(f"torch-rechub {rh_name}", rh)

    # ---- side-by-side table: mean ± std over seeds, ratios, and the FLOP ceiling ---------------------------
    import statistics

    peak_end = gemm_peak_gflops()  # after: a drop says something else took the cores during the runs
    print(f"\nfp32 GEMM speed at {torch.get_num_threads()} thread(s), after the runs: {peak_end:.1f} GFLOP/s",
          flush=True)

    def runs(lib, model, variant=None):
        return [r for r in results if r["library"] == lib and r["model"] == model
                and (variant is None or r.get("variant") == variant)]

    def ms(xs, digits=4):
        if len(xs) == 1:
            return f"{xs[0]:.{digits}f}"
        return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"

    def auc_cell(rs):
        return " / ".join(ms([r["auc"][t] for r in rs]) for t in rs[0]["auc"])

    def rps(rs):
        return statistics.mean(r["train_rows_per_s"] for r in rs)

    lines = [f"### {data_name}: dynarec vs anchors (test AUC per task, mean ± std over seeds {a.seeds}; "
             f"train rows/s, {a.threads} thread(s); GEMM {peak:.0f} GFLOP/s)", "",
             "| model | anchor | anchor AUC | dynarec run | dynarec AUC | ΔAUC | anchor rows/s | dynarec rows/s "
             "| speed-up | FLOP ceiling rows/s | ceiling ÷ anchor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        for lib, label in (("fuxictr", "FuxiCTR"), ("torch-rechub", "torch-rechub")):
            an = runs(lib, m)
            if not an:
                continue
            for v in shown[lib]:
                d = runs("dynarec", m, v)
                if not d:
                    continue
                delta = " / ".join(f"{statistics.mean(r['auc'][t] for r in d) - statistics.mean(r['auc'][t] for r in an):+.4f}"
                                   for t in an[0]["auc"])
                ceiling = peak * 1e9 / statistics.mean(r["train_flop_per_row"] for r in d)
                lines.append(f"| {m} | {label} | {auc_cell(an)} | {v} | {auc_cell(d)} | {delta} | {rps(an):,.0f} "
                             f"| {rps(d):,.0f} | {rps(d) / max(rps(an), 1e-9):.1f}× | {ceiling:,.0f} "
                             f"| {ceiling / max(rps(an), 1e-9):.1f}× |")
    table = "\n".join(lines)
    print()
    print(table)
    if failures:
        print("\nfailed:")
        for f in failures:
            print(f"  {f['what']}: {f['error']}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"data": data_name, "hparams": hp.to_dict(), "threads": a.threads, "seeds": seeds,
                                            "gemm_gflops": peak, "gemm_gflops_after": peak_end, "torch": torch.__version__, "results": results, "failures": failures,
                                            "table": table}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
