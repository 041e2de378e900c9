import pytest
import torch

from dynarec.errors import DataError
from dynarec.retrieval.data import CSR, leave_last_out, random_split


def test_csr_from_pairs_dedups_and_selects_rows():
    csr = CSR.from_pairs(torch.tensor([2, 0, 2, 2, 0]), torch.tensor([5, 1, 3, 5, 4]), num_rows=4)
    assert csr.row(0).tolist() == [1, 4] and csr.row(1).tolist() == [] and csr.row(2).tolist() == [3, 5]
    pos, col = csr.pairs(torch.tensor([2, 3, 0]))
    assert list(zip(pos.tolist(), col.tolist())) == [(0, 3), (0, 5), (2, 1), (2, 4)]
    with pytest.raises(DataError, match="row ids"):
        CSR.from_pairs(torch.tensor([4]), torch.tensor([0]), num_rows=4)


def test_leave_last_out_takes_each_users_latest():
    user = torch.tensor([0, 1, 0, 2, 1, 0, 1])
    ts = torch.tensor([5, 1, 9, 3, 7, 2, 7])
    train, test = leave_last_out(user, ts)
    assert test.nonzero().view(-1).tolist() == [2, 6]             # user 1 ties at t=7: the later row
    assert (train == ~test).all()                                  # user 2 has one interaction: train


def test_random_split_fraction():
    train, test = random_split(100, 0.2, seed=1)
    assert int(test.sum()) == 20 and not (train & test).any()
    assert not torch.equal(test, random_split(100, 0.2, seed=2)[1])
