"""Names a package imports only when first used, so that language-model runs start without the diffusion stack."""

import importlib
from collections.abc import Callable


def lazy_attributes(package: str, modules: dict[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` (PEP 562) for `package`: `name` is imported from the module `modules[name]`
    (relative to `package`) the first time it is asked for."""

    def __getattr__(name: str):
        if name in modules:
            return getattr(importlib.import_module(modules[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
