"""Keeping pyOpenSSL out of processes that do not use TLS.

Twisted's reactor imports pyOpenSSL whenever it is installed, which costs
about 13 MiB of memory per process.  A run that will not use TLS blocks the
import before the reactor is loaded; Twisted then treats TLS as absent.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

PLAIN_ENDPOINTS = ("tcp", "tcp6", "unix")
"""Endpoint types that never need TLS."""


def needs_tls(endpoint_descriptions: Iterable[str]) -> bool:
    """True when any server endpoint description is not a plain TCP or UNIX one.

    C{haproxy:} wraps another endpoint (C{haproxy:tcp:8000}): that one decides.
    """
    kinds = (d.removeprefix("haproxy:").split(":", 1)[0] for d in endpoint_descriptions)
    return any(kind not in PLAIN_ENDPOINTS for kind in kinds)


def keep_tls_libraries_out() -> None:
    """Block pyOpenSSL for the rest of this process (a no-op once it is loaded)."""
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]
