"""STARLinear: gather-per-row vs group-rows-by-domain (and the naive all-domains reference).

* gather: each row gathers its domain's ``[in, out]`` weight (``W_p[domain] ⊙ W``) and one ``bmm`` runs
  (materialises ``B × in × out``);
* group: rows are sorted by domain and one ``addmm`` runs per present domain (SPEC §2.9 default);
* all: every row goes through every domain's layer and the row's own output is selected — what a port
  that "runs every domain tower on every row" does (D times the FLOPs).

Forward + backward per batch, median of ``--reps``; prints ms and the gather/group ratio.

    .venv/bin/python benchmarks/star_gather_vs_group.py [--threads 1] [--batch 4096] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynarec.nn.star import STARLinear


def _all_domains(layer: STARLinear, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    w = layer.domain_weight * layer.weight  # [D, in, out]
    out = torch.einsum("bi,dio->bdo", x, w) + (layer.domain_bias + layer.bias)  # [B, D, out]
    return out[torch.arange(x.shape[0]), domain]


def bench(batch: int, d_in: int, d_out: int, D: int, reps: int, shares) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d_in, generator=g)
    domain = torch.multinomial(torch.tensor(shares), batch, replacement=True, generator=g)
    layer = STARLinear(d_in, d_out, D)
    res = {}
    for mode in ("group", "gather", "all"):
        layer.mode = "group" if mode == "all" else mode
        fn = (lambda: _all_domains(layer, x, domain)) if mode == "all" else (lambda: layer(x, domain))
        times = []
        for _ in range(reps + 1):
            layer.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fn().sum().backward()
            times.append(time.perf_counter() - t0)
        res[mode] = statistics.median(times[1:]) * 1000
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shares = [0.0, 0.45, 0.25, 0.13, 0.09, 0.065, 0.015]  # synthetic data: id 0 = unknown, 6 domains
    print(f"STARLinear fwd+bwd, batch {a.batch}, {len(shares)} domain slots (6 present), {a.threads} thread(s), "
          f"median of {a.reps}")
    print(f"{'layer':>12} {'group ms':>9} {'gather ms':>10} {'all ms':>8} {'gather/group':>13} {'all/group':>10}")
    for d_in, d_out in [(147, 256), (256, 128), (128, 64), (64, 1)]:
        r = bench(a.batch, d_in, d_out, len(shares), a.reps, shares)
        print(f"{f'{d_in}x{d_out}':>12} {r['group']:9.2f} {r['gather']:10.2f} {r['all']:8.2f} "
              f"{r['gather'] / r['group']:13.2f} {r['all'] / r['group']:10.2f}")


if __name__ == "__main__":
    main()
