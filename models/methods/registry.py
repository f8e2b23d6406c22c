"""Find a few-shot method by name: the registry (models.methods.base), filled by importing
a built-in method's module when it is first asked for, so a service that serves only
ProtoNet never loads torch. An unknown name raises, listing the valid ones."""

from __future__ import annotations

import importlib
import logging

from models.methods.base import _REGISTRY, WEIGHTS, FewShotMethod

log = logging.getLogger(__name__)

BUILTIN = {name: f"models.methods.{name}" for name in (
    "fomaml", "maml", "metasgd", "protonet", "relationnet", "reptile", "siamese")}
WEIGHTLESS = {"protonet"}


def available_methods() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def method_class(name: str) -> type[FewShotMethod]:
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]  # type: ignore[return-value]


def create_method(name: str, **kwargs: object) -> FewShotMethod:
    return method_class(name)(**kwargs)


def usable_methods(dim: int) -> list[str]:
    """The methods whose shipped weights fit `dim`-d embeddings: read from the weight files'
    headers (their recorded `dim`) where they say, else by building the method."""
    from safetensors import safe_open

    ok = []
    for name in available_methods():
        path = WEIGHTS / f"{name}.safetensors"
        try:
            if name in BUILTIN and name not in WEIGHTLESS:
                if not path.is_file():
                    raise FileNotFoundError(f"no trained weights at {path}")
                with safe_open(str(path), framework="numpy") as f:
                    recorded = (f.metadata() or {}).get("dim")
                if recorded is not None and int(recorded) != dim:
                    raise RuntimeError(f"trained for {recorded}-d embeddings")
                if recorded is None:
                    create_method(name, dim=dim)
            elif name not in BUILTIN:
                create_method(name, dim=dim)
        except (FileNotFoundError, RuntimeError) as exc:
            log.warning("method %s is not available for %d-d embeddings: %s", name, dim,
                        str(exc).splitlines()[0][:200])
            continue
        ok.append(name)
    return ok
