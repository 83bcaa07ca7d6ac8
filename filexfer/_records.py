"""The one record of a finished transfer, and who observes transfers.

Every transfer the server serves (a TCP push, a TFTP upload or download)
ends with exactly one L{TransferRecord}.  The log line is rendered from it
(L{filexfer._log.log_transfer}), and the same record goes to the
service's L{ITransferObserver}s: the Prometheus metrics
(L{filexfer._metrics}), the JSON event log (L{filexfer._eventlog}) and the
C{--on-stored} hook (L{filexfer._hooks}).  A transfer that got as far as
moving bytes (the TCP C{ok}, an open TFTP transfer port) is announced
first with L{ITransferObserver.transfer_started}, and its record then has
C{accepted=True}: a gauge of transfers in progress pairs the two.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs
from zope.interface import Interface, implementer

from filexfer._log import log, log_transfer

PROTOCOLS = ("classic", "fx/1", "tftp", "proxy")
"""The C{protocol} of a record: the TCP handshake forms, TFTP, and C{proxy} for a
connection to a C{haproxy:} port refused (or closed) before its PROXY header
was through."""

DIRECTIONS = ("upload", "download")
"""The C{direction} of a record, seen from the client."""

OUTCOMES = ("stored", "already_stored", "sent", "refused", "aborted")
"""The C{outcome} of a record.

* C{stored}: an upload is under its final name (C{stored_path}, C{sha256}).
* C{already_stored}: the identical file was there; nothing was stored again.
* C{sent}: a download was sent to its end.
* C{refused}: the server said no, with C{error_code} (before or after the
  upload began: a refused name, a limit, a digest mismatch, a timeout).
* C{aborted}: the peer went away or gave up, or the server stopped; an
  C{error_code} is the one the server answered with, if it answered.
"""

SERVES = (("classic", "upload"), ("fx/1", "upload"), ("tftp", "upload"), ("tftp", "download"))
"""The (protocol, direction) pairs a server serves."""


@attrs.frozen(kw_only=True)
class TransferRecord:
    """What became of one transfer; the same for TCP and TFTP.

    @ivar protocol: one of L{PROTOCOLS}.
    @ivar direction: one of L{DIRECTIONS}.
    @ivar peer: C{host:port} of the client (C{[host]:port} for IPv6).
    @ivar path: the path the client asked for (text a peer chose: escape it
        before printing).
    @ivar outcome: one of L{OUTCOMES}.
    @ivar detail: the outcome in words, as the log line ends.
    @ivar nbytes: bytes moved on this connection (a resumed upload's earlier
        bytes are not counted again).
    @ivar seconds: from the connection (TCP) or the request (TFTP) to the end.
    @ivar time: when it ended, in the reactor's seconds (Unix time).
    @ivar stored_path: where the file is, relative to the root (stored and
        already stored uploads), else None.
    @ivar size: the stored file's size in bytes, else None.
    @ivar sha256: the stored file's SHA-256 (hex) when that was its receipt's
        digest, else None.
    @ivar blake3: the stored file's BLAKE3 (hex) when the client asked for
        that receipt digest (FX/1 C{Digest: BLAKE3}), else None.
    @ivar resumed_offset: bytes of an earlier upload an FX/1 upload resumed after.
    @ivar error_code: the code the server answered with (HTTP-like: 403,
        408, 413, 422, 503, ...; TFTP errors are mapped from these), or None.
    @ivar accepted: L{ITransferObserver.transfer_started} announced it.
    @ivar blksize: TFTP only: the negotiated block size.
    @ivar windowsize: TFTP only: the negotiated window size (RFC 7440).
    @ivar retransmissions: TFTP only: datagrams sent again after a timeout.
    @ivar options_refused: TFTP only: options the client asked for that a
        C{--tftp-quirks} rule refused (never acknowledged), in request order.
    """

    protocol: str
    direction: str
    peer: str
    path: str
    outcome: str
    detail: str
    nbytes: int = 0
    seconds: float = 0.0
    time: float = 0.0
    stored_path: str | None = None
    size: int | None = None
    sha256: str | None = None
    blake3: str | None = None
    resumed_offset: int = 0
    error_code: int | None = None
    accepted: bool = False
    blksize: int | None = None
    windowsize: int | None = None
    retransmissions: int | None = None
    options_refused: tuple[str, ...] = ()

    def as_event(self) -> dict[str, Any]:
        """The event log's JSON object: documented field names, the time in ISO 8601 UTC."""
        when = datetime.datetime.fromtimestamp(self.time, datetime.UTC)
        event: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "protocol": self.protocol,
            "direction": self.direction,
            "peer": self.peer,
            "path": self.path,
            "stored_path": self.stored_path,
            "bytes": self.nbytes,
            "size": self.size,
            "resumed_offset": self.resumed_offset,
            "seconds": round(self.seconds, 6),
            "outcome": self.outcome,
            "error_code": self.error_code,
            "sha256": self.sha256,
            "blake3": self.blake3,
            "detail": self.detail,
        }
        if self.protocol == "tftp":
            event["blksize"] = self.blksize
            event["windowsize"] = self.windowsize
            event["retransmissions"] = self.retransmissions
            event["options_refused"] = list(self.options_refused)
        return event


class ITransferObserver(Interface):
    """Told when a transfer starts moving bytes and when any transfer ends.

    Called on the reactor thread; an observer must not block (write a line,
    bump a counter, start a process) and should not raise (L{Observers}
    logs what one raises and goes on with the others).
    """

    def transfer_started(protocol: str, direction: str) -> None:
        """A transfer was accepted and starts moving bytes; its record will say C{accepted}."""

    def transfer_ended(record: TransferRecord) -> None:
        """A transfer ended (any outcome): its one record."""


@implementer(ITransferObserver)
class Observers:
    """Several observers as one; one that raises is logged, the others still hear."""

    def __init__(self, *observers: ITransferObserver) -> None:
        self.observers = list(observers)

    def add(self, observer: ITransferObserver) -> None:
        """Tell C{observer} too, from now on."""
        self.observers.append(observer)

    def transfer_started(self, protocol: str, direction: str) -> None:
        for observer in self.observers:
            try:
                observer.transfer_started(protocol, direction)
            except Exception:
                log.failure("a transfer observer failed: {observer!r}", observer=observer)

    def transfer_ended(self, record: TransferRecord) -> None:
        for observer in self.observers:
            try:
                observer.transfer_ended(record)
            except Exception:
                log.failure("a transfer observer failed: {observer!r}", observer=observer)


def transfer_ended(observer: ITransferObserver, record: TransferRecord) -> None:
    """The one way a transfer ends: its log line, then C{observer} gets the record."""
    log_transfer(record)
    observer.transfer_ended(record)
