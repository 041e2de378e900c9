"""CAN co-action layers (Bian et al., "CAN: Feature Co-Action Network for Click-Through Rate Prediction",
WSDM 2022, arXiv 2011.05625; SPEC §2.10; reference code alibaba/DeepRec ``modelzoo/CAN/script/model.py``).

* :class:`CoActionUnit` — the induction-side parameter vector ``θ [B, P]`` (e.g. looked up by the target
  item id) is reshaped into a micro-MLP ``W1 (16×8), W2 (8×4)`` (+ optional biases) applied to every
  feed-side embedding ``P [B, L, 16]`` (e.g. the user's behaviour sequence) raised to the powers
  c = 1..orders: ``h1 = tanh(P^c W1)``, ``h2 = h1 W2``, keep ``h1 ⊕ h2``; masked, sum-pooled over L.
  With the defaults the output is 3 × (8 + 4) = 36 dims and ``P`` = 160 (SPEC §2.10 tests 1, 3).
* :class:`CoActionLayer` — the unit with its own two tables (induction ``θ`` and feed ``P``), taking ids.

Plain tensors only. With ``θ = 0`` the unit outputs exactly 0 (no bias term exists outside ``θ``).
"""
from __future__ import annotations

import torch
from torch import nn

from dynarec.nn.mlp import activation as make_activation
from dynarec.tables.collection import TableCollection, borrow, borrowed, table_for
from dynarec.tables.spec import TableSpec


def coaction_param_dim(weight_emb_w, weight_emb_b, orders: int = 3, order_indep: bool = False) -> int:
    """Width of θ: Σ_l (d_{l-1}·d_l + bias_l), times ``orders`` when orders are independent."""
    one = sum(a * b for a, b in weight_emb_w) + sum(weight_emb_b)
    return one * (orders if order_indep else 1)


class CoActionUnit(nn.Module):
    """Co-action micro-MLP (no parameters of its own: all of them come in ``θ``).

    ``weight_emb_w``: layer shapes ``[[d0, d1], [d1, d2], ...]``; ``weight_emb_b``: per layer 0 (no bias)
    or the bias width (= that layer's d_out); ``orders``: powers 1..orders of the feed embedding;
    ``order_indep``: one micro-MLP per order (θ gets ``orders`` times wider) instead of one shared.
    Hidden layers use ``act`` (tanh in the reference), the last layer is linear; every layer's output is
    kept and concatenated, as in the reference code.
    """

    def __init__(self, weight_emb_w=((16, 8), (8, 4)), weight_emb_b=(0, 0), orders: int = 3,
                 order_indep: bool = False, act: str = "tanh"):
        super().__init__()
        self.weight_emb_w = [tuple(int(v) for v in w) for w in weight_emb_w]
        self.weight_emb_b = [int(b) for b in weight_emb_b]
        check_coaction_shapes(self.weight_emb_w, self.weight_emb_b, orders)
        self.orders, self.order_indep = int(orders), bool(order_indep)
        self.act = make_activation(act)
        self.feed_dim = self.weight_emb_w[0][0]
        self.param_dim = coaction_param_dim(self.weight_emb_w, self.weight_emb_b, self.orders, self.order_indep)
        self.out_dim = self.orders * sum(w[1] for w in self.weight_emb_w)

    def _split(self, theta: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor | None]]]:
        B, idx, per_order = theta.shape[0], 0, []
        for _ in range(self.orders if self.order_indep else 1):
            layers = []
            for (a, b), nb in zip(self.weight_emb_w, self.weight_emb_b):
                w = theta[:, idx:idx + a * b].view(B, a, b)
                idx += a * b
                bias = None
                if nb:
                    bias = theta[:, idx:idx + nb].view(B, 1, nb)
                    idx += nb
                layers.append((w, bias))
            per_order.append(layers)
        return per_order

    def forward(self, theta: torch.Tensor, feed: torch.Tensor, mask: torch.Tensor | None = None,
                segments: list[int] | None = None) -> torch.Tensor:
        """``theta [B, param_dim]``, ``feed [B, L, feed_dim]`` (or ``[B, feed_dim]``), ``mask [B, L]``
        (1 = real element) -> ``[B, out_dim]`` summed over L.

        ``segments`` (lengths summing to L) sums each segment of L separately and returns
        ``[B, len(segments) · out_dim]`` (segment-major): several feed fields in one call."""
        if theta.shape[-1] != self.param_dim:
            raise ValueError(f"CoActionUnit: θ has width {theta.shape[-1]}, expected {self.param_dim}")
        if feed.dim() == 2:
            feed = feed.unsqueeze(1)
        B, L, _ = feed.shape
        O = self.orders
        per_order = self._split(theta)
        powers = torch.stack([feed if c == 1 else feed ** c for c in range(1, O + 1)], 1)  # [B, O, L, d]
        if self.order_indep:  # one micro-MLP per order: run the orders separately
            blocks = [self._mlp(powers[:, c], per_order[c]) for c in range(O)]
            out = torch.stack(blocks, 1)  # [B, O, L, Σw]
        else:  # shared weights: all orders in one bmm per layer
            out = self._mlp(powers.reshape(B, O * L, -1), per_order[0]).view(B, O, L, -1)
        if mask is not None:
            out = out * mask.to(out.dtype).view(B, 1, L, 1)
        if segments is None:
            return out.sum(2).flatten(1)  # [B, O·Σw]: order-major, [h1 ⊕ h2] per order as the reference
        parts = [p.sum(2).flatten(1) for p in out.split(list(segments), 2)]
        return torch.cat(parts, 1)

    def _mlp(self, h: torch.Tensor, layers) -> torch.Tensor:
        outs = []
        for j, (w, b) in enumerate(layers):
            h = torch.bmm(h, w)
            if b is not None:
                h = h + b
            if j < len(layers) - 1:
                h = self.act(h)
            outs.append(h)
        return torch.cat(outs, -1)


