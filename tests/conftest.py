import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message="Sparse invariant checks")


@pytest.fixture(autouse=True)
def _threads():
    # 2-core machines: keep intra-op threads fixed so tests are reproducible and do not oversubscribe
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def small_synth():
    from dynarec.data.prepare import synthetic_tables

    return synthetic_tables(4000, seed=0)
