import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message="Sparse invariant checks")


@pytest.fixture(autouse=True)
def _threads():
    # tiny test tensors: one intra-op thread is faster than two and never oversubscribes the machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def small_synth():
    from dynarec.data.prepare import synthetic_tables

    return synthetic_tables(4000, seed=0)
