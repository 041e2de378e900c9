"""The lookup of a mapped table on the host, and the graph that starts after it.

For each mapped :class:`~dynarec.nn.embedding.FeatureEmbedding` ``k`` the exported graph takes, after the
plain inputs (``sparse``, [``dense``], ``seq_<name>``...), three more: ``rows_<k>`` Float [U, dim] (the
distinct rows the batch touches, gathered from the mapped file), ``ids_<k>`` Long [B, S] and
``seq_ids_<k>_<name>`` Long [B, L] (each position's index into ``rows_<k>``). Inside the graph the layer
reads ``rows_<k>`` instead of its table (the same embedding, masked mean / sum of sequences as the layer's
exported form), so the table is not a weight of the program. :class:`HostLookup` computes those inputs
from the plain ones (the layer's table offsets added, ``torch.unique``, one gather from the mapped rows);
:class:`MappedRunner` puts it in front of any backend.

Example::

    run = MappedRunner(load_backend_plain(bundle, "onnx"), bundle, manifest)
    probs = run(tensor_inputs(schema, encoded.table))   # the plain inputs, as every backend takes
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _forward_from_rows(layer, rows, ids, seq_ids, sparse, sequences=None):
    """FeatureEmbedding.forward with the table replaced by the batch's rows (``ids`` / ``seq_ids`` index them)."""
    out = F.embedding(ids, rows)
    if not layer.seq_names:
        return out
    pooled = []
    for j, (name, pool) in enumerate(zip(layer.seq_names, layer.seq_pooling)):
        raw = sequences[name]
        mask = (raw > 0).to(rows.dtype)
        if pool == "mean":
            mask = mask / mask.sum(1, keepdim=True).clamp_min(1.0)
        pooled.append((F.embedding(seq_ids[j], rows) * mask.unsqueeze(-1)).sum(1))
    return torch.cat([out, torch.stack(pooled, 1)], 1)


def _tokens_from_rows(layer, rows, seq_ids, j, ids):
    return F.embedding(seq_ids[j], rows)


class AfterLookup(nn.Module):
    """``entry`` (a :class:`~dynarec.serve.entry.TensorEntry`) with the tables of ``layers`` read from inputs:
    ``forward(*plain, rows_0, ids_0, *seq_ids_0, rows_1, ...)``."""

    def __init__(self, entry, layers: list, n_plain: int):
        super().__init__()
        self.entry, self.layers, self.n_plain = entry, [layer for _, layer in layers], n_plain

    def forward(self, *args):
        rest, i = args[self.n_plain:], 0
        saved = [{k: layer.__dict__[k] for k in ("forward", "tokens") if k in layer.__dict__} for layer in self.layers]
        for layer in self.layers:
            n = len(layer.seq_names)
            rows, ids, seq_ids = rest[i], rest[i + 1], rest[i + 2:i + 2 + n]
            i += 2 + n
            layer.forward = functools.partial(_forward_from_rows, layer, rows, ids, seq_ids)
            layer.tokens = functools.partial(_tokens_from_rows, layer, rows, seq_ids)
        try:
            return self.entry(*args[:self.n_plain])
        finally:
            for layer, kept in zip(self.layers, saved):
                del layer.forward, layer.tokens
                layer.__dict__.update(kept)  # a read-through lookup (read_through) stays in place


def layer_spec(k: int, path: str, layer, schema) -> dict:
    """What the host lookup needs of mapped layer ``k`` (recorded in the manifest)."""
    seq_pos = {f.name: i for i, f in enumerate(schema.sequences)}
    return {"k": k, "layer": path, "sparse_offsets": [int(x) for x in layer.sparse_offsets],
            "seqs": [{"name": n, "offset": int(o), "input": seq_pos[n]}
                     for n, o in zip(layer.seq_names, layer.seq_offsets)]}


def graph_input_names(plain: list[str], specs: list[dict]) -> list[str]:
    names = list(plain)
    for s in specs:
        names += [f"rows_{s['k']}", f"ids_{s['k']}"] + [f"seq_ids_{s['k']}_{q['name']}" for q in s["seqs"]]
    return names


