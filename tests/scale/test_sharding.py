"""ShardedTable: the ranks' local batches are, together, exactly one process's global batches."""
import pytest
import torch

from dynarec.errors import ConfigError
from dynarec.train.distributed import ShardedTable


def test_rank_shards_join_to_the_global_batches(small_synth):
    t = small_synth[1]["train"].subset(torch.arange(1000))
    t.sparse[:, 0] = torch.arange(1000)  # row ids in a column, to see which rows each batch holds
    ref = [b.sparse[:, 0] for b in t.batches(200, shuffle=True, generator=torch.Generator().manual_seed(5))]
    shards = [[b.sparse[:, 0] for b in ShardedTable(t, r, 2).batches(200, True, torch.Generator().manual_seed(5))]
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(ref)
    for s, g in enumerate(ref):
        assert len(shards[0][s]) == len(shards[1][s]) == 100
        assert torch.equal(torch.sort(torch.cat([shards[0][s], shards[1][s]])).values, torch.sort(g).values)
    assert len(ShardedTable(t, 0, 3)) == 333  # 1000 // 3 * 3 rows per epoch, split evenly


def test_batch_size_must_divide_by_processes(small_synth):
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        next(ShardedTable(small_synth[1]["train"], 0, 3).batches(256))
