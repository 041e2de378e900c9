"""The retrieval models in the registry, their config keys, the leave-last-out split and the retrieval view
of a prepared folder."""
import json

import numpy as np
import pytest
import torch

from dynarec.cli import main
from dynarec.data.prepare import load_prepared, prepare_table
from dynarec.errors import ConfigError, DataError
from dynarec.models import build_model, list_models
from dynarec.retrieval.dataset import build_retrieval_data

from .conftest import retrieval_schema


def test_models_lists_retrieval_kind_and_ranking_list_stays_ranking(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["two_tower"]["kind"] == "retrieval" and rows["popularity"]["kind"] == "retrieval"
    assert rows["dnn"]["kind"] == "ranking"
    ranking = {m.name for m in list_models()}  # what the ranking trainer / conformance suite enumerate
    assert "dnn" in ranking and not {"two_tower", "popularity"} & ranking
    assert {m.name for m in list_models("retrieval")} == {"two_tower", "popularity"}


@pytest.mark.parametrize("params, msg", [
    ({"loss": "sgram"}, "model.two_tower.loss: expected one of inbatch | sampled | sogram | sagram"),
    ({"loss": "inbatch", "alpha": 0.5}, "key 'alpha' has no effect on two_tower (only used with loss: sogram)"),
    ({"loss": "sogram", "beta": 0.5}, "key 'beta' has no effect on two_tower (only used with loss: sagram)"),
    ({"loss": "sampled", "lam": 2.0}, "key 'lam' has no effect"),
    ({"loss": "sogram", "negatives": 8}, "key 'negatives' has no effect"),
    ({"loss": "sogram", "logq": False}, "key 'logq' has no effect"),
    ({"loss": "sogram", "alpha": 1.5}, "model.two_tower.alpha"),
    ({"temperature": 0}, "model.two_tower.temperature"),
    ({"user_tower": "star"}, "model.two_tower.user_tower"),
    ({"tower_hidden": [8]}, "key 'tower_hidden' has no effect"),
])
def test_loss_keys_are_validated(llo_folder, params, msg):
    schema, _ = load_prepared(llo_folder)
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        build_model("two_tower", schema, params)


def test_loss_key_errors_are_one_line_exit_2(llo_folder, tmp_path, capsys):
    code = main(["train", "--model", "two_tower", "--data", str(llo_folder), "--out", str(tmp_path / "r"),
                 "--set", "model.loss=inbatch", "--set", "model.alpha=0.3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'alpha' has no effect on two_tower" in err
    assert not (tmp_path / "r").exists()


def test_each_gramian_key_changes_the_model_step(llo_folder):
    """Every accepted key acts: the trained weights differ when it changes (the keys' 'has an effect' rule)."""
    from dynarec.retrieval.step import RetrievalStep
    from dynarec.train.config import TrainerConfig

    schema, tables = load_prepared(llo_folder)
    data = build_retrieval_data(schema, tables)
    batches = [data.train.take(torch.randperm(len(data.train), generator=torch.Generator().manual_seed(i))[:64])
               for i in range(8)]  # varied batches: the streaming frequencies (logq) need gaps between repeats

    def after(params):
        torch.manual_seed(0)
        m = build_model("two_tower", schema, {"hidden": [], "dim": 8, **params})
        st = RetrievalStep(m, TrainerConfig(), data, torch.Generator().manual_seed(0))
        for b in batches:
            st(b)
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    for base, changed in [({"loss": "sogram"}, {"alpha": 0.5}), ({"loss": "sagram"}, {"beta": 0.5}),
                          ({"loss": "sogram"}, {"lam": 3.0}), ({"loss": "sogram"}, {"pair_loss": "logistic"}),
                          ({"loss": "sampled"}, {"negatives": 7}), ({"loss": "sampled"}, {"sampler": "popularity"}),
                          ({"loss": "inbatch"}, {"logq": False}), ({"loss": "inbatch"}, {"temperature": 0.5})]:
        assert not torch.allclose(after(base), after({**base, **changed})), (base, changed)


def test_leave_last_out_split_properties(raw_table, llo_folder):
    import pyarrow.parquet as pq

    user = np.array(raw_table.column("user").to_pylist())
    item = np.array(raw_table.column("item").to_pylist())
    like, ts = raw_table.column("like").to_numpy(), raw_table.column("ts").to_numpy()
    parts = {s: pq.read_table(llo_folder / f"{s}.parquet").column("_row").to_numpy() for s in ("train", "valid", "test")}
    all_rows = np.concatenate(list(parts.values()))
    assert len(all_rows) == len(user) and len(np.unique(all_rows)) == len(user)  # a partition of the rows
    for u in np.unique(user):
        liked = np.flatnonzero((user == u) & (like == 1))
        by_time = liked[np.argsort(ts[liked])]
        test = [r for r in parts["test"] if user[r] == u]
        valid = [r for r in parts["valid"] if user[r] == u]
        assert test == [by_time[-1]] and valid == [by_time[-2]]          # latest like, the one before
        train = [r for r in parts["train"] if user[r] == u]
        assert sorted(train) == sorted(set(np.flatnonzero(user == u)) - {by_time[-1], by_time[-2]})
    assert (like[parts["test"]] == 1).all() and len(set(item[parts["test"]])) > 1


def test_leave_last_out_needs_a_timestamp(raw_table, tmp_path):
    s = retrieval_schema()
    s.timestamp = None
    with pytest.raises(DataError, match="leave_last_out needs 'user' and 'timestamp'"):
        prepare_table(raw_table, s, None, split="leave_last_out")
    with pytest.raises(ConfigError, match="fractions do not apply"):
        prepare_table(raw_table, retrieval_schema(), None, split="leave_last_out", fractions=(0.7, 0.2, 0.1))


def test_retrieval_view_positives_corpus_and_seen(raw_table, llo_folder):
    schema, tables = load_prepared(llo_folder)
    data = build_retrieval_data(schema, tables)
    n_likes = int((raw_table.column("like").to_numpy() == 1).sum())
    users = raw_table.column("user").to_pylist()
    assert len(data.train) == n_likes - 2 * len(set(users))             # likes minus test and valid
    assert len(data.item_ids) == len(set(raw_table.column("item").to_pylist()))  # corpus = every item
    assert len(data.query_user) == len(set(users))                      # domain is a user attribute here
    ev = data.evals["test"]
    assert len(ev.queries) == len(set(users)) and int(ev.relevant.lengths().max()) == 1
    # seen at test time = every train and valid interaction (likes and dislikes)
    u0 = int(data.query_user[ev.queries[0]])
    assert len(ev.seen.row(u0)) == 14 + 4 - 1
    with pytest.raises(ConfigError, match="model.task: unknown task 'click'"):
        build_retrieval_data(schema, tables, "click")


def test_task_option_picks_the_positives(llo_folder):
    schema, tables = load_prepared(llo_folder)
    for t in tables.values():
        t.labels["dislike"] = 1 - t.labels["like"]
    from dynarec.data.schema import Task

    schema.tasks.append(Task("dislike"))
    data = build_retrieval_data(schema, tables, "dislike")
    assert len(data.train) == int(tables["train"].labels["dislike"].sum())


@pytest.mark.parametrize("tower", ["pepnet", "apg"])
def test_dynamic_user_tower_depends_on_the_domain_and_trains(llo_folder, tower):
    from dynarec.retrieval.step import RetrievalStep
    from dynarec.train.config import TrainerConfig

    schema, tables = load_prepared(llo_folder)
    data = build_retrieval_data(schema, tables)
    torch.manual_seed(0)
    m = build_model("two_tower", schema, {"user_tower": tower, "hidden": [16], "dim": 8})
    b = data.queries.take(torch.arange(4))
    other = data.queries.take(torch.arange(4))
    other.sparse[:, data.queries.domain_col] = 3 - other.sparse[:, data.queries.domain_col]  # swap the 2 domains
    x = lambda t: (t.sparse, t.dense, t.domain, t.sequences)  # noqa: E731
    from dynarec.models.base import ModelInputs

    st = RetrievalStep(m, TrainerConfig(), data)
    for _ in range(3):
        st(data.train.take(torch.arange(64)))
    u1, u2 = m.query_vectors(ModelInputs(*x(b))), m.query_vectors(ModelInputs(*x(other)))
    assert not torch.allclose(u1, u2)                                 # same users, other domain: other vector
    gen = [n for n, p in m.named_parameters() if "gate" in n or "hypernet" in n]  # the domain-conditioned part
    assert gen, [n for n, _ in m.named_parameters()]


def test_apg_user_tower_needs_a_hidden_layer(llo_folder):
    schema, _ = load_prepared(llo_folder)
    with pytest.raises(ConfigError, match="apg generates the hidden layers"):
        build_model("two_tower", schema, {"user_tower": "apg", "hidden": []})


def test_default_sogram_estimate_carries_no_lag(llo_folder):
    """At the default α the SOGram estimate after a step is exactly that batch's Gramian (no moving average
    lagging the towers: α = 0.1 kept ML-100K below popularity, docs/benchmarks.md), and SAGram's query
    cache is weighted by each query's share of the training pairs (the frequency the batches draw it with)."""
    from dynarec.retrieval.gramian import gramian
    from dynarec.retrieval.step import RetrievalStep
    from dynarec.train.config import TrainerConfig

    schema, tables = load_prepared(llo_folder)
    data = build_retrieval_data(schema, tables)
    torch.manual_seed(0)
    m = build_model("two_tower", schema, {"loss": "sogram"})
    st = RetrievalStep(m, TrainerConfig(), data, torch.Generator().manual_seed(0))
    for k in range(3):
        st(data.train.take(torch.arange(k * 64, (k + 1) * 64)))
    est = st.state["u"]
    assert est.alpha == 1.0 and int(est.steps) == 3
    sa = RetrievalStep(build_model("two_tower", schema, {"loss": "sagram"}), TrainerConfig(), data).state["u"]
    share = torch.bincount(data.train_query, minlength=len(data.query_user)).float() / len(data.train_query)
    assert torch.allclose(sa.weight, share)
    # α = 1: Ĝ_u is the Gramian of the batch it was folded from, whatever came before
    u = torch.randn(5, est.gram.shape[0], generator=torch.Generator().manual_seed(1))
    assert torch.allclose(est.update(u), gramian(u))
