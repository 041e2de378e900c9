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
    needs: tuple[str, ...] = ()  # schema groups the model needs by default (required and optional)
    multi_task: bool = True
    multi_domain: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)
    optional: tuple[str, ...] = ()  # groups of ``needs`` it uses when the schema has them, trains without
    kind: str = "ranking"  # "ranking" (logits per task, dynarec.train) | "retrieval" (dynarec.retrieval.train)

    @property
    def requires(self) -> tuple[str, ...]:
        """Groups the model cannot be built without (with its default config)."""
        return tuple(g for g in self.needs if g not in self.optional)


REGISTRY: dict[str, ModelInfo] = {}
KINDS = ("ranking", "retrieval")


def register(name: str, *, paper: str = "", needs: tuple[str, ...] = (), multi_task: bool = True,
             multi_domain: bool = False, tags: tuple[str, ...] = (), optional: tuple[str, ...] = (),
             kind: str = "ranking"):
    """Class decorator. The class must define ``Config`` (a dataclass subclassing ModelConfig). ``needs``: the
    schema groups the model reads by default; ``optional``: those of them it only uses when present;
    ``kind``: "ranking" or "retrieval" (two-tower / popularity models, trained by dynarec.retrieval.train).

    Example::

        @register("my_model", paper="Author et al., Venue 2026", needs=("user", "item"), optional=("item",))
        class MyModel(BaseModel):
            @dataclass
            class Config(ModelConfig):
                hidden: list[int] = field(default_factory=lambda: [64])
    """
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")

    def deco(cls):
        if name in REGISTRY and REGISTRY[name].cls is not cls:
            raise RuntimeError(f"model '{name}' registered twice")
        REGISTRY[name] = ModelInfo(name, cls, cls.Config, paper, tuple(needs), multi_task, multi_domain, tuple(tags),
                                   tuple(optional), kind)
        cls.registry_name = name
        return cls

    return deco


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of model ``name``; a ConfigError suggesting the closest name otherwise.

    Example::

        >>> from dynarec.models.registry import get_model_info
        >>> get_model_info("two_tower").kind
        'retrieval'
    """
    import difflib

    import dynarec.models  # noqa: F401  (populate the registry)

    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown model '{name}'{hint}; `dynarec models` lists them")
    return REGISTRY[name]


def list_models(kind: str | None = "ranking") -> list[ModelInfo]:
    """Registered models of ``kind`` ("ranking" by default: what the ranking trainer, the conformance suite
    and the benchmarks enumerate; "retrieval"; None for every model), sorted by name.

    Example::

        >>> from dynarec.models.registry import list_models
        >>> "two_tower" in [m.name for m in list_models("retrieval")]
        True
    """
    import dynarec.models  # noqa: F401

    return [REGISTRY[k] for k in sorted(REGISTRY) if kind is None or REGISTRY[k].kind == kind]


def build_model(name: str, schema, params: dict | None = None):
    """Build a registered model from a schema and a dict of its hyper-parameters (validated: types and values,
    and every given key must have an effect on the model, see :mod:`dynarec.models.keys`).

    Example::

        from dynarec.data.prepare import synthetic_tables
        from dynarec.models.registry import build_model

        schema, tables, _ = synthetic_tables(1000, seed=0)
        model = build_model("mmoe", schema, {"num_experts": 4})
        logits = model(tables["test"].take(torch.arange(8)))  # {task: Float [8]}
    """
    from dynarec.config import build_dataclass
    from dynarec.models.keys import check_keys

    info = get_model_info(name)
    params = params or {}
    if isinstance(params, dict):
        _other_models_key(info, params)
    cfg = build_dataclass(info.config_cls, params, f"model.{name}")
    check_keys(info.cls, cfg, name, given=list(params))
    return info.cls(schema, cfg)


def active_params(name: str, params: dict) -> dict:
    """``params`` without the keys that have no effect on model ``name`` (for code that applies one set of
    keys to every model, such as small test dimensions).

    Example::

        >>> from dynarec.models.registry import active_params
        >>> "tower_hidden" in active_params("dnn", {"hidden": [8], "tower_hidden": [4]})
        False
    """
    import dataclasses

    from dynarec.models.keys import inactive_keys

    info = get_model_info(name)
    names = {f.name for f in dataclasses.fields(info.config_cls)}
    cfg = info.config_cls(**{k: v for k, v in params.items() if k in names})
    inactive = inactive_keys(info.cls, cfg)
    return {k: v for k, v in params.items() if k not in inactive}


def _other_models_key(info: ModelInfo, params: dict) -> None:
    """A key of other models' configs but not of this one: 'has no effect', naming where it belongs."""
    import dataclasses

    own = {f.name for f in dataclasses.fields(info.config_cls)}
    for k in params:
        if k in own:
            continue
        users = [m.name for m in REGISTRY.values() if k in {f.name for f in dataclasses.fields(m.config_cls)}]
        if users:
            shown = ", ".join(users[:4]) + (", ..." if len(users) > 4 else "")
            raise ConfigError(f"model.{info.name}: key '{k}' has no effect on {info.name} (a key of {shown})")
