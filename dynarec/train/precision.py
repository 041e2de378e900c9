"""How the step computes: ``trainer.precision`` (fp32 | bf16) and ``trainer.compile`` (torch.compile).

* **bf16** runs the model's forward (and so its backward) under ``torch.autocast(dtype=bfloat16)``: the
  GEMMs (linear / matmul / bmm / baddbmm) run in bfloat16, everything else stays float32 — master weights,
  optimizer state, the embedding tables (lookups are not autocast ops), losses and metrics (the outputs are
  cast back to float32 before the loss). On CUDA always; on a CPU only where the hardware multiplies
  bfloat16 natively (**AMX-BF16** or **AVX512-BF16**, detected at run time by :func:`cpu_bf16_flags`):
  elsewhere bf16 would be slower than float32, so the run prints one line and trains in fp32.
* **compile** runs the model through ``torch.compile`` (inductor): the model's ``__call__`` becomes the
  compiled one (``nn.Module.compile``, in place), so the training step's forward + backward and the
  evaluation's forward are compiled; the optimizer steps (sparse table updates included) stay eager.
  Default off (see docs/benchmarks.md for the measurements); :func:`check_compile` refuses it in one line
  where inductor cannot build (no C++ compiler).

Example::

    >>> import torch
    >>> from dynarec.train.precision import resolve_precision
    >>> resolve_precision("fp32", torch.device("cpu"))
    'fp32'
"""
from __future__ import annotations

import shutil
import sys

import torch

from dynarec.errors import ConfigError

PRECISIONS = ("fp32", "bf16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # torch.cpu.get_capabilities() keys: native bf16 dot products


def cpu_bf16_flags() -> list[str]:
    """The native-bfloat16 features of this CPU (``amx_bf16``, ``avx512_bf16``) as torch's cpuinfo sees
    them at run time; empty when there are none (or torch cannot tell)."""
    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # noqa: BLE001 - an older torch or an unknown CPU: no native bf16 claimed
        return []
    return [f for f in CPU_BF16_FLAGS if caps.get(f)]


def resolve_precision(precision: str, device: torch.device, note=None) -> str:
    """The precision the step will use: ``fp32`` anywhere; ``bf16`` on CUDA, and on a CPU with native
    bfloat16 (:func:`cpu_bf16_flags`); on a CPU without it, ``fp32`` after one line through ``note``
    (default: stderr). Any other value is a ConfigError."""
    p = str(precision or "fp32").strip().lower()
    if p not in PRECISIONS:
        raise ConfigError(f"trainer.precision: expected fp32 | bf16, got '{precision}'")
    if p == "fp32" or device.type == "cuda":
        return p
    if device.type != "cpu":
        raise ConfigError(f"trainer.precision: bf16 needs a CUDA device or a CPU (trainer.device is {device})")
    if cpu_bf16_flags():
        return "bf16"
    (note or _stderr)("note: trainer.precision: bf16 asked for, but this CPU has no AMX-BF16 / AVX512-BF16 "
                      "(bf16 would be slower than fp32 here): training in fp32")
    return "fp32"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a disabled one for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def check_compile(compile: bool) -> bool:
    """``trainer.compile``: a bool; true needs inductor's C++ compiler on the CPU (one-line ConfigError
    naming what is missing)."""
    if not isinstance(compile, bool):
        raise ConfigError(f"trainer.compile: expected true or false, got {compile!r}")
    if compile and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ConfigError("trainer.compile: true needs a C++ compiler for torch.compile's inductor "
                          "(none of g++ / c++ / clang++ on PATH); use compile: false")
    return compile


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """Compile ``model`` in place (its ``__call__`` runs the inductor-compiled forward, train and eval
    graphs each compiled on first use); returns it. Idempotent."""
    if getattr(model, "_compiled_call_impl", None) is None:
        model.compile()
    return model
