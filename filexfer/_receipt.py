"""The receipt for a stored file: what the storage returns and the FX/1 C{done} line carries."""

from __future__ import annotations

import attrs

from filexfer._hashing import DEFAULT_DIGEST, DigestName


@attrs.frozen
class Receipt:
    """What a finished upload stored: the server's C{done} line.

    @ivar size: bytes stored.
    @ivar digest: the stored bytes' digest, lower-case hex (64 digits), by
        C{algorithm}.
    @ivar path: the relative path it was stored under.
    @ivar algorithm: which digest C{digest} is: C{"sha256"} (what a client
        gets unless it asks) or C{"blake3"} (docs/protocol.md, "Receipt digests").
    """

    size: int
    digest: str
    path: str
    algorithm: DigestName = DEFAULT_DIGEST

    @property
    def sha256(self) -> str | None:
        """The SHA-256 (hex) when that is the receipt's digest, else None."""
        return self.digest if self.algorithm == "sha256" else None
