"""Registered models. Importing this package imports every module in it (each registers itself)."""
import importlib
import pkgutil

from dynarec.models.registry import REGISTRY, build_model, get_model_info, list_models, register  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("registry", "base"):
        importlib.import_module(f"{__name__}.{_m.name}")
