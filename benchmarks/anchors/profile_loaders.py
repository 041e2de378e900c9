"""Where the training time goes, per library: one epoch of the data pipeline alone (no model) next to one
training epoch, and torch.profiler's top operators for dynarec's step.

    .venv-anchors/bin/python benchmarks/anchors/profile_loaders.py --data PREPARED_DIR \
        --fuxictr-repo DIR [--model mmoe] [--threads 2] [--batch-size 1024]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

from common import HParams  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--fuxictr-repo", required=True)
    ap.add_argument("--model", default="mmoe", choices=["shared_bottom", "mmoe"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from dynarec.data.prepare import load_prepared

    schema, tables = load_prepared(a.data)
    tr = tables["train"]
    n = len(tr)
    hp = HParams(batch_size=a.batch_size, epochs=1)
    work = Path(tempfile.mkdtemp(prefix="anchor-prof-"))
    out = {}

    # dynarec: batching alone, then one epoch of training
    t = time.perf_counter()
    for _ in tr.batches(hp.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)):
        pass
    out["dynarec data"] = time.perf_counter() - t
    from run import dynarec_params
    from dynarec.train.run import train_model

    trainer = {"epochs": 1, "batch_size": hp.batch_size, "lr": hp.lr, "progress": False}
    r = train_model(a.model, schema, tables, dynarec_params(a.model, hp, schema, False), trainer)
    out["dynarec train"] = n / r.train_rows_per_s

    # FuxiCTR: Ray Data parquet loader alone, then one epoch of fit
    import fuxictr_runner
    from fuxictr.pytorch.dataloaders import RankDataLoader

    fx_name = {"shared_bottom": "ShareBottom", "mmoe": "MMoE"}[a.model]
    fres = fuxictr_runner.run(fx_name, schema, tables, hp, a.fuxictr_repo, str(work / "fx"), schema.task_names)
    out["FuxiCTR train"] = n / fres["train_rows_per_s"]
    fm_dir = work / "fx" / "dynarec_split"
    from fuxictr.features import FeatureMap

    fm = FeatureMap("dynarec_split", str(fm_dir))
    fm.load(str(fm_dir / "feature_map.json"), {"embedding_dim": hp.embed_dim})
    gen, _ = RankDataLoader(fm, stage="train", train_data=str(fm_dir / "train.parquet"), batch_size=hp.batch_size,
                            shuffle=True, data_format="parquet", num_workers=1)
    t = time.perf_counter()
    for _ in gen:
        pass
    out["FuxiCTR data"] = time.perf_counter() - t

    # torch-rechub: per-row Dataset + default collate alone, then one epoch of fit
    import rechub_runner
    from torch_rechub.utils.data import DataGenerator

    rh_name = {"shared_bottom": "SharedBottom", "mmoe": "MMOE"}[a.model]
    (work / "rh").mkdir()
    rres = rechub_runner.run(rh_name, schema, tables, hp, str(work / "rh"), schema.task_names)
    out["torch-rechub train"] = n / rres["train_rows_per_s"]
    x, y = rechub_runner.export(schema, tr, schema.task_names)
    dl, _, _ = DataGenerator(x, y).generate_dataloader(x_val=x, y_val=y, x_test=x, y_test=y, batch_size=hp.batch_size)
    t = time.perf_counter()
    for _ in dl:
        pass
    out["torch-rechub data"] = time.perf_counter() - t

    print(f"{a.model}, {n:,} train rows, batch {hp.batch_size}, {a.threads} threads — seconds per epoch")
    for lib in ("dynarec", "FuxiCTR", "torch-rechub"):
        d, tt = out[f"{lib} data"], out[f"{lib} train"]
        print(f"  {lib:<13} train epoch {tt:6.2f} s   data pipeline alone {d:6.2f} s ({100 * d / tt:4.0f}%)")

    # dynarec: top operators of 10 training steps
    from torch.profiler import ProfilerActivity, profile

    from dynarec.models import build_model

    model = build_model(a.model, schema, dynarec_params(a.model, hp, schema, False))
    from dynarec.train.config import TrainerConfig
    from dynarec.train.optim import build_optimizers

    opts, _ = build_optimizers(model, TrainerConfig())
    batches = list(b for _, b in zip(range(12), tr.batches(hp.batch_size, shuffle=True)))
    for b in batches[:2]:
        out_ = model(b)
        sum(torch.nn.functional.binary_cross_entropy_with_logits(out_[k], b.labels[k]) for k in out_).backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[2:]:
            for o in opts:
                o.zero_grad()
            out_ = model(b)
            sum(torch.nn.functional.binary_cross_entropy_with_logits(out_[k], b.labels[k]) for k in out_).backward()
            for o in opts:
                o.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
