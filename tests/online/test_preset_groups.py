"""``online.preset: pepnet_online`` follows PEPNet's embedding / DNN split for EVERY id-indexed table (the
gate-prior table too: Adagrad at 0.05, not Adam at 5e-6), and a re-admitted id's rows then restart from exactly
a fresh Adagrad state: its first update equals the one a new Adagrad makes."""
import pytest
import torch

from dynarec.data.schema import Schema
from dynarec.online.config import load_online_config
from dynarec.online.runner import pass_files
from dynarec.online.state import fresh_state

from tests.online.conftest import SMALL


def _state(stream, *sets):
    cfg = load_online_config(None, [s for s in SMALL if not s.startswith("trainer.lr")] + list(sets), "pepnet")
    return fresh_state(cfg, Schema.load(stream / "schema.yaml"), pass_files(stream)[0])


def _optimizer_of(st, p):
    found = [(type(o).__name__, g["lr"]) for o in st.step.optimizers for g in o.param_groups
             if any(q is p for q in g["params"])]
    assert len(found) == 1
    return found[0]


def test_the_preset_trains_every_table_with_adagrad_at_its_lr(stream):
    st = _state(stream, "online.preset=pepnet_online")
    names = list(st.model.tables.specs)
    assert "prior" in names  # PEPNet's gate-prior table is there
    for n in names:
        assert st.model.tables.specs[n].group == "embedding"
        assert _optimizer_of(st, st.model.tables[n].weight) == ("Adagrad", 0.05), n
    dense = [p for p in st.model.parameters() if not any(p is st.model.tables[n].weight for n in names)]
    assert dense and all(_optimizer_of(st, p) == ("Adam", 5e-6) for p in dense)


def test_without_the_preset_the_gate_prior_table_keeps_the_dense_group(stream):
    st = _state(stream)
    prior = [n for n, s in st.model.tables.specs.items() if s.group == "dense"]
    assert prior and all(_optimizer_of(st, st.model.tables[n].weight)[0] == "Adam" for n in prior)


def test_a_readmitted_row_restarts_from_a_fresh_adagrad_state(stream):
    st = _state(stream, "online.preset=pepnet_online")
    # a few updates: every table's rows of slots 1..3 get optimizer state
    for name, off in st.keeper.targets:
        w = st.model.tables[name].weight
        for _ in range(3):
            for o in st.step.optimizers:
                o.zero_grad()
            w[off + 1:off + 4].pow(2).sum().backward()
            for o in st.step.optimizers:
                o.step()
    slots = torch.tensor([2])
    st.keeper.on_free(slots)
    st.keeper.on_admit(slots)  # the id that takes slot 2 is new
    g = torch.randn(3, generator=torch.Generator().manual_seed(0))
    for name, off in st.keeper.targets:
        w = st.model.tables[name].weight
        opt = next(o for o in st.step.optimizers if any(p is w for grp in o.param_groups for p in grp["params"]))
        row = off + 2
        assert torch.equal(opt.state[w]["sum"][row], torch.zeros(w.shape[1]))  # the initial accumulator
        assert opt.state[w]["sum"][off + 1].abs().sum() > 0  # the other rows keep theirs
        before = w[row].detach().clone()
        for o in st.step.optimizers:
            o.zero_grad()
        (w[row] * g[0]).sum().backward()
        opt.step()
        # a new Adagrad on this row alone, same lr: its first update
        p = torch.nn.Parameter(before.clone())
        ref = torch.optim.Adagrad([p], lr=0.05)
        (p * g[0]).sum().backward()
        ref.step()
        # the same float32 formula (fused or not): a few roundings of |w| + lr apart at most
        tol = 4 * torch.finfo(torch.float32).eps * (float(before.abs().max()) + 0.05)
        assert torch.allclose(w[row].detach(), p.detach(), rtol=0, atol=tol), name