class HostLookup:
    """Plain inputs -> the extra inputs of :class:`AfterLookup`, from the mapped ``tables`` (one array per
    spec, [rows, dim]; only the touched rows are read)."""

    def __init__(self, specs: list[dict], tables: list, has_dense: bool):
        self.specs, self.tables, self.first_seq = specs, tables, 2 if has_dense else 1

    def __call__(self, inputs) -> tuple:
        sparse = torch.as_tensor(inputs[0])
        extra = []
        for spec, table in zip(self.specs, self.tables):
            parts = [sparse + torch.tensor(spec["sparse_offsets"], dtype=sparse.dtype)]
            parts += [torch.as_tensor(inputs[self.first_seq + q["input"]]) + q["offset"] for q in spec["seqs"]]
            rows, out = _local(parts, table)
            extra += [rows] + out
        return tuple(extra)


class MappedRunner:
    """A backend of a bundle with mapped tables: the host lookup, then the backend on plain + looked-up inputs."""

    def __init__(self, inner, lookup: HostLookup):
        self.inner, self.lookup = inner, lookup

    def __call__(self, inputs):
        return self.inner(tuple(inputs) + self.lookup(inputs))


def export_after_lookup(entry, layers: list, specs: list[dict], tables: list, plain_args: tuple):
    """-> (``torch.export`` program of :class:`AfterLookup`, its example inputs): a dynamic batch dimension on
    every per-row input and a dynamic row count on each ``rows_<k>``."""
    graph = AfterLookup(entry, layers, len(plain_args)).eval()
    args = tuple(plain_args) + HostLookup(specs, tables, entry.has_dense)(plain_args)
    b = torch.export.Dim("batch", min=1, max=1 << 20)
    shapes = [{0: b} for _ in plain_args]
    for s in specs:
        u = torch.export.Dim(f"rows_{s['k']}", min=1, max=1 << 30)
        shapes += [{0: u}, {0: b}] + [{0: b} for _ in s["seqs"]]
    with torch.no_grad():
        return torch.export.export(graph, args, dynamic_shapes=(tuple(shapes),)), args


def _local(parts: list, rows) -> tuple:
    """(rows touched, each part's indices into them) of the physical ids ``parts``, read from ``rows``."""
    flat = torch.cat([p.reshape(-1) for p in parts])
    uniq, inv = torch.unique(flat, return_inverse=True)
    got = torch.from_numpy(np.ascontiguousarray(rows[uniq.numpy()]))
    out, at = [], 0
    for p in parts:
        out.append(inv[at:at + p.numel()].reshape(p.shape))
        at += p.numel()
    return got, out


def read_through(layer, rows) -> None:
    """Make ``layer`` (a FeatureEmbedding, its own table left empty) read its rows from ``rows`` (a
    :class:`~dynarec.serve.mapped.RowFile`) at every call — the eager model of ``evaluate`` / ``predict``
    holds the batch's rows only. The same sums as the layer's own forward (``embedding_bag`` over the
    same rows in the same order)."""

    def forward(sparse, sequences=None):
        parts = [sparse + layer.sparse_offsets] + [sequences[n] + o for n, o in zip(layer.seq_names, layer.seq_offsets)]
        got, local = _local(parts, rows)
        out = F.embedding(local[0], got)
        if not layer.seq_names:
            return out
        pooled = []
        for name, pool, ids in zip(layer.seq_names, layer.seq_pooling, local[1:]):
            mask = (sequences[name] > 0).to(got.dtype)
            if pool == "mean":
                mask = mask / mask.sum(1, keepdim=True).clamp_min(1.0)
            pooled.append(F.embedding_bag(ids.reshape(-1), got, torch.arange(0, ids.numel(), ids.shape[1]),
                                          mode="sum", per_sample_weights=mask.reshape(-1)))
        return torch.cat([out, torch.stack(pooled, 1)], 1)

    def tokens(j, ids):
        got, local = _local([ids + layer.seq_offsets[j]], rows)
        return F.embedding(local[0], got)

    layer.forward, layer.tokens = forward, tokens
