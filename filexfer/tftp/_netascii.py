"""Netascii (RFC 764, as RFC 1350 uses it): the one place it is converted.

Sending: L{NetasciiEncoder} converts the chunks a sender reads
(L{filexfer.tftp._window.SourceBlocks}).  Receiving: L{NetasciiDecoder} turns the DATA payloads
back into local bytes.  Pure: no sockets, no reactor.
"""

from __future__ import annotations


class NetasciiEncoder:
    """Local bytes -> netascii: LF becomes CR LF, CR becomes CR NUL.

    The conversion is byte-local, so chunks may be cut anywhere.
    """

    def encode(self, data: bytes) -> bytes:
        """Convert one chunk."""
        return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class NetasciiDecoder:
    """Netascii -> local bytes: CR LF becomes LF, CR NUL becomes CR.

    A CR followed by anything else is kept as it is.  A CR at the end of a
    chunk is held back until the next chunk (or L{flush}) shows what follows.
    """

    def __init__(self) -> None:
        self._pending = b""

    def decode(self, data: bytes) -> bytes:
        """Convert one chunk; may hold back a trailing CR."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        if data.endswith(b"\r"):
            self._pending = b"\r"
            data = data[:-1]
        return data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")

    def flush(self) -> bytes:
        """The end of the stream: release a held-back CR."""
        pending, self._pending = self._pending, b""
        return pending
