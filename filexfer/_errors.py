"""The one exception type that carries a refusal to the peer."""

from __future__ import annotations


class TransferError(Exception):
    """A transfer was refused or failed; C{code} follows docs/protocol.md, "Error codes".

    @ivar code: an HTTP-like status (400, 401, 403, 404, 408, 409, 413, 422,
        503, 507).
    @ivar reason: one line of plain text for a person.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = " ".join(reason.split())

    def __str__(self) -> str:
        return f"error {self.code} {self.reason}"
