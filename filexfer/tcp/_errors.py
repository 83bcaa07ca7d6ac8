"""What a failed send raises: one line for a person, and the server's code when it refused."""

from __future__ import annotations

from filexfer.tcp import _wire


class SendError(Exception):
    """A send failed; C{str()} is one line for a person."""


class ConnectTimeout(SendError):
    """No connection within the connect timeout."""


class ReplyTimeout(SendError):
    """The server accepted the connection but never answered the request."""


class _StartAfresh(SendError):
    """The bytes the server holds are not this file's: send it again from 0 (C{Resume: no})."""


class ServerRefused(SendError):
    """The server answered C{error <code> <reason>}."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"server refused: {code} {reason}")
        self.code = code
        self.reason = reason
        self.retry_after = _wire.parse_retry_hint(reason)
        """Seconds the server asked us to wait before trying again, if it said."""
