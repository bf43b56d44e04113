"""A package's public face, loaded lazily (PEP 562): each package's `__init__.py` lists the names
other packages may use and the module that defines each, and nothing is imported until a name is
first used, so `from pipeline.codec import Request` loads no torch.

    _EXPORTS = {"filesystem": "fs", "s3": "s3"}      # name -> module of the package ("s3": the module itself)
    __all__ = sorted(_EXPORTS)
    __getattr__, __dir__ = lazy_face(__name__, _EXPORTS, globals())
"""

from __future__ import annotations

import importlib


def lazy_face(package: str, exports: dict[str, str], namespace: dict):
    """(__getattr__, __dir__) for `package`: a name resolves on first use and is then kept in the
    package's namespace; a name equal to its module's name stands for the module itself."""

    def __getattr__(name: str):
        if name in exports:
            module = importlib.import_module(f"{package}.{exports[name]}")
            value = module if exports[name] == name else getattr(module, name)
            namespace[name] = value  # once
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
