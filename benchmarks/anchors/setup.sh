#!/usr/bin/env bash
# Install the anchor libraries (FuxiCTR 2.3.10, torch-rechub 0.9.0) into a SEPARATE virtualenv.
# They are never dependencies of dynarec. torch is pinned to 2.13.0 and installed FIRST so that
# nothing pulls another (CUDA) build; every later install is constrained to that exact torch.
#
#   bash benchmarks/anchors/setup.sh            # venv at $ANCHOR_VENV (default: <repo>/.venv-anchors)
#
# The venv also gets dynarec itself (editable, --no-deps) so the driver can run dynarec and the
# anchors in one process on the same tensors.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${ANCHOR_VENV:-$REPO/.venv-anchors}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
PIN="$(mktemp)"; echo "torch==2.13.0" > "$PIN"
# 1. torch first, CPU build, exact pin
$PIP install -q "torch==2.13.0" -c "$PIN"
# 2. dynarec's own runtime deps + the driver's needs
$PIP install -q -c "$PIN" numpy pyarrow pyyaml rich scikit-learn pandas
# 3. FuxiCTR 2.3.10 (needs polars<2; pulls ray[data])
$PIP install -q -c "$PIN" "fuxictr==2.3.10" "polars<2"
# 4. torch-rechub 0.9.0
$PIP install -q -c "$PIN" "torch-rechub==0.9.0"
# 5. dynarec itself, without touching its dependencies
$PIP install -q --no-deps -e "$REPO"
"$VENV/bin/python" - <<'PY'
import torch, fuxictr, torch_rechub
assert torch.__version__.startswith("2.13.0"), torch.__version__
print("anchor venv ok: torch", torch.__version__, "| fuxictr", fuxictr.__version__,
      "| torch_rechub", getattr(torch_rechub, "__version__", "0.9.0"))
PY
rm -f "$PIN"
echo "ANCHOR_VENV=$VENV"
echo "FuxiCTR model_zoo (APG, PPNet) is not in the wheel: pass --fuxictr-repo DIR (a checkout of"
echo "github.com/reczoo/FuxiCTR) to benchmarks/anchors/run.py."
