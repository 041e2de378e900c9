"""Two-tower retrieval quality: popularity, in-batch softmax + logQ, sampled softmax, SOGram and SAGram
(Krichene et al., ICLR 2019) on MovieLens-100K (leave-last-out), the ML-1M sample and Douban (random split),
exact full-corpus Recall / NDCG with seen items masked, at equal epochs and at equal wall time, plus SOGram's
and SAGram's Gram estimation error against the exact Gramians during training.

    nice -n 10 python benchmarks/retrieval_quality.py --out benchmarks/results/retrieval_quality.jsonl
    python benchmarks/retrieval_quality.py --plot benchmarks/results/retrieval_quality.jsonl   # PNG next to it
    python benchmarks/retrieval_quality.py --report benchmarks/results/retrieval_quality.jsonl \
        benchmarks/results/retrieval_rechub.jsonl                                           # markdown tables

Shared data: ``../shared/data`` relative to the repository, or ``$DYNAREC_DATA``. One thread per run."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("DYNAREC_DATA", ROOT.parent / "shared" / "data"))

DATASETS = {  # name: (loader, raw folder, split, loader options)
    "ml-100k": ("movielens", "movielens/ml-100k", "leave_last_out", {}),
    "ml-1m-sample": ("movielens", "movielens/ml-1m-partial", "random", {}),
    "douban": ("douban", "douban/diffmsr", "random", {}),
}
TOWERS = {"hidden": [], "dim": 64}  # every two-tower method: linear towers on the field embeddings, k = 64
METHODS = {  # name: (model, params); softmax losses score cosine / 0.05, Gramian ones the paper's plain dot
    "popularity": ("popularity", {}),
    "inbatch_logq": ("two_tower", {**TOWERS, "loss": "inbatch"}),
    "sampled": ("two_tower", {**TOWERS, "loss": "sampled", "negatives": 256}),
    "sogram": ("two_tower", {**TOWERS, "loss": "sogram", "alpha": 0.1, "lam": 10.0}),
    "sagram": ("two_tower", {**TOWERS, "loss": "sagram", "beta": 1.0, "lam": 10.0}),
    "sampled_pepnet": ("two_tower", {**TOWERS, "loss": "sampled", "negatives": 256, "user_tower": "pepnet"}),
}
DEFAULT_METHODS = "popularity,inbatch_logq,sampled,sogram,sagram"
TRAINER = {"epochs": 10, "batch_size": 1024, "lr": 1e-3, "embedding_lr": 0.2, "patience": 100, "progress": False,
           "threads": 1}


def prepare(name: str, work: Path):
    from dynarec.datasets import prepare_input
    from dynarec.retrieval.train import load_retrieval_data

    loader, raw, split, opts = DATASETS[name]
    out = work / name
    if not (out / "schema.json").exists():
        prepare_input(loader, out, raw=str(SHARED / raw), options=opts, split=split, seed=0)
    return load_retrieval_data(out)


class Curve:
    """Test recall@50 / @10 and NDCG@10 after every epoch against cumulative training seconds (evaluation
    time excluded), and the Gram estimation error every ``every`` steps (Gramian losses)."""

    def __init__(self, data, every: int = 10):
        self.data, self.every, self.points, self.gram_error, self.t, self.steps = data, every, [], [], 0.0, 0
        self.overhead = 0.0  # seconds of measurement inside the epoch, taken off its training time

    def on_batch_end(self, loop, rows, loss):
        self.steps += 1
        st = loop.step
        if not self.every or self.steps % self.every or "u" not in st.state:
            return
        t0 = time.perf_counter()
        from dynarec.retrieval.evaluate import corpus_vectors
        from dynarec.retrieval.gramian import gramian, relative_error

        q, v = corpus_vectors(loop.model, self.data)
        loop.model.train()
        est_u, est_v = st.state["u"], st.state["v"]
        gu = est_u.gram if hasattr(est_u, "gram") else est_u.gram_avg
        gv = est_v.gram if hasattr(est_v, "gram") else est_v.gram_avg
        d = self.data  # exact: the Gramians of the pairs' queries (both estimators' target) and of the corpus
        exact_u = gramian(q[d.train_query])
        self.gram_error.append({"step": self.steps, "u": relative_error(gu, exact_u),
                                "v": relative_error(gv, gramian(v))})
        self.overhead += time.perf_counter() - t0

    def on_epoch_end(self, loop, row):
        from dynarec.retrieval.evaluate import evaluate_retrieval

        self.t += row["seconds"] - self.overhead
        self.overhead = 0.0
        m = evaluate_retrieval(loop.model, self.data, "test")
        self.points.append({"epoch": row["epoch"], "seconds": self.t, "recall@50": m["recall@50"]["all"],
                            "recall@10": m["recall@10"]["all"], "ndcg@10": m["ndcg@10"]["all"]})


def run_one(dataset: str, method: str, seed: int, data, epochs: int, gram_every: int) -> dict:
    from dynarec.models import build_model
    from dynarec.retrieval.evaluate import evaluate_retrieval
    from dynarec.retrieval.step import RetrievalStep
    from dynarec.train.callbacks import EarlyStopping
    from dynarec.train.config import TrainerConfig
    from dynarec.retrieval.train import RetrievalValidation
    from dynarec.train.loop import Loop

    schema = data.schema
    model_name, params = METHODS[method]
    torch.manual_seed(seed)
    model = build_model(model_name, schema, params)
    cfg = TrainerConfig(**{**TRAINER, "epochs": epochs})
    t0 = time.perf_counter()
    curve = Curve(data, gram_every)
    if model_name == "popularity":
        model.fit_counts(data.item_ids[data.train_item])
        best = 0
    else:
        step = RetrievalStep(model, cfg, data, torch.Generator().manual_seed(seed + 1))
        cbs = [RetrievalValidation(data), EarlyStopping(cfg.patience), curve]
        hist = Loop(model, step, cbs).fit(data.train, cfg.epochs, cfg.batch_size, seed, cfg.threads)
        best = hist.best_epoch
    m = evaluate_retrieval(model, data, "test")
    return {"dataset": dataset, "method": method, "seed": seed, "epochs": epochs, "best_epoch": best,
            "train_seconds": curve.t, "wall_seconds": time.perf_counter() - t0,
            "recall@10": m["recall@10"]["all"], "recall@50": m["recall@50"]["all"], "ndcg@10": m["ndcg@10"]["all"],
            "per_domain_recall@50": {k: v for k, v in m["recall@50"].items() if k != "all"},
            "curve": curve.points, "gram_error": curve.gram_error}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/retrieval_quality.json")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"from {', '.join(METHODS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=TRAINER["epochs"])
    ap.add_argument("--gram-every", type=int, default=10, help="steps between Gram error measurements (0: off)")
    ap.add_argument("--work", default=None, help="folder for the prepared data (default: a temp folder)")
    ap.add_argument("--plot", help="write the recall@50-vs-seconds PNG of this results file and exit")
    ap.add_argument("--step-ms", metavar="DATASET", help="time one training step of each method (alone on the "
                    "machine: a timing run) and exit")
    ap.add_argument("--report", nargs="+", help="print the markdown tables of these results files and exit")
    a = ap.parse_args()
    if a.plot:
        return plot(a.plot)
    if a.step_ms:
        return step_ms(a.step_ms, Path(a.work or tempfile.mkdtemp(prefix="dynarec-retrieval-")), a.methods)
    if a.report:
        from retrieval_report import report

        print(report([json.loads(x) for f in a.report for x in Path(f).read_text().splitlines()]))
        return 0
    torch.set_num_threads(1)
    work = Path(a.work or tempfile.mkdtemp(prefix="dynarec-retrieval-"))
    out = Path(a.out)
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    done = {(r["dataset"], r["method"], r["seed"]) for r in rows}
    for ds in a.datasets.split(","):
        if not (SHARED / DATASETS[ds][1]).exists():
            print(f"skip {ds}: {SHARED / DATASETS[ds][1]} not found", flush=True)
            continue
        _, _, data = prepare(ds, work)
        print(f"{ds}: {len(data.train):,} train pairs, {len(data.item_ids):,} items, "
              f"{len(data.evals['test'].queries):,} test queries, dropped {data.dropped}", flush=True)
        for method in a.methods.split(","):
            for seed in map(int, a.seeds.split(",")):
                if (ds, method, seed) in done:
                    continue
                r = run_one(ds, method, seed, data, a.epochs, a.gram_every)
                print(f"{ds:13s} {method:13s} seed {seed}: R@10 {r['recall@10']:.4f} R@50 {r['recall@50']:.4f} "
                      f"NDCG@10 {r['ndcg@10']:.4f} ({r['train_seconds']:.1f} s train)", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    return 0


def step_ms(dataset: str, work: Path, methods: str, steps: int = 30) -> int:
    """Median milliseconds of one training step (batch 1024, 1 thread) of each two-tower method."""
    from dynarec.models import build_model
    from dynarec.retrieval.step import RetrievalStep
    from dynarec.train.config import TrainerConfig

    torch.set_num_threads(1)
    _, _, data = prepare(dataset, work)
    batches = list(data.train.batches(TRAINER["batch_size"], shuffle=True, generator=torch.Generator().manual_seed(0)))
    for method in methods.split(","):
        name, params = METHODS[method]
        if name != "two_tower":
            continue
        torch.manual_seed(0)
        st = RetrievalStep(build_model(name, data.schema, params), TrainerConfig(**TRAINER), data)
        times = []
        for i in range(steps + 5):
            t0 = time.perf_counter()
            st(batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
        times = sorted(times[5:])
        print(f"{dataset} {method:15s} {1000 * times[len(times) // 2]:7.1f} ms/step (median of {steps}, batch "
              f"{TRAINER['batch_size']}, 1 thread)", flush=True)
    return 0


def plot(path: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in Path(path).read_text().splitlines()]
    rechub = Path(path).with_name("retrieval_rechub.jsonl")
    if rechub.exists():
        rows += [json.loads(x) for x in rechub.read_text().splitlines()]
    sets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, ds in zip(axes[0], sets):
        for c, method in enumerate(list(METHODS) + ["rechub_dssm", "rechub_youtubednn"]):
            rs = [r for r in rows if r["dataset"] == ds and r["method"] == method and r["curve"]]
            if not rs:
                continue
            n = min(len(r["curve"]) for r in rs)
            x = [sum(r["curve"][i]["seconds"] for r in rs) / len(rs) for i in range(n)]
            y = [sum(r["curve"][i]["recall@50"] for r in rs) / len(rs) for i in range(n)]
            ax.plot(x, y, marker="o", ms=3, label=method, color=f"C{c}")  # one colour per method
        for r in rows:
            if r["dataset"] == ds and r["method"] == "popularity":
                ax.axhline(r["recall@50"], color="grey", ls="--", lw=1, label="popularity")
                break
        ax.set_title(f"{ds}: test recall@50 (mean of seeds)")
        ax.set_xlabel("training seconds (1 thread)")
        ax.set_ylabel("recall@50")
        ax.legend(fontsize=7)
    png = Path(path).with_suffix(".png")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
