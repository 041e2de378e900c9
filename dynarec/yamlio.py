"""YAML reading for configs, schemas and suites: PyYAML's safe loader with YAML 1.2 numbers.

PyYAML follows YAML 1.1, where ``1e-3`` (no dot) and ``1E5`` are strings; every user writes ``lr: 1e-3``, so
our loader resolves any decimal or exponent literal to a float (``1e-3``, ``5E+2``, ``.5``, ``inf``)."""
from __future__ import annotations

import re

import yaml

_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)
                      |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                      |[-+]?\.(?:inf|Inf|INF)
                      |\.(?:nan|NaN|NAN))$""", re.X)


class Loader(yaml.SafeLoader):
    """Safe loader whose float resolver also takes exponents without a dot (YAML 1.2 core schema)."""


Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                  for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
# dotted numbers without an exponent (1.5, 3.) as before; plain integers stay ints
Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                             re.compile(r"^[-+]?[0-9][0-9_]*\.[0-9_]*$"), list("-+0123456789"))


def load(text: str):
    """Parse YAML text with :class:`Loader`."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader subclass
