"""Engines that run the out-of-core prepare's per-file work (``distprep.py``): a registry, name -> class.

* ``local``: today's single-process pyarrow path (``outofcore.prepare_out_of_core``); as an engine object it
  maps in this process, one file after the other (the per-file path without a cluster; tests use it).
* ``dask``: a ``distributed`` cluster (the ``dask`` extra: ``pip install 'dynarec[dask]'``): the scheduler at
  ``DASK_SCHEDULER_ADDRESS`` when that is set (dask's own setting: workers on other machines then need the
  input files and the output folder at the same paths), otherwise a local cluster of ``workers`` processes.
  Chosen over Ray here by the numbers in ``docs/out_of_core.md`` (install size, 2-worker start time).

Example::

    with open_engine("dask", workers=2) as eng:
        counts = eng.map(count_rows, [(f,) for f in files])
"""
from __future__ import annotations

import os
from typing import Callable

from dynarec.errors import ConfigError


class LocalEngine:
    """In this process, in order."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = 1

    def map(self, fn: Callable, args: list[tuple]) -> list:
        return [fn(*a) for a in args]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class DaskEngine:
    """``distributed.Client.map`` over a local ``workers``-process cluster (or ``DASK_SCHEDULER_ADDRESS``)."""

    name = "dask"

    def __init__(self, workers: int = 2):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError("data prepare: --engine dask needs the dask extra (pip install 'dynarec[dask]')") from None
        self.workers = int(workers)
        self.cluster = self.client = None

    def __enter__(self):
        from distributed import Client, LocalCluster

        address = os.environ.get("DASK_SCHEDULER_ADDRESS")
        if address:
            self.client = Client(address)
        else:
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None)
            self.client = Client(self.cluster)
        return self

    def map(self, fn: Callable, args: list[tuple]) -> list:
        futures = [self.client.submit(fn, *a, pure=False) for a in args]
        return self.client.gather(futures)  # in the order of args; a worker's exception is raised here

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False


ENGINES = {"local": LocalEngine, "dask": DaskEngine}


def open_engine(name: str, workers: int = 2):
    """The engine ``name`` (not started: use it as a context manager); an unknown name is a ConfigError."""
    if name not in ENGINES:
        raise ConfigError(f"data prepare: --engine '{name}' is not one of {', '.join(ENGINES)}")
    return ENGINES[name](workers)
