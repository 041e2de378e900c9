"""MLP: Linear -> [BatchNorm] -> activation -> [Dropout] stacks; the shared building block."""
from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "prelu": nn.PReLU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}' (valid: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Hidden layers ``hidden`` on input width ``in_dim``; ``out_dim`` adds a final linear layer with no
    activation (a logit layer). ``out_features`` is the output width."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int | None = None, act: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_features = d

    def forward(self, x):
        return self.net(x)
