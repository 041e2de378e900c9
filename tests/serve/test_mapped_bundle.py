"""The memory-mapped serving bundle (dynarec.serve.mapped / lookup): a feature table at or above
``map_mb`` is a raw float32 file beside the exported graph, which starts after its lookup; smaller tables
stay in the graph. Defining properties: the bundle's backends, loaded from disk, give the ORIGINAL in-memory
model's outputs to the bundle's own bound (1e-5: float32 re-association of the same graph); the exported
program holds no copy of a mapped table; the file is the table's rows, row-major, with the digest its header
states; a model built from the bundle reads those rows in place (a memmap, nothing copied)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from dynarec.serve.backends import load_backend
from dynarec.serve.entry import TensorEntry, batch_inputs, example_batch
from dynarec.serve.export import PARITY_TOL, export_bundle
from dynarec.serve.mapped import feature_layers
from dynarec.testing import small_params, warmed
from dynarec.train.checkpoint import save_checkpoint

pytest.importorskip("onnxruntime", reason="ONNX Runtime is an optional extra: pip install 'dynarec[onnx]'")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript: pip install 'dynarec[onnx]'")

# deepfm: the fused table (dim 8) is mapped, its first-order table (one column per task) stays in the graph;
# pepnet: the fused table mapped, its gate networks' inputs read it; the schema has dense and sequence features.
MODELS = ["deepfm", "pepnet", "dnn"]


def _big_and_small(model):
    sizes = sorted((layer.weight.weight.numel() * 4, path) for path, layer in feature_layers(model))
    return sizes[-1], sizes[:-1]


@pytest.mark.parametrize("name", MODELS)
def test_mapped_bundle_equals_the_eager_model(name, small_synth, tmp_path):
    schema, tables, _ = small_synth
    model = warmed(name, schema, {}, tables["train"]).eval()
    save_checkpoint(tmp_path / "run", model, small_params(name))
    (big, big_path), small = _big_and_small(model)
    map_mb = (big - 1) / (1 << 20)  # just under the largest table: it alone is mapped
    m = export_bundle(tmp_path / "run", tmp_path / "b", "all", map_mb=map_mb)
    assert [t["layer"] for t in m["mapped"]["tables"]] == [big_path]
    assert max(max(v.values()) for v in m["parity"].values()) <= PARITY_TOL
    w = dict(feature_layers(model))[big_path].weight.weight.detach()
    raw = (tmp_path / "b" / "table_0.f32").read_bytes()
    head = json.loads((tmp_path / "b" / "table_0.json").read_text())
    assert head["shape"] == list(w.shape) and head["sha256"] == hashlib.sha256(raw).hexdigest()
    assert torch.equal(torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(w.shape).copy()), w)
    program = torch.export.load(str(tmp_path / "b" / "model.pt2"))
    assert all(t.numel() < w.numel() for t in program.state_dict.values())  # the table is not in the graph
    assert bool(small) == (name == "deepfm")  # deepfm's first-order table: a small feature table ...
    assert all(any(t.numel() * 4 == b for t in program.state_dict.values()) for b, _ in small)  # ... in the graph
    merged = warmed(name, schema, {}, tables["train"]).eval()
    merged.merge_for_inference()
    entry = TensorEntry(merged).eval()
    for be in ("torch", "onnx", "eager"):
        run = load_backend(tmp_path / "b", be)
        for n in (1, 5, 300):
            args = batch_inputs(schema, example_batch(schema, n, seed=100 + n))
            with torch.no_grad():
                ref = entry(*args)
            for r, g in zip(ref, run(args)):
                torch.testing.assert_close(torch.as_tensor(g), r, atol=PARITY_TOL, rtol=0)


def test_a_bundle_model_reads_the_table_file_not_a_copy(small_synth, tmp_path):
    from dynarec.metrics import evaluate_model
    from dynarec.serve.mapped_load import load_mapped_model
    from dynarec.serve.sources import read_manifest

    schema, tables, _ = small_synth
    model = warmed("dnn", schema, {}, tables["train"]).eval()
    save_checkpoint(tmp_path / "run", model, small_params("dnn"))
    export_bundle(tmp_path / "run", tmp_path / "b", "torch", map_mb=0)
    got, _ = load_mapped_model(tmp_path / "b", read_manifest(tmp_path / "b"))
    assert got.embedding.weight.weight.shape[0] == 0  # no row of the table in the model
    pt = torch.load(tmp_path / "b" / "model.pt", weights_only=False)
    small, full = (tmp_path / "b" / "model.pt").stat().st_size, (tmp_path / "run" / "model.pt").stat().st_size
    assert pt["format"] and small < full  # model.pt holds the table empty
    # the rows read per batch, summed as the layer's own forward sums them: the same metrics, exactly
    assert evaluate_model(got, tables["test"]) == evaluate_model(model, tables["test"])
    f = tmp_path / "b" / "table_0.f32"
    f.write_bytes(np.zeros(f.stat().st_size, dtype=np.uint8).tobytes())  # the rows come from the file
    assert evaluate_model(got, tables["test"]) != evaluate_model(model, tables["test"])


def test_a_corrupted_table_file_is_one_error_naming_it(small_synth, tmp_path):
    from dynarec.errors import DynarecError
    from dynarec.serve.loader import read_bundle

    schema, tables, _ = small_synth
    model = warmed("dnn", schema, {}, tables["train"]).eval()
    save_checkpoint(tmp_path / "run", model, small_params("dnn"))
    export_bundle(tmp_path / "run", tmp_path / "b", "torch", map_mb=0)
    f = tmp_path / "b" / "table_0.f32"
    data = bytearray(f.read_bytes())
    data[100] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(DynarecError, match="table_0.f32: checksum mismatch"):
        read_bundle(tmp_path / "b")


def test_the_serving_lookup_reads_the_rows_it_is_asked_for(tmp_path):
    from dynarec.serve.mapped import RowFile, weight_blocks, write_table

    w = torch.randn(1000, 12)
    write_table(tmp_path, 0, "t", weight_blocks(w, 64), 1000, 12)
    rows = RowFile(tmp_path, 0)
    idx = np.array([0, 1, 2, 7, 63, 64, 65, 500, 998, 999])  # runs of consecutive rows, block edges, both ends
    assert torch.equal(torch.from_numpy(rows[idx]), w[idx])
    assert rows[np.array([], dtype=np.int64)].shape == (0, 12)
    with pytest.raises(IndexError):
        rows[np.array([5, 1000])]


def test_a_served_mapped_bundle_answers_raw_rows_as_the_plain_bundle(tmp_path):
    """What `dynarec serve` holds (load_served: manifest, predictor, backend) on raw rows: the mapped bundle
    and the plain bundle of the same checkpoint give the same answers to the bundle bound, per backend."""
    from dynarec.cli import main
    from dynarec.data.synthetic import generate
    from dynarec.serve.rows import rows_to_columns
    from dynarec.serve.served import load_served

    assert main(["data", "synthetic", "--rows", "1500", "--out", str(tmp_path / "data")]) == 0
    assert main(["train", "--model", "dnn", "--data", str(tmp_path / "data"), "--epochs", "1",
                 "--set", "trainer.progress=false", "--out", str(tmp_path / "ck")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "plain")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "mapped"),
                 "--map-tables-mb", "0"]) == 0
    t, _ = generate(64, seed=7)
    for be in ("torch", "onnx", "eager"):
        plain, mapped = load_served(tmp_path / "plain", be), load_served(tmp_path / "mapped", be)
        assert "mapped" not in plain.manifest and mapped.manifest["mapped"]["tables"][0]["layer"] == "embedding"
        cols = rows_to_columns(t.to_pylist(), plain.schema)
        (want, unk_w), (got, unk_g) = plain.predict_columns(cols), mapped.predict_columns(cols)
        assert np.array_equal(unk_w, unk_g)
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, atol=PARITY_TOL, rtol=0)
