"""One log line per transfer, the same for TCP and TFTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from filexfer._guard import ipv4_form
from filexfer._text import escape

if TYPE_CHECKING:
    from filexfer._records import TransferRecord

log = Logger(namespace="filexfer")


def format_address(host: str, port: int | str) -> str:
    """C{host:port}, with the host in brackets when it is IPv6 (C{0.0.0.0} for an empty host).

    An IPv4 client of a dual-stack port (C{::ffff:a.b.c.d}) is shown as IPv4.
    """
    if host in ("", "0.0.0.0"):
        host = "0.0.0.0"
    host = ipv4_form(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_peer(address: Any) -> str:
    """C{host:port} (C{[host]:port} for IPv6) of an address, as every log line shows it.

    C{address} is an C{IAddress} with C{host} and C{port} (a TCP peer, or a
    listening port) or a C{(host, port)} tuple (UDP); any other address (a
    UNIX socket) is shown as its name, or as its own text without one.
    """
    if isinstance(address, tuple):
        host, port = address[0], address[1]
    else:
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
        if host is None or port is None:
            name = getattr(address, "name", None)
            return name.decode() if isinstance(name, bytes) else str(name or address)
    return format_address(host, port)


def log_transfer(record: TransferRecord) -> None:
    """Log a finished (or failed) transfer: peer, path, bytes, seconds, rate, outcome.

    A TFTP transfer that negotiated its options adds their outcome after the
    outcome, in brackets (its block and window sizes and the options it
    refused: C{[blksize 512, windowsize 2, refused blksize]}), which is also
    the event's C{stats} key.

    Whatever a peer chose is shown escaped, never raw: the path in Python's
    quoted form (C{repr}, which escapes every control character), the peer and
    the outcome (which may carry a stored name or a TFTP client's ERROR
    message) through L{escape}.  A TFTP transfer is named by its request
    (C{tftp-rrq}, C{tftp-wrq}) and adds how many datagrams it sent again.
    """
    protocol = record.protocol
    if protocol == "tftp":
        protocol = "tftp-rrq" if record.direction == "download" else "tftp-wrq"
    seconds = record.seconds
    rate = record.nbytes / seconds / 1e6 if seconds > 0 else 0.0
    retransmissions = record.retransmissions
    resent = "" if retransmissions is None else f", {retransmissions} retransmitted"
    stats = _tftp_stats(record)
    log.info(
        "{protocol} {peer} {path!r} {nbytes} bytes in {seconds:.3f}s ({rate:.1f} MB/s{resent})"
        ": {outcome}" + (" [{stats}]" if stats else ""),
        stats=stats,
        protocol=protocol,
        peer=escape(record.peer),
        path=record.path,
        nbytes=record.nbytes,
        seconds=seconds,
        rate=rate,
        resent=resent,
        retransmissions=retransmissions,
        outcome=escape(record.detail),
    )


def _tftp_stats(record: TransferRecord) -> str:
    """A TFTP record's negotiated parameters (C{blksize 1468, windowsize 4, refused tsize}).

    Empty for a record without them (TCP, or a TFTP request refused before
    its options were negotiated).
    """
    if record.blksize is None or record.windowsize is None:
        return ""
    parts = [f"blksize {record.blksize}", f"windowsize {record.windowsize}"]
    if record.options_refused:
        parts.append(f"refused {','.join(record.options_refused)}")
    return ", ".join(parts)
