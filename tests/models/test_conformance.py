"""Model conformance suite: every registered model (``list_models()``, so a new model file is covered
without writing a test) plus a few non-default variants must pass the checks of :mod:`dynarec.testing`
(batch independence, gradient reach, stop-gradient gates, signed logits, save -> load, determinism under a
seed, learning on synthetic data, table ownership, forward(batch) = forward_tensors(...)), one test per check
and case; :func:`dynarec.testing.check_model` runs them all on one class, and the suite shows that the checks
catch the public bugs of SPEC §4.
"""
from __future__ import annotations

import pytest
import torch

from dynarec.models import get_model_info, list_models
from dynarec.testing import (build_small, check_batch_independence, check_deterministic, check_forward_tensors,
                             check_gradient_reach, check_learns, check_model, check_save_load, check_signed_logits,
                             check_stop_gradient_gates, check_tables_owned, small_params, warm, warmed)

__all__ = ["CASES", "small_params"]  # benchmarks/golden.py enumerates the same cases

# Non-default options worth the same guarantees (only for models that are registered).
VARIANTS = [
    ("dnn", {"latent_cross": True}),
    ("ppnet", {"gate_position": "output"}),
    ("epnet", {"epnet_granularity": "dim", "epnet_input": "domain_only"}),
    ("pepnet", {"gate_position": "output", "epnet_granularity": "dim"}),
    ("poso", {"form": "mmoe"}),
    ("poso", {"form": "mmoe", "expert_gate": "scalar"}),
    ("lhuc", {"gate_init": "default"}),
]


def _names():
    return [m.name for m in list_models()]


def _cases():
    names = _names()
    cases = [pytest.param(n, {}, id=n) for n in names]
    for n, p in VARIANTS:
        if n in names:
            cases.append(pytest.param(n, p, id=n + "[" + ",".join(f"{k}={v}" for k, v in p.items()) + "]"))
    return cases


CASES = _cases()
_WARM_CACHE: dict[str, dict] = {}
_build, _warm = build_small, warm  # the names other test files import


def _warmed(name, schema, params, table):
    return warmed(name, schema, params, table, _WARM_CACHE)


@pytest.fixture(scope="module")
def data(small_synth):
    return small_synth


@pytest.mark.parametrize("name,params", CASES)
def test_batch_independence(data, name, params):
    schema, tables, _ = data
    check_batch_independence(_warmed(name, schema, params, tables["train"]), tables["test"], name)


@pytest.mark.parametrize("name,params", CASES)
def test_gradient_reach(data, name, params):
    schema, tables, _ = data
    check_gradient_reach(_warmed(name, schema, params, tables["train"]), tables["train"], name)


GATED = [c for c in CASES if hasattr(get_model_info(c.values[0]).cls, "record_gates")]


@pytest.mark.parametrize("name,params", GATED)
def test_stop_gradient_gate_inputs(data, name, params):
    schema, tables, _ = data
    check_stop_gradient_gates(_warmed(name, schema, params, tables["train"]), tables["train"], name)


@pytest.mark.parametrize("name,params", CASES)
def test_logits_take_both_signs(data, name, params):
    schema, tables, _ = data
    check_signed_logits(lambda: build_small(name, schema, params), tables["train"], name)


@pytest.mark.parametrize("name,params", CASES)
def test_save_load_identical(data, name, params):
    schema, tables, _ = data
    check_save_load(_warmed(name, schema, params, tables["train"]), lambda: build_small(name, schema, params, seed=7),
                    small_params(name, params), tables["test"], name)


@pytest.mark.parametrize("name,params", CASES)
def test_deterministic_under_seed(data, name, params):
    schema, tables, _ = data
    check_deterministic(_warmed(name, schema, params, tables["train"]),  # seed 0 + 3 steps (cached)
                        lambda seed: build_small(name, schema, params, seed=seed), tables["train"], tables["test"], name)


