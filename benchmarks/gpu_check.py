"""GPU check (a CUDA machine, under 5 minutes): every registered model on CUDA against the same model on the
CPU (forward parity, one finite training step), then train throughput of dnn, mmoe, pepnet and apg_dnn at
batch 4096 and 16384 in fp32 and bf16, as rows/s and as the share of the GPU's measured matmul rate
(training FLOPs per row counted by torch's FlopCounterMode; gathers and element-wise ops uncounted).

    python benchmarks/gpu_check.py [--rows 262144] [--steps 30]

Without CUDA it prints why and exits 1."""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore", message="Sparse invariant checks")
MODELS = ["dnn", "mmoe", "pepnet", "apg_dnn"]


def matmul_tflops(dtype) -> float:
    a, b = torch.randn(8192, 8192, device="cuda", dtype=dtype), torch.randn(8192, 8192, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192 ** 3 / (time.perf_counter() - t) / 1e12


def conformance(schema, tables) -> list[str]:
    """Per model: CPU and CUDA forwards agree (1e-4) and one CUDA training step is finite -> failures."""
    from dynarec.models import build_model, list_models
    from dynarec.train.config import TrainerConfig
    from dynarec.train.trainer import Trainer

    batch = tables["train"].take(torch.arange(256))
    bad = []
    for info in list_models():
        try:
            torch.manual_seed(0)
            m = build_model(info.name, schema, {}).eval()
            with torch.no_grad():
                ref = m(batch)
                got = m.to("cuda")(batch.to("cuda"))
            for t in ref:
                torch.testing.assert_close(got[t].cpu(), ref[t], atol=1e-4, rtol=1e-4)
            tr = Trainer(m, TrainerConfig(device="cuda", progress=False))
            m.train()
            loss = tr.step(batch.to("cuda"))
            assert loss == loss and abs(loss) < float("inf"), f"loss {loss}"
            print(f"  ok   {info.name}")
        except Exception as e:  # report every model, then fail at the end
            bad.append(info.name)
            print(f"  FAIL {info.name}: {type(e).__name__}: {str(e)[:160]}")
    return bad


def throughput(name, schema, table, batch, precision, steps) -> tuple[float, float]:
    """-> (rows/s, training GFLOP per row) on CUDA, after warm-up steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from dynarec.models import build_model
    from dynarec.train.config import TrainerConfig
    from dynarec.train.device import DeviceTable
    from dynarec.train.trainer import Trainer

    torch.manual_seed(0)
    m = build_model(name, schema, {})
    tr = Trainer(m, TrainerConfig(device="cuda", precision=precision, progress=False))
    m.train()
    batches = list(DeviceTable(table, "cuda").batches(batch, shuffle=True, generator=torch.Generator().manual_seed(0)))
    batches = [b for b in batches if len(b) == batch]
    with FlopCounterMode(display=False) as fc:
        tr.step(batches[0])
    for b in batches[:3]:
        tr.step(b)
    torch.cuda.synchronize()
    t, n = time.perf_counter(), 0
    for i in range(steps):
        tr.step(batches[i % len(batches)])
        n += batch
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t), fc.get_total_flops() / batch / 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device on this machine (torch "
              f"{torch.__version__}, CUDA build: {torch.version.cuda}); run it on a machine with a CUDA GPU",
              file=sys.stderr)
        return 1
    from dynarec.data.prepare import synthetic_tables

    t0 = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    schema, tables, _ = synthetic_tables(a.rows, seed=0)
    print("conformance on CUDA:")
    bad = conformance(schema, tables)
    peak = {"fp32": matmul_tflops(torch.float32), "bf16": matmul_tflops(torch.bfloat16)}
    print(f"measured matmul: fp32 {peak['fp32']:.1f} TFLOP/s, bf16 {peak['bf16']:.1f} TFLOP/s")
    print(f"{'model':10} {'batch':>6} {'prec':>5} {'rows/s':>12} {'GFLOP/row':>10} {'share':>7}")
    for name in MODELS:
        for batch in (4096, 16384):
            for prec in ("fp32", "bf16"):
                rps, gf = throughput(name, schema, tables["train"], batch, prec, a.steps)
                share = rps * gf / (peak[prec] * 1e3)
                print(f"{name:10} {batch:>6} {prec:>5} {rps:>12,.0f} {gf:>10.4f} {share:>7.2%}")
    print(f"done in {time.perf_counter() - t0:.0f} s; conformance failures: {bad or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
