"""torch-rechub 0.9.0 matching models (DSSM, YoutubeDNN) on dynarec's retrieval split, side by side with
benchmarks/retrieval_quality.py: the same prepared data, the same user / item input features, torch-rechub's
own models, trainer (``MatchTrainer``) and losses, and dynarec's exact full-corpus metrics with seen items
masked (torch-rechub's own evaluation uses an approximate Annoy index without that mask).

    bash benchmarks/anchors/setup.sh       # .venv-anchors with torch-rechub 0.9.0 and dynarec (editable)
    nice -n 10 .venv-anchors/bin/python benchmarks/anchors/rechub_retrieval.py \\
        --out benchmarks/results/retrieval_quality.jsonl

Methods (torch-rechub's example settings where it has them):
* ``rechub_dssm``: DSSM, point-wise BCE on sigmoid(cosine) with 3 uniform negatives per positive (mode 0);
* ``rechub_dssm_inbatch`` (not in the default set: recall@50 0.078 on MovieLens-100K after 2 epochs): DSSM with
  ``in_batch_neg=True`` (softmax over in-batch cosine scores, no temperature);
* ``rechub_youtubednn``: YoutubeDNN, list-wise softmax over the positive and 3 uniform negatives, temperature 0.02.
The epoch with the best validation recall@50 is kept, as for dynarec's runs."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
NEG = 3


def features(schema, embed_dim: int):
    from torch_rechub.basic.features import SequenceFeature, SparseFeature

    user, item = [], []
    for f in schema.sparse:
        side = item if f.group in ("item", "author") else user if f.group in ("user", "domain") else None
        if side is not None:
            side.append(SparseFeature(f.name, f.vocab_size, embed_dim=embed_dim))
    for f in schema.sequences:
        if f.group in ("item", "author"):
            item.append(SequenceFeature(f.name, f.vocab_size, embed_dim=embed_dim, pooling="mean",
                                        shared_with=None))
    return user, item


def columns(table) -> dict:
    d = {f.name: table.sparse[:, i] for i, f in enumerate(table.schema.sparse)}
    d.update(table.sequences)
    return d


def batches(x: dict, y: torch.Tensor, batch_size: int, g: torch.Generator) -> list:
    """Shuffled (x_dict, y) mini-batches by tensor slicing (what MatchTrainer iterates; a per-row DataLoader
    would make the data pipeline, not the model, the cost)."""
    order = torch.randperm(len(y), generator=g)
    return [({k: v[idx] for k, v in x.items()}, y[idx]) for idx in order.split(batch_size)]


def train_rows(data, method: str, g: torch.Generator, item_names: list[str], item_id: str):
    """x, y of one epoch's training rows (negatives redrawn every epoch)."""
    x, n, n_items = columns(data.train), len(data.train), len(data.item_ids)
    if method == "rechub_dssm_inbatch":
        return x, torch.ones(n)
    items = columns(data.items)
    neg = torch.randint(0, n_items, (n, NEG), generator=g)
    if method == "rechub_youtubednn":  # positive id + a sequence feature of negative ids, label = index 0
        return {**x, "neg_items": items[item_id][neg]}, torch.zeros(n, dtype=torch.long)
    rows = torch.cat([torch.arange(n)] + [torch.arange(n)] * NEG)
    xs = {k: v[rows] for k, v in x.items()}
    for k in item_names:  # negative rows: the positive's user, a uniformly drawn item's features
        xs[k][n:] = items[k][neg.T.reshape(-1)]
    return xs, torch.cat([torch.ones(n), torch.zeros(n * NEG)])


def build(method: str, user, item, schema, item_id: str):
    from torch_rechub.basic.features import SequenceFeature
    from torch_rechub.models.matching import DSSM, YoutubeDNN

    tower = {"dims": [64], "activation": "relu"}  # one layer to k = 64, as dynarec's towers
    if method == "rechub_youtubednn":  # item tower = the item id embedding, width k = 64
        from torch_rechub.basic.features import SparseFeature

        id_feat = [SparseFeature(item_id, schema.feature(item_id).vocab_size, embed_dim=64)]
        neg = [SequenceFeature("neg_items", schema.feature(item_id).vocab_size, embed_dim=64,
                               pooling="concat", shared_with=item_id)]
        return YoutubeDNN(user, id_feat, neg, user_params=tower, temperature=0.02)
    return DSSM(user, item, user_params=tower, item_params=tower, temperature=0.02)


