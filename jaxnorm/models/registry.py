"""The model registry: ``get_model(name, **kwargs) -> flax.linen.Module``.

Models register themselves with :func:`register_model`; nothing dispatches on names
with if/elif chains. Every registered model is called as
``module.init(key, x, train=False)`` and
``module.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})``.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import flax.linen as nn

from jaxnorm._registry import lookup

__all__ = ["register_model", "get_model", "model_names"]

_MODELS: dict[str, type[nn.Module]] = {}

M = TypeVar("M", bound=type)


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: makes ``get_model(name, **kwargs)`` build this module."""

    def wrap(cls: M) -> M:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered to {_MODELS[name].__name__}.")
        _MODELS[name] = cls
        return cls

    return wrap


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds the registered model ``name`` with the module fields ``kwargs``.

    Raises:
      ValueError: unknown name (the message lists the known ones), or a keyword the
        model does not have (the message lists the ones it has).
    """
    cls = lookup(_MODELS, name, "model")
    fields = [f for f in cls.__dataclass_fields__ if f not in ("parent", "name")]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; it takes {fields}.")
    return cls(**kwargs)
