"""Package namespaces whose names are imported on first use (PEP 562), so that importing a package (the command
line's parsers, ``lk_ablate --help``) does not import torch, timm or Lightning until a name that needs them is
used: ``lk_ablate.create_model`` still works, it just imports the models when first read."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``exports`` maps a module (relative, e.g. ``".runner"``) to
    the names it provides; a name is imported on first access and then kept in ``namespace`` (the package's
    globals)."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
