"""Export over schema variants (the parity suite covers every model on one schema; these cover the schemas):
no dense feature, no sequence, a single feature, one task, regression tasks, many domains. For each, the
``torch.export`` program and the ONNX model give the eager outputs to the tolerance a bundle states
(``PARITY_TOL``) at the parity batch sizes, and ``dynarec export`` writes a bundle whose manifest's parity is
within it. Also the one output-folder discipline of ``dynarec export --out``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from dynarec.cli import main
from dynarec.data.encode import Encoders
from dynarec.data.schema import Schema
from dynarec.models import build_model
from dynarec.serve.backends import OnnxBackend, TorchExportBackend
from dynarec.serve.entry import TensorEntry, batch_inputs, example_batch, export_program, input_spec
from dynarec.serve.export import PARITY_BATCHES, PARITY_TOL
from dynarec.train.checkpoint import save_checkpoint

pytest.importorskip("onnxruntime", reason="ONNX Runtime is an optional extra: pip install 'dynarec[onnx]'")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript: pip install 'dynarec[onnx]'")

USER = {"name": "user_id", "group": "user"}
ITEM = {"name": "item_id", "group": "item"}
PRICE = {"name": "price", "kind": "dense", "group": "item"}
HIST = {"name": "hist", "kind": "sequence", "group": "user", "max_len": 4}
CLICK = {"name": "click"}
VARIANTS = {
    "no_dense": ([USER, ITEM, HIST], [CLICK, {"name": "buy"}], 3),
    "no_sequences": ([USER, ITEM, PRICE], [CLICK, {"name": "buy"}], 3),
    "single_feature": ([USER], [CLICK], 2),
    "one_task": ([USER, ITEM, PRICE, HIST], [CLICK], 3),
    "regression": ([USER, ITEM, PRICE], [{"name": "watch", "type": "regression"}, CLICK], 3),
    "many_domains": ([USER, ITEM, PRICE, HIST], [CLICK, {"name": "buy"}], 12),
}


def _schema(features, tasks, domains, n=400, seed=0):
    """The schema with encoders fitted on ``n`` random raw rows (vocabulary sizes set)."""
    schema = Schema.from_dict({"domain": "dom", "tasks": tasks, "features": features})
    rng = np.random.default_rng(seed)
    cols = {"dom": [f"d{i % domains}" for i in range(n)]}
    for f in features:
        if f.get("kind") == "dense":
            cols[f["name"]] = rng.normal(size=n).tolist()
        elif f.get("kind") == "sequence":
            cols[f["name"]] = ["|".join(f"c{j}" for j in rng.integers(0, 30, size=3)) for _ in range(n)]
        else:
            cols[f["name"]] = [f"v{j}" for j in rng.integers(0, 50, size=n)]
    for t in tasks:
        cols[t["name"]] = rng.integers(0, 2, size=n).astype(float).tolist()
    enc = Encoders(schema).fit(pa.table(cols))
    return schema, enc


# every variant on a plain model; the gated / per-domain models where a variant stresses them (PEPNet's priors
# without item / author groups or dense inputs; STAR's per-domain towers with 12 domains and a regression task)
CASES = [(v, "dnn") for v in VARIANTS] + [("single_feature", "pepnet"), ("no_dense", "pepnet"),
                                          ("many_domains", "star"), ("regression", "star")]


@pytest.mark.parametrize("variant,model_name", CASES, ids=[f"{v}-{m}" for v, m in CASES])
def test_exported_equals_eager_on_schema_variants(variant, model_name, tmp_path):
    schema, _ = _schema(*VARIANTS[variant])
    torch.manual_seed(0)
    model = build_model(model_name, schema, {}).eval()
    model.merge_for_inference()
    entry = TensorEntry(model).eval()
    args = batch_inputs(schema, example_batch(schema, 7))
    program = export_program(entry, args)
    names = [s["name"] for s in input_spec(schema)]
    assert len(names) == len(args)
    TorchExportBackend.write(program, args, names, entry.tasks, tmp_path / "model.pt2")
    OnnxBackend.write(program, args, names, entry.tasks, tmp_path / "model.onnx")
    runs = [TorchExportBackend(tmp_path), OnnxBackend(tmp_path)]
    for n in PARITY_BATCHES:
        x = batch_inputs(schema, example_batch(schema, n, seed=n))
        with torch.no_grad():
            ref = entry(*x)
        assert len(ref) == len(schema.tasks) and all(r.shape == (n,) for r in ref)
        for run in runs:
            for r, g in zip(ref, run(x)):
                torch.testing.assert_close(torch.as_tensor(g), r, atol=PARITY_TOL, rtol=0)


def _checkpoint(tmp_path, variant="no_dense"):
    schema, enc = _schema(*VARIANTS[variant])
    torch.manual_seed(0)
    model = build_model("dnn", schema, {})
    save_checkpoint(tmp_path / "ck", model, {}, enc.to_dict())
    return tmp_path / "ck"


def test_export_cli_without_dense_features_writes_a_bundle(tmp_path):
    """A fresh process (the ONNX exporter's registry, and its 4 torchvision notes, are built once per process):
    exit 0, nothing on stderr, a bundle without a ``dense`` input."""
    ck = _checkpoint(tmp_path)
    r = subprocess.run([sys.executable, "-m", "dynarec", "export", "--checkpoint", str(ck), "--out",
                        str(tmp_path / "b")], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [i["name"] for i in m["inputs"]] == ["sparse", "seq_hist"]
    assert m["backends"] == ["eager", "torch", "onnx"]
    assert all(v <= m["parity_tolerance"] for p in m["parity"].values() for v in p.values())


def test_export_refuses_a_foreign_folder_and_replaces_its_own_bundle(tmp_path, capsys):
    ck = _checkpoint(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    assert main(["export", "--checkpoint", str(ck), "--out", str(out), "--format", "torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "not empty" in err[0]
    assert (out / "notes.txt").read_text() == "a user's file" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not list(tmp_path.glob(".mine*"))  # no work folder left beside it
    b = tmp_path / "b"
    assert main(["export", "--checkpoint", str(ck), "--out", str(b), "--format", "torch"]) == 0
    assert sorted(p.name for p in b.iterdir()) == ["manifest.json", "model.pt", "model.pt2"]
    assert main(["export", "--checkpoint", str(ck), "--out", str(b), "--format", "onnx"]) == 0  # our bundle: replaced
    assert sorted(p.name for p in b.iterdir()) == ["manifest.json", "model.onnx", "model.pt"]
