"""`dynarec train / evaluate / retrieve` on retrieval models: the JSON contract, a learned signal with a known
answer (two_tower beats popularity), and lookups equal to a brute-force top-k with seen items masked."""
import json

import pytest
import torch

from dynarec.cli import main
from dynarec.retrieval.lookup import Retriever, retrieve

KEYS = [f"{m}@{k}" for m in ("recall", "ndcg", "mrr", "hitrate") for k in (10, 20, 50)]
TRAIN = ["--epochs", "8", "--batch-size", "64", "--seed", "0"]


def _train(capsys, folder, out, *extra):
    assert main(["train", "--data", str(folder), "--out", str(out), "--json", *TRAIN, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_json_contract_and_learned_signal(llo_folder, tmp_path, capsys):
    tt = _train(capsys, llo_folder, tmp_path / "tt", "--model", "two_tower",
                "--set", "model.loss=sampled", "--set", "model.negatives=32", "--set", "model.hidden=[]")
    pop = _train(capsys, llo_folder, tmp_path / "pop", "--model", "popularity")
    for res in (tt, pop):
        assert set(KEYS) <= set(res["metrics"])
        for k in KEYS:
            assert set(res["metrics"][k]) == {"all", "domain=old", "domain=young"}
            assert 0 <= res["metrics"][k]["all"] <= 1
        assert res["checkpoint"] == str(tmp_path / ("tt" if res is tt else "pop"))
    # known answer: the test item is one of the 8 unseen items of the user's cluster, out of 62 unseen items
    assert tt["metrics"]["recall@10"]["all"] > 0.65, (tt["metrics"]["recall@10"], pop["metrics"]["recall@10"])
    assert tt["metrics"]["recall@10"]["all"] > pop["metrics"]["recall@10"]["all"] + 0.4
    # evaluate on the checkpoint gives the same metrics as the end of training
    assert main(["evaluate", "--checkpoint", str(tmp_path / "tt"), "--data", str(llo_folder), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["metrics"]["recall@10"] == pytest.approx(tt["metrics"]["recall@10"])
    assert ev["metrics"]["ndcg@50"] == pytest.approx(tt["metrics"]["ndcg@50"])


@pytest.mark.parametrize("loss", ["inbatch", "sogram", "sagram"])
def test_other_losses_learn_the_clusters(llo_folder, tmp_path, capsys, loss):
    # Gramian losses: λ = 10; SOGram at this tiny batch (64) needs a slow average (α = 0.01)
    extra = {"sogram": ["--set", "model.lam=10", "--set", "model.alpha=0.01"],
             "sagram": ["--set", "model.lam=10"]}.get(loss, [])
    res = _train(capsys, llo_folder, tmp_path / loss, "--model", "two_tower", "--set", f"model.loss={loss}",
                 "--set", "model.hidden=[]", *extra)
    assert res["metrics"]["recall@10"]["all"] > 0.6, res["metrics"]["recall@10"]


def test_retrieve_equals_brute_force_with_seen_masked(llo_folder, tmp_path, capsys):
    import pyarrow.parquet as pq

    _train(capsys, llo_folder, tmp_path / "tt", "--model", "two_tower", "--set", "model.loss=sampled",
           "--set", "model.hidden=[]")
    ck = tmp_path / "tt"
    blob = torch.load(ck / "retrieval.pt", weights_only=False)
    enc = json.loads((llo_folder / "encoders.json").read_text())["categorical"]
    users, items = enc["user"], enc["item"]
    tr = pq.read_table(llo_folder / "train.parquet")
    tr_user, tr_item = tr.column("user").to_numpy(), tr.column("item").to_numpy()
    expected = {}
    for raw in ("u3", "u10"):
        uid = users.index(raw) + 1
        q = blob["query_vectors"][int(torch.nonzero(blob["query_user"] == uid)[0])]
        scores = blob["item_vectors"] @ q
        seen = set(tr_item[tr_user == uid].tolist())                # every training interaction of the user
        order = [int(i) for i in torch.argsort(scores, descending=True) if int(blob["item_ids"][i]) not in seen]
        expect = expected[raw] = [items[int(blob["item_ids"][i]) - 1] for i in order[:20]]
        for index in ("exact", "flat"):
            assert main(["retrieve", "--checkpoint", str(ck), "--user", raw, "--k", "20", "--index", index,
                         "--json"]) == 0
            got = json.loads(capsys.readouterr().out)["results"][0]
            assert got["items"] == expect, index
            assert got["scores"] == pytest.approx(sorted(scores[order[:20]].tolist(), reverse=True), rel=1e-5)
        assert not set(got["items"]) & {items[i - 1] for i in seen}
    # the function a server calls: same answer, several users at once
    assert [r["items"] for r in retrieve(ck, ["u3", "u10"], k=20)] == [expected["u3"], expected["u10"]]
    out = retrieve(Retriever(ck), ["u3", "u10"], k=5, index="exact")
    assert [r["user"] for r in out] == ["u3", "u10"] and all(len(r["items"]) == 5 for r in out)


def test_retrieve_hnsw_reports_recall_and_errors_are_one_line(llo_folder, tmp_path, capsys):
    _train(capsys, llo_folder, tmp_path / "tt", "--model", "two_tower", "--epochs", "1", "--set", "model.hidden=[]")
    ck = str(tmp_path / "tt")
    assert main(["retrieve", "--checkpoint", ck, "--user", "u5", "--k", "10", "--index", "hnsw", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0.0 <= res["ann_recall"] <= 1.0 and len(res["results"][0]["items"]) == 10
    assert Retriever(ck).ann_recall(10, "flat") == 1.0                 # FAISS flat is exact
    for argv, msg in ((["--user", "nobody"], "user 'nobody' is not a user of the training data"),
                      (["--user", "u5", "--k", "0"], "--k: expected a number >= 1"),
                      (["--user", "u5", "--domain", "mars"], "--domain: unknown domain 'mars'")):
        assert main(["retrieve", "--checkpoint", ck, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
    assert main(["retrieve", "--checkpoint", str(tmp_path), "--user", "u5"]) == 2
    assert "no retrieval.pt" in capsys.readouterr().err


def test_worse_retrieval_run_never_replaces_a_better_one(llo_folder, tmp_path, capsys):
    """The better-run rule of ranking runs holds for retrieval: a run scoring a lower validation recall@50 on
    the same validation split is refused (exit 2, one line) and the folder stays byte for byte; --overwrite
    replaces it; a collapsed fit (the loss far above its start) stops with one line naming the lr."""
    out = tmp_path / "tt"
    good = ["--model", "two_tower", "--set", "model.loss=sampled", "--set", "model.hidden=[]"]
    _train(capsys, llo_folder, out, *good)
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    worse = [*good, "--set", "trainer.embedding_lr=1e-7", "--epochs", "1"]  # one tiny-lr epoch: random vectors
    assert main(["train", "--data", str(llo_folder), "--out", str(out), "--seed", "0", "--batch-size", "64",
                 *worse]) == 2
    err = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("epoch ")]  # less the progress bar
    assert len(err) == 1 and "better validation recall@50" in err[0] and "--overwrite" in err[0], err
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    assert main(["train", "--data", str(llo_folder), "--out", str(out), "--seed", "0", "--batch-size", "64",
                 *worse, "--overwrite"]) == 0
    capsys.readouterr()
    assert (out / "model.pt").read_bytes() != before["model.pt"]
    assert main(["train", "--data", str(llo_folder), "--out", str(tmp_path / "boom"), "--seed", "0",
                 "--batch-size", "64", "--epochs", "2", *good, "--set", "model.score=dot", "--set", "trainer.embedding_lr=1e4"]) == 2
    err = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("epoch ")]
    assert len(err) == 1 and ("collapsed" in err[0] or "diverged" in err[0]) and "embedding_lr 10000" in err[0], err
    assert not (tmp_path / "boom" / "model.pt").exists()
