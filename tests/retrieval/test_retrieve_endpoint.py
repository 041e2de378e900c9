"""``POST /retrieve`` of a real ``dynarec serve --retriever CHECKPOINT`` subprocess on 127.0.0.1: its answers
equal ``dynarec.retrieval.lookup.retrieve`` (and so the brute-force top-k with seen items masked, tested in
test_retrieval_cli.py) for the same users, and each client mistake gets its 4xx while the server keeps
answering both /retrieve and /predict."""
import pytest

from dynarec.cli import main
from dynarec.retrieval.lookup import retrieve

httpx = pytest.importorskip("httpx", reason="serving tests need the serve extra: pip install 'dynarec[serve]'")
pytest.importorskip("httptools", reason="serving needs the serve extra: pip install 'dynarec[serve]'")


def test_retrieve_endpoint_equals_the_lookup_and_refuses_client_mistakes(llo_folder, tmp_path, capsys):
    from tests.serve.test_server import Server

    assert main(["train", "--model", "two_tower", "--data", str(llo_folder), "--out", str(tmp_path / "tt"),
                 "--epochs", "3", "--batch-size", "64", "--set", "model.loss=sampled", "--set", "model.hidden=[]",
                 "--set", "trainer.progress=false"]) == 0
    assert main(["data", "synthetic", "--rows", "2000", "--out", str(tmp_path / "rank")]) == 0
    assert main(["train", "--model", "dnn", "--data", str(tmp_path / "rank"), "--epochs", "1",
                 "--set", "trainer.progress=false", "--out", str(tmp_path / "ck")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "bundle"),
                 "--format", "torch"]) == 0
    capsys.readouterr()
    users = ["u3", "u10", "u7"]
    want = retrieve(tmp_path / "tt", users, k=10, index="exact")
    srv = Server(tmp_path / "bundle", backend="eager", extra=("--retriever", str(tmp_path / "tt")))
    try:
        r = httpx.post(srv.url + "/retrieve", json={"users": users, "k": 10, "index": "exact"}, timeout=30)
        assert r.status_code == 200, r.text
        got = r.json()["results"]
        assert [g["items"] for g in got] == [w["items"] for w in want]
        for g, w in zip(got, want):
            assert g["user"] == w["user"] and g["scores"] == pytest.approx(w["scores"], rel=1e-6)
        flat = httpx.post(srv.url + "/retrieve", json={"users": ["u3"], "k": 10}, timeout=30).json()["results"]
        assert flat[0]["items"] == want[0]["items"]  # FAISS flat = exact
        bad = [({"users": []}, 422), ({"users": ["u3"], "k": 0}, 422), ({"users": ["u3"], "k": "5"}, 422),
               ({"users": ["u3"], "index": "ivf"}, 422), ({"users": ["nobody"]}, 422),
               ({"users": [["u3"]]}, 422), ({"user": "u3"}, 422), ({"users": ["u3"], "domain": "mars"}, 422)]
        for body, status in bad:
            r = httpx.post(srv.url + "/retrieve", json=body, timeout=30)
            assert r.status_code == status, (body, r.status_code, r.text)
            assert "\n" not in r.json()["error"] and r.json()["error"]
        assert httpx.post(srv.url + "/retrieve", content=b"{not json", timeout=30).status_code == 400
        assert httpx.get(srv.url + "/retrieve", timeout=30).status_code == 405
        # still answering both routes
        assert httpx.post(srv.url + "/retrieve", json={"users": ["u10"], "k": 3}, timeout=30).status_code == 200
        assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 200
        metrics = httpx.get(srv.url + "/metrics", timeout=30).text
        assert 'endpoint="/retrieve",status="422"' in metrics
    finally:
        srv.close()


def test_request_parsing_limits_and_id_types():
    from dynarec.serve.retrieve_route import RetrieveError, parse_request

    with pytest.raises(RetrieveError, match="at most 2"):
        parse_request({"users": ["a", "b", "c"]}, max_users=2)
    assert parse_request({"users": [5, "x"], "k": 7}, 10) == (["5", "x"], 7, "flat", None)
