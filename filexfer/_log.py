"""One log line per transfer, the same for TCP and TFTP."""

from __future__ import annotations

from twisted.logger import Logger

from filexfer._text import escape

log = Logger(namespace="filexfer")


def log_transfer(
    *,
    protocol: str,
    peer: str,
    path: str,
    nbytes: int,
    seconds: float,
    outcome: str,
) -> None:
    """Log a finished (or failed) transfer: peer, path, bytes, seconds, rate, outcome.

    Whatever a peer chose is shown escaped, never raw: the path in Python's
    quoted form (C{repr}, which escapes every control character), the peer and
    the outcome (which may carry a stored name or a TFTP client's ERROR
    message) through L{escape}.
    """
    rate = nbytes / seconds / 1e6 if seconds > 0 else 0.0
    log.info(
        "{protocol} {peer} {path!r} {nbytes} bytes in {seconds:.3f}s ({rate:.1f} MB/s): {outcome}",
        protocol=protocol,
        peer=escape(peer),
        path=path,
        nbytes=nbytes,
        seconds=seconds,
        rate=rate,
        outcome=escape(outcome),
    )
