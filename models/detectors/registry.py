"""Detectors chosen by registered name, never by a class path read from a file.

A detector class registers itself with ``@register_detector("name")``; recipes and saved models
name it, and ``create_detector(name, **kw)`` builds it. An unknown name gets an error listing the
valid ones, as ``get_model`` does in anomalib's ``src/anomalib/models/__init__.py``.

The built-in detectors are registered by ``models/detectors/__init__.py``, which Python runs before
this module whatever is imported first; so this module imports no detector (no import cycle).

Example:
    >>> detector = create_detector("patch_knn", backbone=backbone, config=PatchKNNConfig(k=3))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["available_detectors", "create_detector", "get_detector_class", "register_detector"]

_REGISTRY: dict[str, type[nn.Module]] = {}

ModuleT = TypeVar("ModuleT", bound=type[nn.Module])


def register_detector(name: str) -> Callable[[ModuleT], ModuleT]:
    """Class decorator that makes a detector available under ``name``.

    Args:
        name: the name recipes and saved models use (lower_snake_case, e.g. ``"patch_knn"``).

    Raises:
        ValueError: when ``name`` is already taken by another class.
    """

    def decorate(cls: ModuleT) -> ModuleT:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            msg = (f"detector name {name!r} is already registered by {existing.__qualname__}; "
                   "pick another name")
            raise ValueError(msg)
        _REGISTRY[name] = cls
        cls.detector_name = name  # type: ignore[attr-defined]  # saved models record it
        return cls

    return decorate


def available_detectors() -> tuple[str, ...]:
    """Registered detector names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_detector_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``.

    Raises:
        ValueError: ``unknown detector 'x'; available: patch_knn``.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        msg = f"unknown detector {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        raise ValueError(msg) from None


def create_detector(name: str, **kw: Any) -> nn.Module:
    """Build the detector registered under ``name`` with keyword arguments ``kw``.

    Args:
        name: a registered name (see ``available_detectors()``).
        **kw: passed to the detector's constructor (for ``patch_knn``: ``backbone=``, ``config=``).

    Returns:
        The unfitted detector.

    Raises:
        ValueError: ``unknown detector 'x'; available: patch_knn``.
    """
    return get_detector_class(name)(**kw)