@pytest.mark.parametrize("name", _names())
def test_learns_on_synthetic(data, name):
    schema, tables, _ = data
    check_learns(build_small(name, schema, {}), tables, name)


@pytest.mark.parametrize("name,params", CASES)
def test_tables_owned_by_the_collection(data, name, params):
    schema, _, _ = data
    check_tables_owned(build_small(name, schema, params), name)


@pytest.mark.parametrize("name,params", CASES)
def test_forward_equals_forward_tensors(data, name, params):
    schema, tables, _ = data
    check_forward_tensors(_warmed(name, schema, params, tables["train"]), tables["test"], name)


def test_check_model_passes_a_registered_model_and_refuses_an_unregistered_class(data):
    from dynarec.models.dnn import DNN

    check_model(DNN, data=data)

    class NotRegistered(DNN):
        pass

    with pytest.raises(ValueError, match="not a registered model class"):
        check_model(NotRegistered, data=data)


def test_check_model_names_the_broken_property_of_a_registered_model(data):
    from dynarec.models.dnn import DNN
    from dynarec.models.registry import REGISTRY, register

    class ReluLogit(DNN):  # STAR's public bug (SPEC §4): a ReLU on the output logit
        def forward_tensors(self, *a, **k):
            return {t: torch.relu(v) for t, v in super().forward_tensors(*a, **k).items()}

    register("relu_logit_check")(ReluLogit)
    try:
        with pytest.raises(AssertionError, match=r"relu_logit_check.*(no gradient|logits stuck)"):
            check_model(ReluLogit, data=data)
    finally:
        del REGISTRY["relu_logit_check"]


# ---- the suite itself catches the public bugs of SPEC §4 -------------------------------------------
def _bugged(kind, schema):
    from dynarec.models.dnn import DNN

    class Bugged(DNN):
        def forward(self, batch):
            if kind == "detached_main_path":  # Scenario-Wise-Rec PPNet: sg on the main path
                h = self.mlp(self.flat_input(batch).detach())
                return {t: head(h).squeeze(-1) for t, head in self.heads.items()}
            out = super().forward(batch)
            if kind == "batch_mixing":  # M2M: rows attend to the other rows of the batch
                return {t: v + 0.1 * v.mean() for t, v in out.items()}
            if kind == "relu_logit":  # STAR: ReLU on the output logit
                return {t: torch.relu(v) for t, v in out.items()}
            if kind == "forward_not_tensors":  # forward(batch) with logic forward_tensors does not have
                return {t: v + batch.labels[t] for t, v in out.items()}
            return out

    torch.manual_seed(0)
    model = Bugged(schema, DNN.Config(embed_dim=4, hidden=[16, 8]))
    if kind == "stray_table":  # an id table outside the collection: trained as a dense parameter, never evicted
        model.stray = torch.nn.Embedding(10, 4, sparse=True)
    if kind == "layer_private_table":  # a layer built without the model's collection (a private one)
        from dynarec.nn.cross import LatentCross

        model.cross = LatentCross([5], 4)
    return model


@pytest.mark.parametrize("kind,check", [("batch_mixing", "batch"), ("detached_main_path", "grad"),
                                        ("relu_logit", "sign"), ("stray_table", "tables"),
                                        ("layer_private_table", "tables"), ("forward_not_tensors", "tensors")])
def test_suite_catches_known_bugs(data, kind, check):
    schema, tables, _ = data
    with pytest.raises(AssertionError):
        if check == "batch":
            model = _bugged(kind, schema)
            warm(model, tables["train"])
            check_batch_independence(model, tables["test"], kind)
        elif check == "grad":
            check_gradient_reach(_bugged(kind, schema), tables["train"], kind)
        elif check == "tables":
            check_tables_owned(_bugged(kind, schema), kind)
        elif check == "tensors":
            check_forward_tensors(_bugged(kind, schema), tables["test"], kind)
        else:
            check_signed_logits(lambda: _bugged(kind, schema), tables["train"], kind)
