"""Cold-user study (issue 29; APG's and POSO's claim that the coldest users gain most).

Test users are bucketed by their number of TRAINING interactions (0-5, 6-20, 21-100, > 100); each model is
trained with its DEFAULT keys over seeds and scored per bucket: test AUC with a 95 % DeLong interval and the
gain over dnn (paired DeLong on the same test rows). The split is fixed by ``--data-seed``, so the buckets
are the same for every model and seed.

Full study::

    python benchmarks/cold_users.py --datasets ml100k douban --seeds 0 1 2 3 4

Reduced run of docs/model_choice.md::

    python benchmarks/cold_users.py --datasets ml100k douban_gadtcdr --models dnn star pepnet apg_dnn \
        --seeds 0 1 --epochs 3 --out benchmarks/results/cold_users_reduced

Outputs ``OUT.json`` (every run; a rerun skips finished ones), ``OUT.md`` (tables) and ``OUT.png``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from study_common import (start, BUCKETS, bucket_name, fail, fmt, load_study_data, run_study, score_slices, study_parser,
                          summarise, train_predict, user_buckets)


def run(a) -> dict:
    out, res, models, trainer = start(a)
    for ds in a.datasets:
        schema, tables, _ = load_study_data(ds, a.data_seed, a.synthetic_rows)
        task = a.task or schema.task_names[0]
        train, test = tables["train"], tables["test"]
        if test.user is None:
            fail(f"{ds}: the schema names no user column, so users cannot be bucketed")
        b = user_buckets(train.user.numpy(), test.user.numpy())
        y = test.labels[task].double().numpy()
        names = [bucket_name(x) for x in BUCKETS]
        slices = {"all": np.ones(len(y), bool)} | {n: b == i for i, n in enumerate(names)}
        tu = test.user.numpy()
        res["meta"][ds] = {"task": task, "trainer": trainer, "data_seed": a.data_seed,
                           "test_rows": {n: int(m.sum()) for n, m in slices.items()},
                           "test_users": {n: int(len(np.unique(tu[m]))) for n, m in slices.items()},
                           "test_positives": {n: int(y[m].sum()) for n, m in slices.items()}}
        for s in a.seeds:
            key = f"{ds}/seed={s}"
            if key in res["runs"] and set(models) <= set(res["runs"][key]["models"]):
                continue
            preds, secs = {}, {}
            for m in models:
                t0 = time.perf_counter()
                preds[m] = train_predict(m, schema, tables, trainer, s, task)
                secs[m] = time.perf_counter() - t0
            res["runs"][key] = {"dataset": ds, "seed": s, "seconds": secs, "models": score_slices(y, preds, slices)}
            out.write_text(json.dumps(res, indent=1))
            sc = res["runs"][key]["models"]
            print(f"{key}: " + ", ".join(f"{m} {sc[m]['all']['auc']:.4f}" for m in models)
                  + f" ({sum(secs.values()):.0f}s)", flush=True)
    return res


def per_bucket(res: dict) -> dict:
    """{dataset: {model: {bucket: [per-seed entries]}}}"""
    g = {}
    for r in res["runs"].values():
        for m, per in r["models"].items():
            for bk, e in per.items():
                g.setdefault(r["dataset"], {}).setdefault(m, {}).setdefault(bk, []).append(e)
    return g


def report(res: dict) -> str:
    lines = ["Test AUC per user bucket (training interactions of the user): seed mean [95 % interval]; gain "
             "over dnn in AUC points (x100), paired on the same rows. Interval variance = mean DeLong variance "
             "+ seed variance of the mean. '–': too few rows of a class in the bucket."]
    for ds, per_model in per_bucket(res).items():
        meta = res["meta"][ds]
        cols = ["all"] + [bucket_name(x) for x in BUCKETS]
        lines += ["", f"### {ds} (task {meta['task']})", ""]
        lines.append("| model | " + " | ".join(
            f"{c} ({meta['test_rows'][c]} rows, {meta['test_users'][c]} users)" for c in cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        models = list(per_model)
        for m in models:
            lines.append(f"| {m} AUC | " + " | ".join(fmt(summarise(per_model[m].get(c, []))) for c in cols) + " |")
        for m in [m for m in models if m != "dnn"]:
            lines.append(f"| {m} gain | " + " | ".join(
                fmt(summarise(per_model[m].get(c, []), "gain", "gain_var"), True) for c in cols) + " |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = per_bucket(res)
    fig, axes = plt.subplots(1, len(g), figsize=(5 * len(g), 3.6), squeeze=False)
    cols = [bucket_name(x) for x in BUCKETS]
    for ax, (ds, per_model) in zip(axes[0], g.items()):
        models = [m for m in per_model if m != "dnn"]
        w = 0.8 / max(1, len(models))
        for k, m in enumerate(models):
            s = [summarise(per_model[m].get(c, []), "gain", "gain_var") for c in cols]
            ok = [i for i, x in enumerate(s) if x["mean"] is not None]
            mean = np.array([100 * s[i]["mean"] for i in ok])
            err = [[100 * (s[i]["mean"] - s[i]["lo"]) for i in ok], [100 * (s[i]["hi"] - s[i]["mean"]) for i in ok]]
            ax.bar(np.array(ok) + (k - (len(models) - 1) / 2) * w, mean, w, yerr=err, capsize=2, label=m)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(cols)), [f"{c}\n({res['meta'][ds]['test_rows'][c]} rows)" for c in cols], fontsize=8)
        ax.set_xlabel("user's training interactions")
        ax.set_ylabel("AUC gain over dnn (points, 95 % CI)")
        ax.set_title(ds, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = study_parser(__doc__, "benchmarks/results/cold_users")
    run_study(ap.parse_args(argv), run, report, plot)


if __name__ == "__main__":
    main()
