"""Model registry: name -> (model class, its config dataclass, paper, needed feature groups).

Every model registers itself with ``@register``; ``dynarec.models`` imports every module in the
package, so a new file is picked up by the CLI, the benchmark harness and the conformance suite
without touching shared code."""
from __future__ import annotations

from dataclasses import dataclass, field

from dynarec.errors import ConfigError


@dataclass
class ModelInfo:
    name: str
    cls: type
    config_cls: type
    paper: str = ""
    needs: tuple[str, ...] = ()  # schema groups the model needs by default
    multi_task: bool = True
    multi_domain: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, *, paper: str = "", needs: tuple[str, ...] = (), multi_task: bool = True,
             multi_domain: bool = False, tags: tuple[str, ...] = ()):
    """Class decorator. The class must define ``Config`` (a dataclass subclassing ModelConfig)."""

    def deco(cls):
        if name in REGISTRY and REGISTRY[name].cls is not cls:
            raise RuntimeError(f"model '{name}' registered twice")
        REGISTRY[name] = ModelInfo(name, cls, cls.Config, paper, tuple(needs), multi_task, multi_domain, tuple(tags))
        cls.registry_name = name
        return cls

    return deco


def get_model_info(name: str) -> ModelInfo:
    import difflib

    import dynarec.models  # noqa: F401  (populate the registry)

    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown model '{name}'{hint}; `dynarec models` lists them")
    return REGISTRY[name]


def list_models() -> list[ModelInfo]:
    import dynarec.models  # noqa: F401

    return [REGISTRY[k] for k in sorted(REGISTRY)]


def build_model(name: str, schema, params: dict | None = None):
    """Build a registered model from a schema and a dict of its hyper-parameters (validated)."""
    from dynarec.config import build_dataclass

    info = get_model_info(name)
    cfg = build_dataclass(info.config_cls, params or {}, f"model.{name}")
    return info.cls(schema, cfg)
