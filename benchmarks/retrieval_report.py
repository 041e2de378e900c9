"""Markdown tables of benchmarks/retrieval_quality.py's results (``--report``): equal epochs (mean ± std over
seeds), equal training time, time to reach in-batch softmax's recall@50, and the Gram estimation error."""
from __future__ import annotations

import statistics as st

ORDER = ["popularity", "inbatch_logq", "sampled", "sogram", "sagram", "sampled_pepnet", "rechub_dssm",
         "rechub_dssm_inbatch", "rechub_youtubednn"]


def _ms(xs) -> str:
    return f"{st.mean(xs):.4f} ± {st.pstdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def _groups(rows):
    out: dict = {}
    for r in rows:
        out.setdefault(r["dataset"], {}).setdefault(r["method"], []).append(r)
    return out


def _at(curve, t):
    """recall@50 of the last epoch finished within t seconds (None: not one epoch)."""
    done = [p for p in curve if p["seconds"] <= t + 1e-9]
    return done[-1]["recall@50"] if done else None


def report(rows) -> str:
    lines = []
    for ds, by in _groups(rows).items():
        methods = [m for m in ORDER if m in by]
        seeds = max(len(v) for v in by.values())
        lines += [f"#### {ds} (seeds: {seeds}; {by[methods[0]][0]['epochs']} epochs, best validation epoch kept)", "",
                  "| method | recall@10 | recall@50 | ndcg@10 | train s | best epoch |", "|---|---|---|---|---|---|"]
        for m in methods:
            rs = by[m]
            lines.append(f"| {m} | {_ms([r['recall@10'] for r in rs])} | {_ms([r['recall@50'] for r in rs])} | "
                         f"{_ms([r['ndcg@10'] for r in rs])} | {st.mean(r['train_seconds'] for r in rs):.1f} | "
                         f"{', '.join(str(r['best_epoch']) for r in rs)} |")
        curved = [m for m in methods if all(r["curve"] for r in by[m])]
        if "inbatch_logq" in by and curved:
            budget = min(st.mean(r["curve"][-1]["seconds"] for r in by[m]) for m in curved)
            target = st.mean(r["recall@50"] for r in by["inbatch_logq"])
            lines += ["", f"Equal training time ({budget:.1f} s, the shortest full run) and time to reach in-batch "
                      f"softmax's recall@50 ({target:.4f}), test recall@50 after each epoch, mean over seeds:", "",
                      "| method | recall@50 at the budget | seconds to reach in-batch's recall@50 | epochs to reach it |",
                      "|---|---|---|---|"]
            for m in curved:
                at = [_at(r["curve"], budget) for r in by[m]]
                at_s = _ms([x for x in at if x is not None]) if any(x is not None for x in at) else "— (no epoch)"
                reach = [next((p["seconds"] for p in r["curve"] if p["recall@50"] >= target), None) for r in by[m]]
                ok = [x for x in reach if x is not None]
                reach_s = (f"{st.mean(ok):.1f} ({len(ok)}/{len(reach)} seeds)" if ok else "not reached")
                ep = [next((p["epoch"] for p in r["curve"] if p["recall@50"] >= target), None) for r in by[m]]
                ep_ok = [x for x in ep if x is not None]
                ep_s = f"{st.mean(ep_ok):.1f}" if ep_ok else "—"
                lines.append(f"| {m} | {at_s} | {reach_s} | {ep_s} |")
        gram = [(m, r) for m in ("sogram", "sagram") for r in by.get(m, [])[:1] if r["gram_error"]]
        if gram:
            lines += ["", "Gram estimation error ‖Ĝ − G‖_F / ‖G‖_F against the exact Gramians (seed 0):", "",
                      "| method | side | first | median | last | steps measured |", "|---|---|---|---|---|---|"]
            for m, r in gram:
                for side in ("u", "v"):
                    e = [g[side] for g in r["gram_error"]]
                    lines.append(f"| {m} | {side} | {e[0]:.3f} | {st.median(e):.3f} | {e[-1]:.3f} | {len(e)} |")
        lines.append("")
    return "\n".join(lines)
