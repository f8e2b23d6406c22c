"""Find a few-shot method by name: the registry (models.methods.base) filled by importing
every built-in method here. An unknown name raises, listing the valid ones."""

from __future__ import annotations

from models.methods import fomaml, maml, metasgd, protonet, relationnet, reptile, siamese
from models.methods.base import _REGISTRY, FewShotMethod

BUILTIN = (fomaml, maml, metasgd, protonet, relationnet, reptile, siamese)


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def create_method(name: str, **kwargs: object) -> FewShotMethod:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)
