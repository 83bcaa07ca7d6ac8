"""SHA-256 of a file's first bytes, the one hasher both ends use.

The receiver hashes the bytes it holds from an interrupted upload (and the
files it compares by content); the sender hashes its own prefix to check the
server's digest of them (docs/protocol.md, I1).
"""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO

HASH_READ = 1 << 20
"""Bytes read at a time."""


class ShortFile(EOFError):
    """The file ended before the bytes that were asked for."""


def sha256_prefix(handle: BinaryIO, limit: int | None = None, *, exact: bool = False) -> Any:
    """The SHA-256 state after reading C{limit} bytes (all, when None) from C{handle}.

    Reading starts at the handle's position and stops early at the end of
    the file, unless C{exact}: then a file shorter than C{limit} raises
    L{ShortFile}.
    """
    digest = hashlib.sha256()
    remaining = limit
    while remaining is None or remaining > 0:
        chunk = handle.read(HASH_READ if remaining is None else min(HASH_READ, remaining))
        if not chunk:
            if exact and remaining is not None:
                raise ShortFile(f"the file is shorter than {limit} bytes")
            break
        digest.update(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return digest
