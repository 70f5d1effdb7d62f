"""Packages that import their modules on first use (PEP 562), so that quick commands stay quick.

``fedunlearn.certify`` and ``fedunlearn.models`` re-export names from their modules; importing them
eagerly would load Opacus, transformers' modelling stack and scipy (seconds) for a command that
only reads a signed request or a device setting. :func:`lazy_package` gives such a package a
module ``__getattr__`` that imports the right module when a name is used::

    __getattr__, __dir__ = lazy_package(__name__, {"accounting": ("epsilon", ...), ...}, __all__)

Where a public name is also the name of the module that defines it (``fedunlearn.certify.verify_run``
defines ``verify_run``), the import system would set the *module* as the package's attribute once
that module is loaded; the package's class is swapped for one that keeps the public object there,
as eager imports did.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping, Sequence

__all__ = ["lazy_package"]


class _LazyPackage(types.ModuleType):
    """A package whose submodules named like one of their public names do not shadow that name."""

    _lazy_names: Mapping[str, str] = {}

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and self._lazy_names.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_package(package: str, where: Mapping[str, Sequence[str]],
                 public: Sequence[str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each name of ``where[module]`` is imported from
    ``package.module`` on first use and then kept as a plain attribute."""
    module_of = {name: module for module, names in where.items() for name in names}
    missing = sorted(set(public) - set(module_of))
    if missing:
        raise ImportError(f"{package}: __all__ names {missing} that no module of the lazy map defines")
    target = sys.modules[package]

    def __getattr__(name: str) -> object:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # not cached on the package: a name first read while a test patches its module would stay
        # patched; reading it through the module each time costs a dictionary lookup
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(target)) | set(public))

    target.__class__ = _LazyPackage
    object.__setattr__(target, "_lazy_names", module_of)
    return __getattr__, __dir__
