"""Every key a model accepts has an effect (issue 12 A.5), for every registered model and every config field:
changing the field from its (small-test) value to another valid value changes the state dict (shapes or
values at the same seed), the outputs on a fixed batch (eval, or train mode at the same seed: dropout), or
the state after two identical optimiser steps (gradient-only options such as ``detach_condition``) — or the
model rejects it with a ConfigError naming the key. A key declared as used only in combination
(:class:`dynarec.models.keys.when`) is also tried together with its condition."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from dynarec.checks import check_value
from dynarec.train.config import TrainerConfig
from dynarec.errors import ConfigError
from dynarec.models import build_model, get_model_info, list_models
from dynarec.models.keys import inactive_keys, no_effect_rules, when
from dynarec.train.trainer import Trainer
from test_conformance import small_params

# Fields that choose HOW the same function is computed (results equal by design); the reason is required.
SAME_RESULT = {"star_mode": "group | gather compute identical outputs (a speed choice, "
                            "benchmarks/star_gather_vs_group.py)"}

# Another valid value where none can be derived from the type and the field's rule (synthetic schema names).
ALTERNATIVES = {
    "condition_groups": ["user"], "domain_groups": ["domain", "context"], "aux_groups": ["user"],
    "pc_groups": ["item"], "induction_groups": ["item", "author"], "feed_groups": ["user", "context"],
    "scenario_groups": ["domain", "context"], "user_groups": ["item"], "gate_groups": ["user"],
    "gate_features": ["user_id"], "position_cross": ["device"], "position_tasks": ["click"],
    "position_feature": "hour", "group_feature": "user_segment", "low_rank": 4,
    "weight_emb_w": [[16, 4], [4, 4]], "weight_emb_b": [4, 0], "pn_decay": 0.5, "condition_mode": "self-wise",
    "pn_stats_rows": 0,
}
# Extra keys that make a key usable where its use depends on the schema or on several keys.
ENABLE = {"detach_condition": {"condition_mode": "mix-wise", "condition_groups": ["domain", "user"]},
          # STAR's epoch-end refresh replaces the moving average pn_decay makes (it still acts inside an epoch)
          "pn_decay": {"pn_stats_rows": 0}}


def _alternative(f, value):
    if f.name in ALTERNATIVES:
        return ALTERNATIVES[f.name]
    r = f.metadata.get("rule", {})
    if r.get("choices"):
        return next(c for c in r["choices"] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        cand = value * 2 if value > 0 else 0.3
        try:
            check_value(f.name, cand, r) if r else None
        except ConfigError:
            cand = value / 2
        return cand
    if isinstance(value, list):
        return [*value, 4] if all(isinstance(x, int) for x in value) else value[:1]
    raise AssertionError(f"{f.name}: no alternative value for {value!r}; add one to ALTERNATIVES")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _differs(a: dict, b: dict) -> bool:
    return a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a)


def _fingerprint(name, schema, params, batch, train_batch):
    """(initial state, eval outputs, train-mode outputs, state after 2 steps) at seed 0."""
    torch.manual_seed(0)
    model = build_model(name, schema, params)
    init = _state(model)
    model.eval()
    with torch.no_grad():
        ev = {k: v.clone() for k, v in model(batch).items()}
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        tr = {k: v.clone() for k, v in model(batch).items()}
    torch.manual_seed(2)
    trainer = Trainer(model, TrainerConfig(lr=1e-2, embedding_lr=0.1, progress=False), seed=0)
    for _ in range(2):
        trainer._step(train_batch)
    if hasattr(model, "refresh_statistics"):  # the trainer's epoch-end hook (dynarec.train.norm_stats)
        model.refresh_statistics(lambda: iter([train_batch]))
    return init, ev, tr, _state(model)


def _effect(name, schema, base, alt, batch, train_batch) -> bool:
    a = _fingerprint(name, schema, base, batch, train_batch)
    b = _fingerprint(name, schema, alt, batch, train_batch)
    return any(_differs(x, y) for x, y in zip(a, b))


def _try(name, schema, key, base, alt, batch, train_batch) -> str:
    """'effect', or 'rejected' (a ConfigError naming ``key``); fails the test otherwise."""
    try:
        build_model(name, schema, alt)
    except ConfigError as e:
        assert key in str(e), f"{name}: {key}={alt[key]!r} rejected without naming the key: {e}"
        return "rejected"
    assert _effect(name, schema, base, alt, batch, train_batch), (
        f"{name}: key '{key}' accepted with {alt[key]!r} (base {base.get(key, '<default>')!r}) but nothing "
        "changed (state dict, outputs, training): make it act or reject it (dynarec.models.keys)")
    return "effect"


@pytest.mark.parametrize("name", [m.name for m in list_models()])
def test_every_key_has_an_effect_or_is_rejected(small_synth, name):
    schema, tables, _ = small_synth
    batch = tables["test"].take(torch.arange(64))
    train_batch = tables["train"].take(torch.arange(256))
    info = get_model_info(name)
    rules = no_effect_rules(info.cls)
    base = small_params(name)
    cfg = info.config_cls(**base)
    outcomes = {}
    for f in dataclasses.fields(info.config_cls):
        if f.name in SAME_RESULT:
            continue
        value = getattr(cfg, f.name)
        extra = dict(ENABLE.get(f.name, {}))
        alt = {**base, **extra, f.name: _alternative(f, value)}
        outcomes[f.name] = _try(name, schema, f.name, {**base, **extra}, alt, batch, train_batch)
        rule = rules.get(f.name)
        if isinstance(rule, when) and f.name in inactive_keys(info.cls, cfg):
            # also with the options it needs: then it must act (or the combination is rejected)
            on = {**base, **{k: v[0] for k, v in rule.conds.items()}}
            try:
                build_model(name, schema, on)
            except ConfigError:
                continue  # the enabling option itself needs what this schema lacks (e.g. a position feature)
            _try(name, schema, f.name, on, {**on, f.name: _alternative(f, value)}, batch, train_batch)
    assert outcomes, name


def test_key_without_effect_is_one_clear_line(small_synth):
    schema = small_synth[0]
    with pytest.raises(ConfigError, match=r"^model\.dnn: key 'tower_hidden' has no effect on dnn \(it has no per-task towers\)$"):
        build_model("dnn", schema, {"tower_hidden": [8]})
    with pytest.raises(ConfigError, match=r"model\.apg_dnn: key 'aggregation' has no effect.*condition_mode: mix-wise"):
        build_model("apg_dnn", schema, {"aggregation": "mean"})
    with pytest.raises(ConfigError, match=r"model\.pepnet: key 'hidden' has no effect"):
        build_model("pepnet", schema, {"hidden": [8]})
    with pytest.raises(ConfigError, match=r"model\.dnn: key 'num_experts' has no effect on dnn \(a key of "):
        build_model("dnn", schema, {"num_experts": 2})
    # from Python too: a non-default value of a key without effect
    from dynarec.models.dnn import DNN

    with pytest.raises(ConfigError, match="tower_hidden"):
        DNN(schema, DNN.Config(tower_hidden=[8]))
