"""The optimizer state of single rows of a table: reset when a row is freed or given to a new id.

A re-admitted id must start from a fresh row, so its per-row optimizer state is reset: Adagrad's accumulator
to its initial value (exactly a fresh Adagrad's state: Adagrad has no step-dependent correction), Adam's
moments to 0. Adam's bias correction reads one step counter per parameter (torch keeps ``step`` as a scalar
shared by every row of the table), so a reset row of an Adam-trained table is NOT corrected as a fresh Adam
would be (``1 - beta^k`` with k its own age): with the step far past 1/(1 - beta2), the row's first updates
come uncorrected (up to ``sqrt(1/(1 - beta2)) * (1 - beta1)`` = 3.2x a fresh Adam's first step at the
default betas). A per-row step would need an optimizer of our own; instead online training keeps every
table in the Adagrad (embedding) group under its ``pepnet_online`` preset (:mod:`dynarec.online.preset`),
where the reset is exact.

Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(4, 2))
    >>> opt = torch.optim.Adagrad([w], lr=0.1, initial_accumulator_value=0.5)
    >>> w.grad = torch.ones(4, 2); opt.step()
    >>> reset_slots(opt, w, torch.tensor([2]))
    >>> opt.state[w]["sum"][:, 0].tolist()
    [1.5, 1.5, 0.5, 1.5]
"""
import torch


def reset_slots(optimizer, weight, slots, rows_offset=0):
    """Reset the per-row optimizer state of ``weight`` at rows ``slots + rows_offset``: Adagrad's ``sum`` to
    its ``initial_accumulator_value``, every other row-shaped state (Adam / SparseAdam ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``) to 0. Scalar state (Adam's ``step``) is shared by all rows and kept.

    Args: optimizer; weight: any parameter [R, ...] (e.g. a fused table whose dynamic rows start at
    ``rows_offset``); slots: LongTensor [n]."""
    st = optimizer.state.get(weight)
    if not st:
        return
    init = next((g.get("initial_accumulator_value", 0.0) for g in optimizer.param_groups
                 if any(p is weight for p in g["params"])), 0.0)
    rows = (slots.reshape(-1) + rows_offset).to(weight.device)
    for k, v in st.items():
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == weight.shape[0]:
            v[rows] = init if k in ("sum", "state_sum") else 0.0

