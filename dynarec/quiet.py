"""Warnings a ``dynarec`` user should not see, silenced by name where the command line starts (each entry
names what it silences and why it is noise; anything else still shows).

* ``Sparse invariant checks``: torch's note on sparse embedding gradients (the tables' sparse updates).
* fbgemm_gpu's ``DeprecationWarning`` s at import (TorchRec runs): its own modules announcing their renames
  and optional SSD kernels that failed to import — nothing a dynarec user can act on.
* ``fbgemm::...: an autograd kernel was not registered`` (every TorchRec run, once per rank, from the backward
  of the data-parallel tables' dense lookup): torch's deprecation notice about how fbgemm registers the op;
  the gradients are right — a TorchRec run ends with the weights of one process
  (``tests/scale/test_torchrec.py``).
* anything torchvision warns: dynarec uses no vision op; torch's exporters import torchvision when it is
  installed, and its import-time warnings (image extension, beta namespaces) reached every ``export``.

DDP's "no unused parameters found" warning is printed by C++ and is kept away differently
(:mod:`dynarec.train.ddp_sentinel`).

Example::

    from dynarec.quiet import silence
    silence()   # once, before the noisy imports
"""
from __future__ import annotations

import sys
import warnings

NOISE = (
    {"message": "Sparse invariant checks"},
    {"category": DeprecationWarning, "module": r"fbgemm_gpu(\.|$)"},
    {"message": r"fbgemm::\w+: an autograd kernel was not registered"},
    {"module": r"torchvision(\.|$)"},
)


def silence() -> None:
    """Install the ``ignore`` filters of :data:`NOISE` (ahead of the ``-W`` / ``PYTHONWARNINGS`` ones)."""
    for kw in NOISE:
        warnings.filterwarnings("ignore", **kw)


def one_line_data_warnings() -> None:
    """Print a :class:`dynarec.errors.DataWarning` (data accepted that may not mean what the user thinks) as
    one ``dynarec: warning: ...`` stderr line, as errors are; other warnings keep Python's form."""
    from dynarec.errors import DataWarning

    shown = warnings.showwarning
    if getattr(shown, "_dynarec_one_line", False):
        return

    def show(message, category, *args, **kw):
        if issubclass(category, DataWarning):
            print(f"dynarec: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kw)

    show._dynarec_one_line = True
    warnings.showwarning = show
