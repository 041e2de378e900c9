"""Epistemic uncertainty by MC dropout and calibration (Kendall & Gal, NeurIPS 2017; SPEC §2.16).

* :func:`mc_dropout_predict` — N stochastic passes with dropout ON (every ``nn.Dropout`` and the MMoE
  expert dropout) and everything else in eval mode (batch norm running statistics, no gate noise,
  position always missing). Returns per task the mean prediction (probability for binary tasks, value
  for regression) and its variance per row; for models with aleatoric heads the regression variance
  adds ``mean σ̂²`` (SPEC §2.16: ``Var ≈ mean ŷ² − (mean ŷ)² + mean σ̂²``).
* :func:`ece` — expected calibration error with equal-width bins.
* :func:`mc_dropout_report` — ECE of the MC-mean and of the deterministic prediction and the mean
  predictive variance, per task, overall and per domain (``dynarec evaluate --mc-dropout N``).
"""
from __future__ import annotations

import torch
from torch import nn

from dynarec.errors import ConfigError


def _mc_modules(model: nn.Module) -> list[nn.Module]:
    """The modules MC dropout runs in training mode: every torch dropout module (``nn.Dropout``, ``Dropout1d..3d``,
    ``AlphaDropout``, ...) and any module declaring ``mc_dropout = True`` (the MMoE gate with expert dropout).
    A functional dropout call that follows ``self.training`` cannot be switched alone, so layers use modules (tested)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) or getattr(m, "mc_dropout", False) is True]


def _task_types(model) -> dict[str, str]:
    schema = getattr(model, "schema", None)
    return {t.name: t.type for t in schema.tasks} if schema is not None else {}


def _active(m: nn.Module) -> bool:
    return float(getattr(m, "p", 1.0)) > 0  # an nn.Dropout(0.0) is a no-op; a gate declaring mc_dropout has p > 0


@torch.no_grad()
def mc_dropout_predict(model: nn.Module, table, n_passes: int = 20, batch_size: int = 65536,
                       seed: int | None = 0, strict: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(mean, var)``: dicts task -> Float[N] over the rows of ``table`` (in order).

    The variance is computed from deviations to the first pass, so identical passes (dropout off)
    give exactly 0. With ``strict`` (the default; ``--mc-dropout N``) a model without any active dropout
    (every rate 0) and without aleatoric heads, whose variance would be 0 for every row, is refused with a
    one-line :class:`~dynarec.errors.ConfigError` naming the model and what to do.

    Example::

        mean, var = mc_dropout_predict(model, table, n_passes=20)   # var["click"]: Float[N] >= 0
    """
    if n_passes < 1:
        raise ValueError(f"n_passes: expected >= 1, got {n_passes}")
    no_dropout = strict and not any(_active(m) for m in _mc_modules(model))
    types = _task_types(model)
    was = model.training
    model.eval()
    mc = _mc_modules(model)
    for m in mc:
        m.train()
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    means: dict[str, list[torch.Tensor]] = {}
    vars_: dict[str, list[torch.Tensor]] = {}
    try:
        for batch in table.batches(batch_size):
            passes: dict[str, list[torch.Tensor]] = {}
            alea: dict[str, list[torch.Tensor]] = {}
            for _ in range(n_passes):
                out = model(batch)
                lv = model.last_log_var  # BaseModel hook: {} unless the model has aleatoric heads
                if no_dropout and not lv:
                    name = getattr(model, "registry_name", type(model).__name__)
                    raise ConfigError(f"--mc-dropout: the {name} model has no dropout (every dropout rate is 0), "
                                      "so its passes are identical and the variance is 0 for every row; train it "
                                      "with dropout (e.g. --set model.dropout=0.1) or leave --mc-dropout out")
                for t, y in out.items():
                    binary = types.get(t, "binary") == "binary"
                    passes.setdefault(t, []).append(torch.sigmoid(y) if binary else y)
                    if not binary and t in lv:
                        alea.setdefault(t, []).append(torch.exp(lv[t]))
            for t, ys in passes.items():
                y = torch.stack(ys).double()  # [T, B]
                d = y - y[0:1]
                v = (d.pow(2).mean(0) - d.mean(0).pow(2)).clamp_min(0.0)
                if t in alea:
                    v = v + torch.stack(alea[t]).double().mean(0)
                means.setdefault(t, []).append(y.mean(0).float())
                vars_.setdefault(t, []).append(v.float())
    finally:
        torch.random.set_rng_state(gen_state)
        model.train(was)
    return {t: torch.cat(v) for t, v in means.items()}, {t: torch.cat(v) for t, v in vars_.items()}


def ece(prob, label, bins: int = 15) -> float:
    """Expected calibration error: ``Σ_b (|b|/N) · |mean(label_b) − mean(prob_b)|`` over ``bins``
    equal-width bins of the predicted probability on [0, 1] (the last bin includes 1)."""
    p = torch.as_tensor(prob, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(label, dtype=torch.float64).reshape(-1)
    if p.numel() == 0:
        return float("nan")
    idx = (p * bins).long().clamp(0, bins - 1)
    sp = torch.bincount(idx, weights=p, minlength=bins)
    sy = torch.bincount(idx, weights=y, minlength=bins)
    return float((sp - sy).abs().sum() / p.numel())


@torch.no_grad()
def mc_dropout_report(model: nn.Module, table, n_passes: int = 20, batch_size: int = 65536, bins: int = 15,
                      seed: int | None = 0) -> dict:
    """``{"n_passes": N, "ece": {task: {"all": x, "domain=<name>": x}}, "ece_deterministic": {...},
    "mc_variance": {task: {...}} (mean predictive variance), "rmse": {...} (regression tasks)}``.
    ECE is reported for binary tasks only."""
    types = _task_types(model)
    mean, var = mc_dropout_predict(model, table, n_passes, batch_size, seed)
    det: dict[str, list[torch.Tensor]] = {}
    was = model.training
    model.eval()
    for b in table.batches(batch_size):
        for t, y in model(b).items():
            det.setdefault(t, []).append(torch.sigmoid(y) if types.get(t, "binary") == "binary" else y)
    model.train(was)
    point = {t: torch.cat(v) for t, v in det.items()}
    schema = getattr(model, "schema", None)
    dom = table.domain
    names = list(getattr(schema, "domain_values", []) or [])
    groups = {"all": torch.ones(len(table), dtype=torch.bool)}
    for d in torch.unique(dom).tolist():
        name = names[d - 1] if 1 <= d <= len(names) else str(d)
        groups[f"domain={name}"] = dom == d
    rep: dict = {"n_passes": n_passes, "ece": {}, "ece_deterministic": {}, "mc_variance": {}, "rmse": {}}
    for t in mean:
        y = table.labels[t]
        rep["mc_variance"][t] = {g: float(var[t][m].mean()) for g, m in groups.items() if m.any()}
        if types.get(t, "binary") == "binary":
            rep["ece"][t] = {g: ece(mean[t][m], y[m], bins) for g, m in groups.items() if m.any()}
            rep["ece_deterministic"][t] = {g: ece(point[t][m], y[m], bins) for g, m in groups.items() if m.any()}
        else:
            rep["rmse"][t] = {g: float(((mean[t][m] - y[m]) ** 2).mean().sqrt()) for g, m in groups.items() if m.any()}
    if not rep["rmse"]:
        del rep["rmse"]
    return rep