@torch.no_grad()
def vectors(model, data):
    model.eval()
    model.mode = "user"
    q = model(columns(data.queries))
    model.mode = "item"
    v = model(columns(data.items))
    model.mode = None
    model.train()
    return q, v


def run_one(ds: str, method: str, seed: int, data, epochs: int) -> dict:
    from torch_rechub.trainers import MatchTrainer

    from dynarec.retrieval.dataset import item_feature
    from dynarec.retrieval.evaluate import evaluate_retrieval

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    schema = data.schema
    user, item = features(schema, 16)
    item_id = item_feature(schema)
    model = build(method, user, item, schema, item_id)
    mode = 2 if method == "rechub_youtubednn" else 0
    tr = MatchTrainer(model, mode=mode, in_batch_neg=method == "rechub_dssm_inbatch", n_epoch=epochs,
                      optimizer_params={"lr": 1e-3, "weight_decay": 1e-6}, device="cpu",
                      model_path=tempfile.mkdtemp(prefix="rechub-"), sampler_seed=seed)
    names = [f.name for f in item]
    best, best_state, curve, t = -1.0, None, [], 0.0
    best_epoch = 0
    for ep in range(1, epochs + 1):
        x, y = train_rows(data, method, g, names, item_id)
        t0 = time.perf_counter()
        loader = batches(x, y, 1024, g)
        tr.train_one_epoch(loader)
        t += time.perf_counter() - t0
        q, v = vectors(model, data)
        val = evaluate_retrieval(None, data, "valid", vectors=(q, v))["recall@50"]["all"]
        te = evaluate_retrieval(None, data, "test", vectors=(q, v))
        curve.append({"epoch": ep, "seconds": t, "recall@50": te["recall@50"]["all"],
                      "recall@10": te["recall@10"]["all"], "ndcg@10": te["ndcg@10"]["all"]})
        if val > best:
            best, best_epoch = val, ep
            best_state = {k: w.clone() for k, w in model.state_dict().items()}
    model.load_state_dict(best_state)
    m = evaluate_retrieval(None, data, "test", vectors=vectors(model, data))
    return {"dataset": ds, "method": method, "seed": seed, "epochs": epochs, "best_epoch": best_epoch,
            "train_seconds": t, "recall@10": m["recall@10"]["all"], "recall@50": m["recall@50"]["all"],
            "ndcg@10": m["ndcg@10"]["all"],
            "per_domain_recall@50": {k: w for k, w in m["recall@50"].items() if k != "all"},
            "curve": curve, "gram_error": [], "library": "torch-rechub 0.9.0"}


def main() -> int:
    import retrieval_quality as rq

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/retrieval_quality.jsonl")
    ap.add_argument("--datasets", default=",".join(rq.DATASETS))
    ap.add_argument("--methods", default="rechub_dssm,rechub_youtubednn")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=rq.TRAINER["epochs"])
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(a.work or tempfile.mkdtemp(prefix="dynarec-retrieval-"))
    out = Path(a.out)
    done = {(r["dataset"], r["method"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())} \
        if out.exists() else set()
    for ds in a.datasets.split(","):
        if not (rq.SHARED / rq.DATASETS[ds][1]).exists():
            continue
        _, _, data = rq.prepare(ds, work)
        for method in a.methods.split(","):
            for seed in map(int, a.seeds.split(",")):
                if (ds, method, seed) in done:
                    continue
                r = run_one(ds, method, seed, data, a.epochs)
                print(f"{ds:13s} {method:20s} seed {seed}: R@10 {r['recall@10']:.4f} R@50 {r['recall@50']:.4f} "
                      f"NDCG@10 {r['ndcg@10']:.4f} ({r['train_seconds']:.1f} s train)", flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
