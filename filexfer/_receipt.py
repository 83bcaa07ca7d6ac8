"""The receipt for a stored file: what the storage returns and the FX/1 C{done} line carries."""

from __future__ import annotations

import attrs


@attrs.frozen
class Receipt:
    """What a finished upload stored: the server's C{done} line."""

    size: int
    sha256: str
    path: str