def check_coaction_shapes(weight_emb_w, weight_emb_b, orders: int, where: str = "CoActionUnit") -> None:
    """Raise ValueError naming what is wrong with a co-action micro-MLP spec."""
    if not weight_emb_w:
        raise ValueError(f"{where}: weight_emb_w needs at least one [d_in, d_out] layer")
    if any(len(w) != 2 or min(w) < 1 for w in weight_emb_w):
        raise ValueError(f"{where}: weight_emb_w must be a list of [d_in, d_out] pairs of positive ints, got {weight_emb_w}")
    for (_, b1), (a2, _) in zip(weight_emb_w[:-1], weight_emb_w[1:]):
        if b1 != a2:
            raise ValueError(f"{where}: weight_emb_w layers do not chain ({b1} -> {a2}) in {weight_emb_w}")
    if len(weight_emb_b) != len(weight_emb_w):
        raise ValueError(f"{where}: weight_emb_b needs one entry per layer ({len(weight_emb_w)}), got {weight_emb_b}")
    for (_, d), nb in zip(weight_emb_w, weight_emb_b):
        if nb not in (0, d):
            raise ValueError(f"{where}: weight_emb_b entries must be 0 (no bias) or the layer width {d}, got {nb}")
    if orders < 1:
        raise ValueError(f"{where}: orders must be >= 1, got {orders}")


class CoActionLayer(nn.Module):
    """Co-action with its own tables: ``induction_ids Long [B]`` look up θ in an ``[num_induction,
    param_dim]`` table, ``feed_ids Long [B, L]`` (0 = padding, masked) look up ``P`` in a separate
    ``[num_feed, feed_dim]`` table -> ``[B, out_dim]``. Both tables are in the ``embedding`` optimizer group
    (sparse gradients) of ``tables`` (the model's collection; ``None``: a private one), named
    ``<name>_induction`` and ``<name>_feed``."""

    def __init__(self, num_induction: int, num_feed: int, weight_emb_w=((16, 8), (8, 4)), weight_emb_b=(0, 0),
                 orders: int = 3, order_indep: bool = False, act: str = "tanh", init_std: float = 0.1,
                 tables: TableCollection | None = None, name: str = "coaction"):
        super().__init__()
        self.unit = CoActionUnit(weight_emb_w, weight_emb_b, orders, order_indep, act)
        ind = table_for(tables, self, TableSpec(f"{name}_induction", num_induction, self.unit.param_dim, init_std,
                                                "embedding"))
        feed = table_for(tables, self, TableSpec(f"{name}_feed", num_feed, self.unit.feed_dim, init_std, "embedding"))
        borrow(self, (ind, feed))
        self.out_dim = self.unit.out_dim

    @property
    def induction(self) -> nn.Embedding:
        return borrowed(self)[0]

    @property
    def feed(self) -> nn.Embedding:
        return borrowed(self)[1]

    def forward(self, induction_ids: torch.Tensor, feed_ids: torch.Tensor) -> torch.Tensor:
        if feed_ids.dim() == 1:
            feed_ids = feed_ids.unsqueeze(1)
        return self.unit(self.induction(induction_ids), self.feed(feed_ids), feed_ids > 0)
