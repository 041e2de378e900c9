"""The plain-tensor entry of a model, shared by every backend and the exporter: :class:`TensorEntry`
(``(sparse, [dense], *sequences) -> one Float [B] per task``, the sigmoid of binary tasks inside), the input
spec of a bundle, and the positional inputs of a batch / an encoded table (what a request turns into)."""
from __future__ import annotations

import torch
from torch import nn


class TensorEntry(nn.Module):
    """``model`` behind a plain-tensor signature ``(sparse, [dense], *sequences) -> tuple of [B] per task``,
    with the output transform (sigmoid for binary tasks) inside the graph.

    Example::

        entry = TensorEntry(model).eval()
        probs = entry(*tensor_inputs(model.schema, encoded.table))  # one Float [N] per task
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        schema = model.schema
        self.has_dense = schema.dense_dim > 0
        self.seq_names = [f.name for f in schema.sequences]
        self.binary = [t.type == "binary" for t in schema.tasks]
        self.tasks = [t.name for t in schema.tasks]
        self.dense_dim = schema.dense_dim
        self.domain_col = [f.name for f in schema.sparse].index(schema.domain)

    def forward(self, sparse: torch.Tensor, *rest: torch.Tensor):
        if self.has_dense:
            dense, seqs = rest[0], rest[1:]
        else:
            dense = sparse.new_zeros((sparse.shape[0], 0), dtype=torch.float32)
            seqs = rest
        out = self.model.forward_tensors(sparse, dense, sparse[:, self.domain_col], tuple(seqs))
        return tuple(torch.sigmoid(out[t]) if b else out[t] for t, b in zip(self.tasks, self.binary))


def input_spec(schema) -> list[dict]:
    """[{name, dtype, shape}] of the exported programs' inputs (``"B"`` = the dynamic batch dimension)."""
    spec = [{"name": "sparse", "dtype": "int64", "shape": ["B", len(schema.sparse)]}]
    if schema.dense_dim:
        spec.append({"name": "dense", "dtype": "float32", "shape": ["B", schema.dense_dim]})
    spec += [{"name": f"seq_{f.name}", "dtype": "int64", "shape": ["B", f.max_len]} for f in schema.sequences]
    return spec


def tensor_inputs(schema, data) -> tuple[torch.Tensor, ...]:
    """The positional inputs of :class:`TensorEntry` (and of every backend) for anything holding ``sparse``,
    ``dense`` and ``sequences`` (a :class:`~dynarec.data.table.Batch` or a ``TensorTable``)."""
    args = [data.sparse]
    if schema.dense_dim:
        args.append(data.dense)
    return tuple(args + [data.sequences[f.name] for f in schema.sequences])


batch_inputs = tensor_inputs  # the name the exporter and its tests use for a Batch


def example_batch(schema, n: int, seed: int = 0):
    """A random batch of ``n`` rows with valid ids for every field (for tracing and parity checks)."""
    from dynarec.data.table import Batch

    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack([torch.randint(0, max(f.vocab_size, 1), (n,), generator=g) for f in schema.sparse], 1)
    dense = torch.randn(n, schema.dense_dim, generator=g)
    seqs = {f.name: torch.randint(0, max(f.vocab_size, 1), (n, f.max_len), generator=g) for f in schema.sequences}
    dom = [f.name for f in schema.sparse].index(schema.domain)
    return Batch(sparse, dense, sparse[:, dom], {}, seqs)


def export_program(entry: TensorEntry, args: tuple) -> torch.export.ExportedProgram:
    """``torch.export`` of ``entry`` with a dynamic batch dimension on every input (``sparse``, then the
    varargs ``rest``: dense and sequences, absent when the schema has none)."""
    b = torch.export.Dim("batch", min=1, max=1 << 20)
    shapes = ({0: b},) + ((tuple({0: b} for _ in args[1:]),) if len(args) > 1 else ())
    with torch.no_grad():
        return torch.export.export(entry, args, dynamic_shapes=shapes)
