"""Public names of a package imported at first use (PEP 562), not with the package.

The C{filexfer} command imports only what its sub-command runs: C{filexfer
send} needs neither the receiver, the TFTP server nor the S3 store, and
importing them cost it about 0.1 CPU-second per run.  A package lists its
public names with the module each comes from, imports them under
C{TYPE_CHECKING} for type checkers, and sets its module C{__getattr__} and
C{__dir__} (what documentation tools list) to L{lazy_exports}'s results.  (C{lazy_loader}, the
scientific-Python package for this, needs a C{.pyi} stub beside each package
for type checkers; these few lines do not.)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module C{__getattr__} and C{__dir__} of C{package}; C{exports} maps names to modules.

    The first lookup of a name imports its module and keeps the value in the
    package, so later lookups do not come here; C{__dir__} lists the
    package's own names and every exported one, imported or not.

    @raise AttributeError: (from C{__getattr__}) for a name not in C{exports}.
    """

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
