"""One error line for a run of several processes: each rank of ``dynarec train --nproc N`` that stops on a
user's mistake, a diverged or a collapsed fit writes its line to a file of the launcher's folder (named by
``DYNAREC_RANK_ERRORS``) instead of stderr; the launcher prints one of them (the lowest rank's, which the
others usually repeat with their own numbers), so a failed N-process run says it once, as a one-process run.

Example::

    >>> import os, tempfile
    >>> from dynarec.train.rank_errors import report, first_line
    >>> d = tempfile.mkdtemp(); os.environ.update({ENV: d, "RANK": "1"})
    >>> report("dynarec: error: bad value")
    >>> first_line(d)
    'dynarec: error: bad value (rank 1)'
    >>> del os.environ[ENV], os.environ["RANK"]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "DYNAREC_RANK_ERRORS"


def report(line: str) -> None:
    """``line`` to stderr, or, in a rank of a launched run, to the launcher's folder."""
    folder = os.environ.get(ENV)
    if not folder:
        print(line, file=sys.stderr)
        return
    rank = os.environ.get("RANK", "0")
    try:
        (Path(folder) / f"rank{int(rank):05d}.txt").write_text(line)
    except (OSError, ValueError):
        print(line, file=sys.stderr)


def first_line(folder: str | Path) -> str | None:
    """The lowest rank's line in ``folder`` (``(rank k)`` appended for a rank other than 0), or None."""
    files = sorted(Path(folder).glob("rank*.txt"))
    if not files:
        return None
    rank = int(files[0].stem[4:])
    line = files[0].read_text().strip()
    return line if rank == 0 else f"{line} (rank {rank})"
