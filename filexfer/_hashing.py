"""The receipt digests both ends compute: SHA-256 (the default) or BLAKE3.

L{new_hasher} is the one factory: the receiver hashes the bytes it stores,
the bytes it holds from an interrupted upload and the files it compares by
content; the sender hashes its own file, and its own prefix to check the
server's digest of it (docs/protocol.md, "Receipt digests" and I1).

BLAKE3 comes from the C{blake3} package, which wraps the reference Rust
implementation (SIMD, and it releases the GIL for large inputs): about four
times SHA-256's speed on one core.  It is run on one thread: each end
already hashes in a thread of its own beside the writer or C{sendfile}.
"""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO, Literal, Protocol, cast

import blake3

HASH_READ = 1 << 20
"""Bytes read at a time."""

DigestName = Literal["sha256", "blake3"]
DIGESTS: tuple[DigestName, ...] = ("sha256", "blake3")
"""The receipt digests, by their names on the wire (lower case)."""
DEFAULT_DIGEST: DigestName = "sha256"
"""What a client that does not ask gets: the digest C{sha256sum} prints."""


class Hasher(Protocol):
    """What both ends use of a hash object (hashlib's and blake3's have it)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> object:
        """Add C{data}."""

    def hexdigest(self) -> str:
        """The digest of everything added so far, lower-case hex (64 digits)."""


def new_hasher(name: DigestName = DEFAULT_DIGEST) -> Hasher:
    """A fresh hash object for the digest called C{name} (see L{DIGESTS}).

    @raise ValueError: an unknown name.
    """
    if name == "sha256":
        return hashlib.sha256()
    if name == "blake3":
        return blake3.blake3(max_threads=1)
    raise ValueError(f"unknown digest {name!r}; known: {', '.join(DIGESTS)}")


def digest_name(text: str) -> DigestName | None:
    """The digest named C{text} (any case), or None when it is not one of L{DIGESTS}."""
    lowered = text.strip().lower()
    for name in DIGESTS:
        if name == lowered:
            return name
    return None


class ShortFile(EOFError):
    """The file ended before the bytes that were asked for."""


def hash_prefix(
    handle: BinaryIO,
    limit: int | None = None,
    *,
    exact: bool = False,
    name: DigestName = DEFAULT_DIGEST,
) -> Hasher:
    """The hash state (digest C{name}) after reading C{limit} bytes (all, when None) from C{handle}.

    Reading starts at the handle's position and stops early at the end of
    the file, unless C{exact}: then a file shorter than C{limit} raises
    L{ShortFile}.  One buffer of L{HASH_READ} bytes is reused throughout.
    """
    digest = new_hasher(name)
    readinto = cast(io.BufferedIOBase, handle).readinto  # every binary file object has it
    buffer = bytearray(HASH_READ)
    view = memoryview(buffer)
    remaining = limit
    while remaining is None or remaining > 0:
        want = HASH_READ if remaining is None else min(HASH_READ, remaining)
        got = readinto(view[:want])
        if not got:
            if exact and remaining is not None:
                raise ShortFile(f"the file is shorter than {limit} bytes")
            break
        digest.update(view[:got])
        if remaining is not None:
            remaining -= got
    return digest


def sha256_prefix(handle: BinaryIO, limit: int | None = None, *, exact: bool = False) -> Hasher:
    """L{hash_prefix} with SHA-256."""
    return hash_prefix(handle, limit, exact=exact)
