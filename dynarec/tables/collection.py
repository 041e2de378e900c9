"""TableCollection: the module that owns every id-indexed table of a model.

Each table is an ``nn.Embedding`` registered under its spec's name, created (and initialised) by
:meth:`TableCollection.add` at the point of the model's construction where the layer using it is built.
Layers that use a table *borrow* it (:func:`borrow`): they keep a reference that is not a registered
submodule, so the table appears once in ``state_dict`` / ``parameters()``, under ``tables.<name>``.

The trainer asks the collection which parameters are tables and how they are updated
(:meth:`parameters_of`, :meth:`set_gradient_form`); it never touches the model's modules."""
from __future__ import annotations

import dataclasses

from torch import nn

from dynarec.tables import deferred
from dynarec.tables.spec import TableSpec


class TableCollection(nn.Module):
    """All id-indexed tables of one model, by name. ``specs`` lists them in creation order."""

    def __init__(self):
        super().__init__()
        self.specs: dict[str, TableSpec] = {}
        self.legacy_keys: dict[str, str] = {}  # old state_dict prefix -> table name (old checkpoints)
        self.dense_gradients = False

    def add(self, spec: TableSpec, legacy: str | None = None, deferrable: bool = False) -> nn.Embedding:
        """Create, initialise and register the table of ``spec``; returns it. ``legacy`` is the module path
        the table had in checkpoints written before the collection existed (they still load).
        ``deferrable``: inside :func:`dynarec.tables.deferred.deferred_tables` the table is created with
        zero rows and its initialisation recipe (``table.deferred``), for TorchRec to shard."""
        if spec.name in self.specs:
            raise ValueError(f"table '{spec.name}' added twice")
        sparse = spec.group == "embedding" and not self.dense_gradients
        if deferrable and deferred.wants(spec):
            table = nn.Embedding(0, spec.dim, sparse=sparse)
            table.__dict__["deferred"] = deferred.recipe(spec)
        else:
            table = nn.Embedding(spec.rows, spec.dim, sparse=sparse)
        if spec.init_std is not None:
            if spec.init_std > 0:
                nn.init.normal_(table.weight, std=spec.init_std)
            else:
                nn.init.zeros_(table.weight)
        self.add_module(spec.name, table)
        self.specs[spec.name] = spec
        if legacy:
            self.legacy_keys[legacy] = spec.name
        return table

    def __getitem__(self, name: str) -> nn.Embedding:
        return self._modules[name]

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def __len__(self) -> int:
        return len(self.specs)

    def tables(self) -> list[nn.Embedding]:
        return [self._modules[n] for n in self.specs]

    def owns(self, module: nn.Module) -> bool:
        return any(module is t for t in self.tables())

    def parameters_of(self, group: str) -> list[nn.Parameter]:
        """Trainable weights of the tables in optimizer ``group`` (``embedding`` | ``dense``)."""
        return [self._modules[n].weight for n, s in self.specs.items()
                if s.group == group and self._modules[n].weight.requires_grad]

    def numel(self, group: str) -> int:
        return sum(p.numel() for p in self.parameters_of(group))

    def set_gradient_form(self, dense: bool) -> None:
        """Tables of the ``embedding`` group form dense gradients (zeros off the batch's rows) with
        ``dense=True``, else sparse ones (only the batch's rows). ``dense``-group tables are always dense."""
        self.dense_gradients = bool(dense)
        for n, s in self.specs.items():
            if s.group == "embedding":
                self._modules[n].sparse = not dense

    def sparse_gradients(self, name: str) -> bool:
        """Whether table ``name`` currently forms sparse gradients (for ``F.embedding_bag(sparse=...)``)."""
        return self._modules[name].sparse

    def set_eviction(self, features, eviction) -> list[str]:
        """Give every table serving one of ``features`` the eviction config ``eviction`` (its
        :attr:`TableSpec.eviction`); returns their names."""
        names = [n for n, s in self.specs.items() if set(s.features) & set(features)]
        for n in names:
            self.specs[n] = dataclasses.replace(self.specs[n], eviction=eviction)
        return names

    def eviction(self):
        """The one eviction config of the tables that have one (None when none has); a ValueError if two differ."""
        found = {s.eviction for s in self.specs.values() if s.eviction is not None}
        if len(found) > 1:
            raise ValueError(f"tables {[n for n, s in self.specs.items() if s.eviction]} carry different eviction "
                             "configs; one dynamic index serves them all")
        return next(iter(found), None)

    def set_group(self, group: str, names=None) -> None:
        """Move the tables ``names`` (default: every table) to optimizer ``group`` (before the optimizers are
        built; the trainer then sets the gradient form of the ``embedding`` group, :meth:`set_gradient_form`)."""
        for n in self.specs if names is None else names:
            s = self.specs[n]
            self.specs[n] = dataclasses.replace(s, group=group)
            if group == "dense":
                self._modules[n].sparse = False

    def rename_legacy_keys(self, state_dict: dict, prefix: str = "tables.") -> None:
        """In place: keys of checkpoints written before the collection (``embedding.weight.weight``, ...)
        renamed to ``tables.<name>.weight``."""
        for old, name in self.legacy_keys.items():
            key = old + ".weight"
            if key in state_dict and prefix + name + ".weight" not in state_dict:
                state_dict[prefix + name + ".weight"] = state_dict.pop(key)


def borrow(layer: nn.Module, table) -> None:
    """Let ``layer`` use ``table`` (a table, or a tuple of them) without registering it as a submodule (its
    owner is a collection); read it back with :func:`borrowed`."""
    layer.__dict__["_borrowed_table"] = (table,)


def borrowed(layer: nn.Module):
    return layer.__dict__["_borrowed_table"][0]


def table_for(tables: TableCollection | None, owner: nn.Module, spec: TableSpec,
              legacy: str | None = None, deferrable: bool = False) -> nn.Embedding:
    """The table of ``spec`` added to ``tables`` (a model's collection), or, for a layer used on its own
    (``tables=None``), to a private collection registered on ``owner`` as ``owner.tables``."""
    if tables is None:
        if "tables" not in owner._modules:
            owner.tables = TableCollection()
        tables = owner.tables
    return tables.add(spec, legacy, deferrable)


def unowned_tables(model: nn.Module, tables: TableCollection | None) -> list[str]:
    """Names of the ``nn.Embedding`` / ``nn.EmbeddingBag`` modules of ``model`` that ``tables`` does not own."""
    owned = {id(t) for t in tables.tables()} if tables is not None else set()
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
            and id(m) not in owned]


__all__ = ["TableCollection", "borrow", "borrowed", "table_for", "unowned_tables"]
