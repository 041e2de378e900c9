"""Sparse-domain stress study (issue 29): where do dynamic-weight models pay off as a domain gets rare?

For one domain at a time, keep 100 %, 20 %, 5 % and 1 % of its TRAINING rows (valid / test rows and the
other domains untouched), train each model with its DEFAULT keys, and report every domain's test AUC with
a 95 % DeLong interval, the gain over dnn (paired DeLong on the same test rows) and a plot of that gain
against the downsampled domain's training rows. The subsample is drawn per seed, so seeds cover both the
training noise and which rows were kept. ``--datasets synthetic`` is the control: the built-in generator's
per-domain truth (domain weights that depart from the shared ones more the smaller the domain) at the
same downsampling, with the Bayes-optimal AUC of each domain as the ceiling.

Full study (hours of CPU)::

    python benchmarks/sparse_domains.py --datasets ml100k douban synthetic --seeds 0 1 2 3 4

Reduced run of docs/model_choice.md::

    python benchmarks/sparse_domains.py --datasets ml100k --domains 'age<25' --fractions 1 0.05 0.01 \
        --models dnn star pepnet apg_dnn --seeds 0 1 --epochs 3 --out benchmarks/results/sparse_domains_reduced

Outputs ``OUT.json`` (every run; a rerun skips finished groups), ``OUT.md`` (tables) and ``OUT.png``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from study_common import (start, run_study, study_parser, cut_split, fail, fmt, load_study_data, score_slices,
                          summarise, train_predict)

FRACTIONS = (1.0, 0.2, 0.05, 0.01)


def run(a) -> dict:
    out, res, models, trainer = start(a)
    for ds in a.datasets:
        schema, tables, truth = load_study_data(ds, a.data_seed, a.synthetic_rows)
        task = a.task or schema.task_names[0]
        names = list(schema.domain_values)
        test, train = tables["test"], tables["train"]
        y = test.labels[task].double().numpy()
        tdom = test.domain.numpy()
        slices = {"all": np.ones(len(y), bool)} | {n: tdom == i for i, n in enumerate(names, start=1)}
        meta = {"task": task, "domains": names, "trainer": trainer, "data_seed": a.data_seed,
                "train_rows": {n: int((train.domain == i).sum()) for i, n in enumerate(names, start=1)}}
        if truth is not None:  # the ceiling: AUC of the true probabilities per domain
            p = np.asarray(truth["test"][f"p_{task}"], np.float64)
            meta["bayes"] = score_slices(y, {"bayes": p}, slices)["bayes"]
        res["meta"][ds] = meta
        for dom in a.domains or names:
            if dom not in names:
                fail(f"--domains: '{dom}' is not a domain of {ds} ({', '.join(names)})")
            for frac in a.fractions:
                for s in a.seeds:
                    key = f"{ds}/{dom}/{frac:g}/seed={s}"
                    if key in res["runs"] and set(models) <= set(res["runs"][key]["models"]):
                        continue
                    split, kept = cut_split(tables, names.index(dom) + 1, frac, seed=1000 + s)
                    preds, secs = {}, {}
                    for m in models:
                        t0 = time.perf_counter()
                        preds[m] = train_predict(m, schema, split, trainer, s, task)
                        secs[m] = time.perf_counter() - t0
                    res["runs"][key] = {"dataset": ds, "domain": dom, "fraction": frac, "seed": s,
                                        "train_rows": kept, "seconds": secs,
                                        "models": score_slices(y, preds, slices)}
                    out.write_text(json.dumps(res, indent=1))
                    sc = res["runs"][key]["models"]
                    print(f"{key} ({kept} train rows): " + ", ".join(
                        f"{m} {sc[m][dom]['auc']:.4f}" for m in models) + f" ({sum(secs.values()):.0f}s)",
                        flush=True)
    return res


def groups(res: dict) -> dict:
    """{(dataset, domain): {fraction: {model: [per-seed entry of the downsampled domain + train_rows]}}}"""
    g = {}
    for r in res["runs"].values():
        for m, per in r["models"].items():
            e = dict(per[r["domain"]], train_rows=r["train_rows"])
            g.setdefault((r["dataset"], r["domain"]), {}).setdefault(r["fraction"], {}).setdefault(m, []).append(e)
    return g


def report(res: dict) -> str:
    lines = ["AUC of the downsampled domain on its (untouched) test rows: seed mean [95 % interval]; gain over "
             "dnn in AUC points (x100), paired on the same rows. Interval variance = mean DeLong variance + "
             "seed variance of the mean."]
    for (ds, dom), per_frac in groups(res).items():
        meta = res["meta"][ds]
        fr = sorted(per_frac, reverse=True)
        rows = {f: int(np.mean([e["train_rows"] for e in per_frac[f]["dnn"]])) for f in fr}
        n_test = per_frac[fr[0]]["dnn"][0]["n"]
        lines += ["", f"### {ds}: domain {dom} downsampled (test rows {n_test}, task {meta['task']})", ""]
        if "bayes" in meta:
            lines.append(f"Bayes-optimal AUC of {dom}: {meta['bayes'][dom]['auc']:.4f}\n")
        lines.append("| model | " + " | ".join(f"{100 * f:g} % ({rows[f]} rows)" for f in fr) + " |")
        lines.append("|---" * (len(fr) + 1) + "|")
        models = list(dict.fromkeys(m for f in fr for m in per_frac[f]))
        for m in models:
            lines.append(f"| {m} AUC | " + " | ".join(fmt(summarise(per_frac[f].get(m, []))) for f in fr) + " |")
        for m in models[1:]:
            lines.append(f"| {m} gain | " + " | ".join(
                fmt(summarise(per_frac[f].get(m, []), "gain", "gain_var"), True) for f in fr) + " |")
        if "bayes" in meta:  # the control: the truth gives this domain its own weights, so dynamic models should win
            wins = {m: [f for f in fr if (summarise(per_frac[f].get(m, []), "gain", "gain_var")["lo"] or 0) > 0]
                    for m in models[1:]}
            lines.append("\nControl: gain interval above 0 at " + "; ".join(
                f"{m}: {', '.join(f'{100 * f:g} %' for f in w) or 'no fraction'}" for m, w in wins.items()))
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = groups(res)
    fig, axes = plt.subplots(1, len(g), figsize=(4.5 * len(g), 3.6), squeeze=False)
    for ax, ((ds, dom), per_frac) in zip(axes[0], g.items()):
        fr = sorted(per_frac)
        models = [m for m in dict.fromkeys(m for f in fr for m in per_frac[f]) if m != "dnn"]
        for k, m in enumerate(models):
            xs, mean, lo, hi = [], [], [], []
            for f in fr:
                s = summarise(per_frac[f].get(m, []), "gain", "gain_var")
                if s["mean"] is not None:
                    xs.append(np.mean([e["train_rows"] for e in per_frac[f][m]]) * (1 + 0.04 * (k - len(models) / 2)))
                    mean.append(100 * s["mean"])
                    lo.append(100 * (s["mean"] - s["lo"]))
                    hi.append(100 * (s["hi"] - s["mean"]))
            ax.errorbar(xs, mean, yerr=[lo, hi], marker="o", capsize=3, label=m)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"training rows of {dom}")
        ax.set_ylabel("AUC gain over dnn (points, 95 % CI)")
        ax.set_title(f"{ds}: {dom}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = study_parser(__doc__, "benchmarks/results/sparse_domains")
    ap.add_argument("--domains", nargs="+", help="domains to downsample, one at a time (default: every domain)")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    run_study(ap.parse_args(argv), run, report, plot)


if __name__ == "__main__":
    main()
