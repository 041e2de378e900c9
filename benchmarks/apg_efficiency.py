"""APG efficiency (SPEC §3 "APG efficiency"): the paper's MLP [393, 1024, 512, 256] at batch 1024.

Measures, for a static MLP and APG v1, v2, v3, v4, v5 (training form) and v5 (merged):
  * per-batch train time (forward + backward + Adam step) and inference time (eval, no grad),
  * parameter memory, and activation memory = bytes of the non-parameter tensors autograd saves for backward
    in one training forward (deduplicated by storage) — the paper does not define its "memory",
  * the theoretical multiply-accumulates of one forward (GMAC per batch),
and prints ratios to the static MLP next to the paper's (static 13.04 s/epoch, v1 1462.78, v3 11.23, v4 7.99;
memory 12.91 / 419.11 / 3.22 / 0.44 MB).

Noise control on a shared machine: repetitions are interleaved round-robin across the variants and the
median is reported. v1 and v2 build a (B, d_in, d_out) weight tensor (1.6 GB at B=1024), so they run at
``--small-batch`` and their forward/backward time and activation memory are scaled linearly to B=1024
(marked ``*``; the optimiser step, which does not grow with the batch, is added unscaled).

Run: ``.venv/bin/python benchmarks/apg_efficiency.py --threads 2 --reps 7``
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dynarec.nn.apg import APGLinear, merge_for_inference

DIMS = [393, 1024, 512, 256]
PAPER = {"static": (13.04, 12.91), "v1": (1462.78, 419.11), "v3": (11.23, 3.22), "v4": (7.99, 0.44)}


class StaticMLP(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x, z, index=None):
        for i, l in enumerate(self.layers):
            x = l(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class APGNet(nn.Module):
    """The same MLP with every layer an APGLinear; group-wise condition z = Emb(group id)."""

    def __init__(self, dims, version, cond_dim, K, P, hyper):
        super().__init__()
        self.layers = nn.ModuleList(APGLinear(a, b, cond_dim, version=version, rank_k=K, overparam_p=P,
                                              hypernet_hidden=hyper) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x, z, index=None):
        for i, l in enumerate(self.layers):
            x = l(x, z, index)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def macs_per_sample(version, dims, cond, K, P, hyper, B, G=None):
    """Multiply-accumulates of one forward per sample (hypernet + layer); G = rows the hypernet runs on."""
    G = B if G is None else G
    if version == "static":
        return sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    tot = 0
    for n, m in zip(dims[:-1], dims[1:]):
        n_w = {"v1": n * m, "v2": (n + m) * K + K * K, "v3": (n + m) * K + K * K}.get(version, K * K)
        hs = [cond] + list(hyper) + [n_w + m]
        tot += sum(a * b for a, b in zip(hs[:-1], hs[1:])) * G / B
        if version == "v1":
            tot += n * m
        elif version == "v2":
            tot += n * K * K + n * K * m + n * m
        else:
            tot += n * K + K * K + K * m
            if version == "v5-train":
                tot += (n * P * K + K * P * m) / B
    return tot


def saved_activation_bytes(model, x, z, idx=None) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and ptr not in seen:
                seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, z, idx)
    del out
    return sum(seen.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--small-batch", type=int, default=32, help="batch for v1/v2 (scaled to --batch)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rank-k", type=int, default=32)
    ap.add_argument("--overparam-p", type=int, default=128)
    ap.add_argument("--hypernet", type=int, nargs="*", default=[64])
    ap.add_argument("--cond-dim", type=int, default=16)
    ap.add_argument("--groups", type=int, default=6, help="distinct condition ids (domains)")
    ap.add_argument("--skip", nargs="*", default=[], help="variants to skip, e.g. v1 v2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B, K, P, H, C = a.batch, a.rank_k, a.overparam_p, a.hypernet, a.cond_dim
    names = [n for n in ["static", "v1", "v2", "v3", "v4", "v5-train", "v5-merged", "v4-grp", "v5-merged-grp"]
             if n not in a.skip]
    table = nn.Embedding(a.groups, C)
    models, batches, scale = {}, {}, {}
    for n in names:
        if n == "static":
            m = StaticMLP(DIMS)
        else:
            m = APGNet(DIMS, n.split("-")[0], C, K, P, H)
            if "merged" in n:
                merge_for_inference(m)
        b = a.small_batch if n in ("v1", "v2") else B
        scale[n] = B / b
        x = torch.randn(b, DIMS[0])
        ids = torch.randint(0, a.groups, (b,))
        y = torch.randn(b, DIMS[-1])
        models[n] = (m, torch.optim.Adam(m.parameters(), 1e-3))
        if n.endswith("-grp"):  # G once per group id, gathered per row (APGLinear index=)
            batches[n] = (x, table.weight.detach(), y, ids)
        else:
            batches[n] = (x, table(ids).detach(), y, None)

    def train_step(n):
        m, opt = models[n]
        x, z, y, idx = batches[n]
        m.train()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = ((m(x, z, idx) - y) ** 2).mean()
        loss.backward()
        t1 = time.perf_counter()
        opt.step()  # does not grow with the batch: not scaled for the small-batch variants
        return (t1 - t0) * scale[n] + time.perf_counter() - t1

    def infer(n):
        m, _ = models[n]
        x, z, _, idx = batches[n]
        m.eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            m(x, z, idx)
            return time.perf_counter() - t0

    for n in names:  # warm-up (allocator, Adam state, v5 eval cache)
        train_step(n)
        infer(n)
    tt = {n: [] for n in names}
    ti = {n: [] for n in names}
    for _ in range(a.reps):
        for n in names:  # round-robin so machine noise hits every variant alike
            tt[n].append(train_step(n))
            ti[n].append(infer(n) * scale[n])
    rows = {}
    for n in names:
        m, _ = models[n]
        x, z, _, idx = batches[n]
        m.train()
        rows[n] = dict(
            train=statistics.median(tt[n]) * 1e3, infer=statistics.median(ti[n]) * 1e3,
            train_spread=(max(tt[n]) - min(tt[n])) * 1e3,
            params=sum(p.numel() for p in m.parameters()) * 4 / 1e6,
            act=saved_activation_bytes(m, x, z, idx) * scale[n] / 1e6,
            gmac=macs_per_sample(n.replace("-merged", "").replace("-grp", ""), DIMS, C, K, P, H, B,
                                 a.groups if n.endswith("-grp") else B) * B / 1e9)
    s = rows["static"]
    print(f"# APG efficiency: MLP {DIMS}, batch {B}, K={K}, P={P}, hypernet {H}, condition width {C} "
          f"(group-wise, {a.groups} ids), Adam, {a.threads} threads, median of {a.reps} interleaved reps, "
          f"torch {torch.__version__}")
    print()
    print("| variant | train ms/batch | ×static | paper ×static | infer ms/batch | ×static | GMAC/batch (fwd) "
          "| params MB | act. MB | (params+act.) ×static | paper mem ×static |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        r = rows[n]
        key = n if n in PAPER else None
        paper_t = f"{PAPER[key][0] / PAPER['static'][0]:.3f}" if key else "–"
        paper_m = f"{PAPER[key][1] / PAPER['static'][1]:.3f}" if key else "–"
        star = "*" if scale[n] != 1 else ""
        mem_ratio = (r["params"] + r["act"]) / (s["params"] + s["act"])
        print(f"| {n}{star} | {r['train']:.1f} (±{r['train_spread'] / 2:.1f}) | {r['train'] / s['train']:.3f} | {paper_t} "
              f"| {r['infer']:.2f} | {r['infer'] / s['infer']:.3f} | {r['gmac']:.3f} | {r['params']:.2f} "
              f"| {r['act']:.2f} | {mem_ratio:.3f} | {paper_m} |")
    print()
    if any(scale[n] != 1 for n in names):
        print(f"`*` run at batch {a.small_batch}; forward/backward time and activation memory scaled "
              f"×{B // a.small_batch} to batch {B} (Adam step unscaled).")
    print("`-grp`: the hypernetwork runs once per distinct group id (the 6-row condition table) and the generated "
          "S, b are gathered per row (`APGLinear(..., index=ids)`, exact for group-wise conditions).")
    print("Paper (secondary source, SPEC §3): s/epoch static 13.04, v1 1462.78, v3 11.23, v4 7.99; "
          "memory MB 12.91 / 419.11 / 3.22 / 0.44 (v5 is reported as costing v4 at inference).")


if __name__ == "__main__":
    main()
