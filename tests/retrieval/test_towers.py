import pytest
import torch

from dynarec.retrieval.towers import GatedTower, Tower, TwoTower


def test_gated_tower_starts_as_plain_tower_and_gates_train():
    torch.manual_seed(0)
    plain, gated = Tower(12, [16, 8], dim=4), GatedTower(12, [16, 8], dim=4, condition_dim=3)
    for lin_p, lin_g in zip([m for m in plain.mlp.net if isinstance(m, torch.nn.Linear)],
                            list(gated.mlp.linears) + [gated.mlp.out]):
        lin_g.load_state_dict(lin_p.state_dict())
    x, c = torch.randn(5, 12), torch.randn(5, 3)
    assert torch.allclose(gated(x, c), plain(x), atol=1e-6)       # every gate starts at 1
    gated(x, c).sum().backward()
    assert gated.gates.gates[0].fc2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="condition"):
        gated(x)


def test_two_tower_shapes_and_width_check():
    tt = TwoTower(Tower(6, [8], 4), Tower(5, [], 4))
    u, v = tt(torch.randn(3, 6), torch.randn(7, 5))
    assert u.shape == (3, 4) and v.shape == (7, 4)
    with pytest.raises(ValueError, match="widths differ"):
        TwoTower(Tower(6, [8], 4), Tower(5, [], 3))
