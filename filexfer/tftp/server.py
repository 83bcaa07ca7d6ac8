"""The TFTP server: one listening port, one object (and port, the TID) per transfer.

L{TFTPServerProtocol} listens on the well-known port and only parses
requests.  Each accepted request gets a L{_ReadTransfer} (RRQ: the RFC's
sender) or L{_WriteTransfer} (WRQ: the receiver) on a fresh UDP port of its
own; that object owns the port, the retransmission timer and the retry
budget, and closes the port when it is done.  The datagram handling is the
transfer base's (L{filexfer.tftp.transfer}); this module adds how a server's
transfer starts (after the storage has), ends (a log line, an ERROR) and
stores.  Storage refusals become ERROR packets through L{error_code_for}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._guard import AccessPolicy
from filexfer._log import describe_peer, log
from filexfer._names import from_tftp_root, validate_path
from filexfer._records import ITransferObserver, Observers, TransferRecord, transfer_ended
from filexfer._types import ITFTPReactor
from filexfer.storage import IReadSource, IStorage, IUpload, Receipt
from filexfer.tftp._netascii import NetasciiDecoder
from filexfer.tftp._packets import (
    ACCESS_VIOLATION,
    ILLEGAL_OPERATION,
    MAX_BLKSIZE,
    MODES,
    NOT_DEFINED,
    OP_DATA,
    OP_ERROR,
    OP_RRQ,
    OP_WRQ,
    Error,
    MalformedPacket,
    Negotiated,
    OptionAck,
    ReadRequest,
    ServerCaps,
    WriteRequest,
    decode,
    encode,
    encode_ack,
    encode_error,
    error_code_for,
    fast_block,
    negotiate,
)
from filexfer.tftp._portrange import PortAllocator, PortRange, PortsExhausted
from filexfer.tftp._quirks import QuirksPolicy
from filexfer.tftp._remap import RemapGaveUp, RemapRefused, RemapRules
from filexfer.tftp._udp import MAX_DATAGRAM as MAX_DATAGRAM  # the old home of the name
from filexfer.tftp._udp import Address, open_port, write_to
from filexfer.tftp.sources import NOT_MINE, ITFTPSource, RootSource
from filexfer.tftp.transfer import Receiver, Sender, Transfer

_WRITE_BUFFER = 256 * 1024

PEER_TIMER = 5.0
"""The retransmission timer stock TFTP clients run with when they do not
negotiate C{timeout} (tftp-hpa's and atftp's 5 s).  A server transfer waits at
least (retries + 1) times this long for a silent peer, so that a client that
only resends on its own timer gets several chances (tftp-hpa re-arms its timer
on every packet it receives, so no repeated ACK makes it resend sooner)."""


class _ServerTransfer(Transfer):
    """A server's transfer: started by a request, ended with a log line."""

    direction = "upload"
    peer: Address

    def __init__(
        self,
        server: TFTPServerProtocol,
        peer: Address,
        path: str,
        settings: Negotiated,
        timeout: float,
        retries: int,
    ) -> None:
        # RFC 2349 timeout: echoed in the OACK, and the end of our backoff
        ceiling = float(settings.timeout) if settings.timeout is not None else timeout
        budget = max(ceiling, PEER_TIMER) * (retries + 1)
        super().__init__(server.reactor, peer, timeout, retries, ceiling, budget)
        self.server = server
        self.path = path
        self.settings = settings
        self.started = server.reactor.seconds()
        self.key: tuple[Address, bytes] = (peer, b"")
        self.outcome = ""
        self.announced = False
        """The server's observer was told this transfer started."""
        self.port_number: int | None = None
        """The number the port range gave this transfer (returned when it closes)."""

    def startProtocol(self) -> None:
        self.pin(self.peer)
        self.begin()

    def begin(self) -> None:
        """The port is open: send the first packet."""
        raise NotImplementedError

    def after_done(self, datagram: bytes, addr: Any) -> None:
        peer = self.peer
        if addr[0] != peer[0] or addr[1] != peer[1]:
            self.unknown_tid(addr)

    def packet_received(self, packet: object) -> None:
        """Anything but the fast path's packet (ACK or DATA): ERROR 4 and end."""
        name = type(packet).__name__
        self.finish(
            f"illegal {name} from peer",
            send_error=(ILLEGAL_OPERATION, f"unexpected {name}"),
            refused=400,
        )

    def peer_error(self, packet: Error) -> None:
        self.finish(f"peer error {packet.code} {packet.message}", send_error=None)

    def timed_out(self) -> None:
        """The peer stopped answering: ERROR 0 and end."""
        self.finish("timed out", send_error=(NOT_DEFINED, "timed out"), refused=408)

    def local_error(self, exc: OSError) -> None:
        self.crashed(exc)

    def crashed(self, exc: Exception) -> None:
        log.failure("unexpected error in a TFTP transfer with {peer}", peer=self.peer)
        self.finish(
            "internal error", send_error=(NOT_DEFINED, "internal server error"), refused=500
        )

    def finish(
        self,
        outcome: str,
        send_error: tuple[int, str] | None = None,
        linger: float = 0.0,
        *,
        refused: int | None = None,
        receipt: Receipt | None = None,
    ) -> None:
        """End the transfer: maybe send an ERROR, report its record, and close the port.

        @param outcome: the words the log line ends with.
        @param refused: the server's refusal code (HTTP-like) when it said no.
        @param receipt: what was stored, for a stored upload.
        """
        if self.done:
            return
        self.done = True
        self.outcome = outcome
        self.server.forget_request(self)
        if send_error is not None:
            self.send(encode_error(*send_error))
        self.cleanup()
        if refused is not None:
            self.report(outcome, "refused", refused)
        elif receipt is not None:
            self.report(outcome, "stored", receipt=receipt)
        elif outcome == "ok":
            self.report(outcome, "sent")
        else:
            self.report(outcome, "aborted")
        if linger > 0:
            self._linger = self.server.reactor.callLater(linger, self.close)
        else:
            self.close()

    def report(
        self, detail: str, outcome: str, code: int | None = None, receipt: Receipt | None = None
    ) -> None:
        """The transfer's one record: its log line, and the server's observer hears it."""
        now = self.server.reactor.seconds()
        settings = self.settings
        record = TransferRecord(
            protocol="tftp",
            direction=self.direction,
            peer=describe_peer(self.peer),
            path=self.path,
            outcome=outcome,
            detail=detail,
            nbytes=self.nbytes(),
            seconds=now - self.started,
            time=now,
            stored_path=receipt.path if receipt is not None else None,
            size=receipt.size if receipt is not None else None,
            sha256=receipt.sha256 if receipt is not None else None,
            error_code=code,
            accepted=self.announced,
            blksize=settings.blksize,
            windowsize=settings.windowsize,
            # counted by the transfer base where it retransmits (0 where it does not count)
            retransmissions=self.retransmissions,
            options_refused=settings.refused,
        )
        transfer_ended(self.server.observer, record)

    def nbytes(self) -> int:
        """Bytes transferred so far."""
        return 0

    def close(self) -> Deferred[None]:
        """Stop listening on the transfer's port and forget the transfer."""
        linger = getattr(self, "_linger", None)
        if linger is not None and linger.active():
            linger.cancel()
        self.server.forget(self)
        return self.close_port()

    def abandon(self) -> Deferred[None]:
        """The server is stopping: end at once."""
        self.finish("server stopped", send_error=(NOT_DEFINED, "server shutting down"))  # aborted
        return self.close()


class _ReadTransfer(Sender, _ServerTransfer):
    """Serve one RRQ: send a file from storage, a window of blocks at a time."""

    direction = "download"

    def __init__(
        self,
        server: TFTPServerProtocol,
        peer: Address,
        path: str,
        settings: Negotiated,
        timeout: float,
        retries: int,
        source: IReadSource,
        netascii: bool,
    ) -> None:
        super().__init__(server, peer, path, settings, timeout, retries)
        self.source: IReadSource = source  # closed by cleanup, even before it is sent
        self.netascii = netascii

    def begin(self) -> None:
        settings = self.settings
        oack = encode(OptionAck(settings.options)) if settings.options else None
        try:
            self.send_file(self.source, self.netascii, settings, handshake=oack, on_done=self._sent)
        except OSError as exc:
            self.local_error(exc)

    def local_error(self, exc: OSError) -> None:
        self.finish(
            f"read error: {exc}", send_error=(NOT_DEFINED, "cannot read the file"), refused=500
        )

    def _sent(self) -> None:
        self.finish("ok")


@implementer(IPushProducer)
class _WriteTransfer(Receiver, _ServerTransfer):
    """Serve one WRQ: store the blocks through an upload, ACK the last one when durable.

    When the upload is a consumer (it writes in the background), the transfer
    registers as its producer: while the storage is behind, window ACKs are
    withheld, which slows the client down.
    """

    direction = "upload"

    def __init__(
        self,
        server: TFTPServerProtocol,
        peer: Address,
        path: str,
        settings: Negotiated,
        timeout: float,
        retries: int,
        upload: IUpload,
        netascii: bool,
    ) -> None:
        super().__init__(server, peer, path, settings, timeout, retries)
        self.upload = upload
        self.decoder = NetasciiDecoder() if netascii else None
        self.buffer = bytearray()
        self.dally_for = self.rtt.ceiling * max(1, retries)
        self.receipt: Receipt | None = None
        self.finishing = False

    def begin(self) -> None:
        options = self.settings.options
        self.receive_file(
            self.settings,
            handshake=encode(OptionAck(options)) if options else encode_ack(0),
            write=self._store,
            on_last=self._last_block,
        )
        if IConsumer.providedBy(self.upload):
            IConsumer(self.upload).registerProducer(self, True)

    def pauseProducing(self) -> None:
        """The storage is behind: withhold ACKs."""
        if self.receiver is not None and not self.done:
            self.receiver.hold()

    def resumeProducing(self) -> None:
        """The storage caught up."""
        if self.receiver is not None and not self.done:
            self.receiver.release()

    def stopProducing(self) -> None:
        """Nothing to do: the transfer ends through finish() or abort()."""

    def crashed(self, exc: Exception) -> None:
        if isinstance(exc, TransferError):  # the storage refused a block
            self._refused(exc)
        else:
            super().crashed(exc)

    def after_done(self, datagram: bytes, addr: Any) -> None:
        """Our final ACK was lost: the peer repeats its last block (the RFC 1350 dally)."""
        super().after_done(datagram, addr)
        block = fast_block(datagram, addr, self.peer, OP_DATA)
        if self.receipt is not None and block >= 0:
            assert self.receiver is not None
            self.receiver.data_received(block, datagram[4:])

    def _store(self, payload: bytes) -> None:
        # Bytes wait in the buffer before they are written: a block that
        # breaks a limit gets the ERROR now, instead of its ACK.
        self.upload.check(len(self.buffer) + len(payload))
        self.buffer += payload
        if len(self.buffer) >= _WRITE_BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self.buffer and self.upload.stored is None:
            self.upload.write(bytes(self.buffer))
        del self.buffer[:]

    def _last_block(self) -> None:
        try:
            self.buffer += self.netascii_tail()
            self._flush()
            if IConsumer.providedBy(self.upload):
                IConsumer(self.upload).unregisterProducer()
        except TransferError as exc:
            self._refused(exc)
            return
        finishing = self.upload.finish()
        self.finishing = True
        finishing.addCallbacks(self._stored, self._not_stored)

    def _stored(self, receipt: Receipt) -> None:
        self.finishing = False
        if self.done:
            return
        self.receipt = receipt
        assert self.receiver is not None
        self.receiver.ack_final()
        self.finish(f"ok stored as {receipt.path!r}", linger=self.dally_for, receipt=receipt)

    def _not_stored(self, failure: Failure) -> None:
        self.finishing = False
        self.upload.abort(False)
        exc = failure.value
        if isinstance(exc, TransferError):
            self._refused(exc)
        else:
            log.failure("storing a TFTP upload failed", failure)
            self.finish(
                f"failed: {exc}",
                send_error=(NOT_DEFINED, "the server could not store the file"),
                refused=500,
            )

    def _refused(self, exc: TransferError) -> None:
        self.finish(
            f"error {exc.code} {exc.reason}",
            send_error=(error_code_for(exc.code), exc.reason),
            refused=exc.code,
        )

    def cleanup(self) -> None:
        super().cleanup()
        if self.receipt is None and not self.finishing:
            # While finish() runs (maybe in a thread) the upload is storage's:
            # it either lands complete or storage discards it.
            self.upload.abort(False)


class _SharedTID:
    """A transfer's port in single-port mode: the listening port itself, seen by one peer.

    Replies leave from the listening port (C{getHandle} is its socket, so
    the transfer's fast C{sendto} path uses it); datagrams reach the
    transfer because the server routes them by the peer's address and port
    (L{TFTPServerProtocol.datagramReceived}).  Closing only removes the route.
    """

    def __init__(self, server: TFTPServerProtocol, transfer: _ServerTransfer) -> None:
        self.server = server
        self.transfer = transfer
        self.listening: Any = server.transport

    def write(self, datagram: bytes, addr: Any) -> None:
        self.listening.write(datagram, addr)

    def getHandle(self) -> Any:
        get_handle = getattr(self.listening, "getHandle", None)
        return get_handle() if get_handle is not None else None

    def getHost(self) -> Any:
        return self.listening.getHost()

    def stopListening(self) -> Deferred[None]:
        self.server.unroute(self.transfer)
        return succeed(None)

    loseConnection = stopListening


class TFTPServerProtocol(DatagramProtocol):
    """A TFTP server (RFC 1350, 2347, 2348, 2349, 7440) storing through an L{IStorage}.

    Listen with C{reactor.listenUDP(port, protocol, interface=...)}.  Every
    accepted request is served on a fresh UDP port bound on C{interface}
    (by default the address of the listening port).

    @param storage: where uploads are stored and downloads are read.
    @param reactor: provides C{listenUDP}, C{callLater} and C{seconds}.
    @param allow_read: serve RRQ (downloads).
    @param allow_write: serve WRQ (uploads).
    @param max_blksize: the largest C{blksize} accepted (8-65464).
    @param max_windowsize: the largest C{windowsize} accepted (1-65535).
    @param timeout: the retransmission timeout in seconds before a transfer
        has measured its round trip; after that the timeout follows the
        round trip (RFC 6298, never below 0.1 s or C{timeout}), backing off
        up to C{timeout}, or up to the RFC 2349 C{timeout} a client
        negotiated (see L{filexfer.tftp.transfer.Transfer}).
    @param retries: a transfer is abandoned after (retries + 1) times that
        upper bound (at least 5 s, L{PEER_TIMER}) without progress.
    @param interface: the address transfer ports are bound on.
    @param access: which peer addresses may make requests (everyone by default).
    @param sources: where reads come from, asked in turn (see
        L{filexfer.tftp.sources}); by default the storage's root alone.
    @param source_timeout: seconds a source may take to answer (ERROR 0 past that).
    @param remap: tftpd-hpa remap rules applied to every requested name.
    @param quirks: per-network option refusals and caps.
    @param ports: the range transfer ports are taken from (else any free port).
    @param single_port: answer every transfer from the listening port,
        routing datagrams by the client's address and port (for NAT).
    @param observer: told when a transfer starts and given every request's
        L{TransferRecord} (after its log line).
    """

    def __init__(
        self,
        *,
        storage: IStorage,
        reactor: ITFTPReactor,
        allow_read: bool = True,
        allow_write: bool = True,
        max_blksize: int = MAX_BLKSIZE,
        max_windowsize: int = 64,
        timeout: float = 1.0,
        retries: int = 5,
        interface: str | None = None,
        access: AccessPolicy | None = None,
        sources: Sequence[ITFTPSource] | None = None,
        source_timeout: float = 10.0,
        remap: RemapRules | None = None,
        quirks: QuirksPolicy | None = None,
        ports: PortRange | None = None,
        single_port: bool = False,
        observer: ITransferObserver | None = None,
    ) -> None:
        if not 8 <= max_blksize <= MAX_BLKSIZE:
            raise ValueError(f"max_blksize must be 8-{MAX_BLKSIZE}")
        if not 1 <= max_windowsize <= 65535:
            raise ValueError("max_windowsize must be 1-65535")
        self.storage = storage
        self.reactor = reactor
        self.allow_read = allow_read
        self.allow_write = allow_write
        self.caps = ServerCaps(max_blksize=max_blksize, max_windowsize=max_windowsize)
        self.timeout = timeout
        self.retries = retries
        self.interface = interface
        self.access = access if access is not None else AccessPolicy()
        self.sources = list(sources) if sources is not None else [RootSource(storage)]
        self.source_timeout = source_timeout
        self.remap = remap
        self.quirks = quirks if quirks is not None else QuirksPolicy()
        self.ports = PortAllocator(ports) if ports is not None else None
        self.single_port = single_port
        self.routes: dict[Address, _ServerTransfer] = {}
        """Single-port mode: the transfer each client address and port talks to."""
        self.requests_paused = False
        """Single-port mode, draining: requests are dropped, transfers go on."""
        self.observer: ITransferObserver = observer if observer is not None else Observers()
        self.transfers: set[_ServerTransfer] = set()
        self._requests: dict[tuple[Address, bytes], _ServerTransfer | None] = {}
        """Requests being served; None while the storage starts one."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """A datagram on the listening port: a request, noise, or a single-port transfer's."""
        peer: Address = (addr[0], addr[1])
        routed = self.routes.get(peer)
        if routed is not None and not self._is_request(datagram):
            routed.datagramReceived(datagram, peer)
            return
        if self.requests_paused:
            return
        if routed is not None and datagram != routed.key[1]:
            routed.finish("ended: a new request from the same port")
            routed.close()
        try:
            self._request(datagram, peer)
        except Exception:
            log.failure("unexpected error handling a TFTP request from {peer}", peer=peer)

    def _request(self, datagram: bytes, peer: Address) -> None:
        if (peer, datagram) in self._requests:
            # The client repeated its request: our first answer was lost (or
            # is late); a running transfer sends it again at once.
            transfer = self._requests[(peer, datagram)]
            if transfer is not None:
                transfer.request_repeated()
            return
        if len(datagram) < 2:
            return
        if not self.access.allows(peer[0]):
            self._error(peer, ACCESS_VIOLATION, "your address is not allowed")
            log.info("TFTP request from {peer} refused: not in --allow", peer=describe_peer(peer))
            return
        opcode = (datagram[0] << 8) | datagram[1]
        if opcode not in (OP_RRQ, OP_WRQ):
            if opcode != OP_ERROR:
                self._error(peer, ILLEGAL_OPERATION, "expected a read or write request")
            return
        try:
            request = decode(datagram)
        except MalformedPacket as exc:  # no file name, no mode...: tftpd-hpa answers too
            self._error(peer, ILLEGAL_OPERATION, str(exc))
            return
        assert isinstance(request, ReadRequest | WriteRequest)
        if request.mode not in MODES:
            self._error(peer, ILLEGAL_OPERATION, f"unsupported mode {request.mode!r}")
            return
        try:
            name = request.filename.decode("utf-8")  # remapped, then read from the root
        except UnicodeDecodeError:
            self._error(peer, ACCESS_VIOLATION, "the file name is not valid UTF-8")
            return
        key = (peer, datagram)
        self._requests[key] = None  # starting: a repeat of the request is ignored
        starting: Deferred[_ServerTransfer]
        if isinstance(request, ReadRequest):
            starting = maybeDeferred(self._start_read, request, name, peer)
        else:
            starting = maybeDeferred(self._start_write, request, name, peer)
        starting.addCallbacks(
            lambda transfer: self._started(key, transfer),
            lambda failure: self._not_started(key, failure, request, from_tftp_root(name)),
        )

    @staticmethod
    def _is_request(datagram: bytes) -> bool:
        """Whether C{datagram} is an RRQ or WRQ (in single-port mode, not a transfer's).

        A repeat of a transfer's own request is then ignored, as on the
        listening port of a server with a port per transfer; any other
        request from the same address and port ends the old transfer (its
        client has moved on) and starts a new one.
        """
        return len(datagram) >= 2 and datagram[0] == 0 and datagram[1] in (OP_RRQ, OP_WRQ)

    def unroute(self, transfer: _ServerTransfer) -> None:
        """Single-port mode: a transfer closed; its peer's datagrams are requests again."""
        if self.routes.get(transfer.peer) is transfer:
            del self.routes[transfer.peer]

    def _started(self, key: tuple[Address, bytes], transfer: _ServerTransfer) -> None:
        if key not in self._requests:  # the server stopped while the storage started
            transfer.done = True
            transfer.cleanup()
            return
        del self._requests[key]
        self._listen(transfer, key[1])

    def _not_started(
        self,
        key: tuple[Address, bytes],
        failure: Failure,
        request: ReadRequest | WriteRequest,
        path: str,
    ) -> None:
        self._requests.pop(key, None)
        exc = failure.value
        if not isinstance(exc, TransferError):
            log.failure("unexpected error starting a TFTP transfer", failure)
            exc = TransferError(500, "internal server error")
        peer = key[0]
        self._error(peer, error_code_for(exc.code), exc.reason)
        now = self.reactor.seconds()
        record = TransferRecord(
            protocol="tftp",
            direction="download" if isinstance(request, ReadRequest) else "upload",
            peer=describe_peer(peer),
            path=path,
            outcome="refused",
            detail=f"refused: error {exc.code} {exc.reason}",
            time=now,
            error_code=exc.code,
        )
        transfer_ended(self.observer, record)

    def _resolve(self, name: str, kind: str, peer: Address) -> str:
        """The requested C{name} as a path in the root: the remap rules, then the name rules.

        The remap rules see the name as the client sent it (a leading C{/}
        included, as tftpd-hpa's do); what they make of it is then read from
        the TFTP root (L{from_tftp_root}: leading C{/}s dropped) and must
        pass the name rules of PROTOCOL.md section 1.3, so a rule cannot
        lead outside the root.

        @raise TransferError: 403 when a rule refuses the name or the rules
            give up; 400/403 when the result breaks the name rules.
        """
        if self.remap is not None:
            try:
                result = self.remap.apply(
                    name, kind="read" if kind == "read" else "write", client=peer[0]
                )
            except RemapRefused as exc:
                raise TransferError(403, exc.message) from None
            except RemapGaveUp as exc:
                log.warn("TFTP remap rules gave up on {path!r}: {why}", path=name, why=str(exc))
                raise TransferError(403, f"remap rules gave up: {exc}") from None
            name = result.name
        return validate_path(from_tftp_root(name))

    def _start_read(
        self, request: ReadRequest, name: str, peer: Address
    ) -> Deferred[_ServerTransfer]:
        if not self.allow_read:
            raise TransferError(403, "this server does not serve downloads")
        path = self._resolve(name, "read", peer)
        netascii = request.mode == "netascii"
        caps = self.quirks.caps_for(peer[0], self.caps)

        def opened(source: IReadSource) -> _ServerTransfer:
            try:
                settings = negotiate(
                    request.options,
                    caps,
                    kind="read",
                    file_size=None if netascii else source.size,
                )
            except BaseException:
                source.close()
                raise
            return _ReadTransfer(
                self, peer, path, settings, self.timeout, self.retries, source, netascii
            )

        return self._find(path, peer, 0).addCallback(opened)

    def _find(self, path: str, peer: Address, index: int) -> Deferred[IReadSource]:
        """Ask the sources from C{index} on for C{path}; 404 when none has it."""
        if index >= len(self.sources):
            return maybeDeferred(_not_found, path)
        source = self.sources[index]
        host = self.transport.getHost() if self.transport is not None else None
        server = (getattr(host, "host", ""), getattr(host, "port", 0))
        asking: Deferred[IReadSource | None] = maybeDeferred(source.open, path, peer, server)
        asking.addTimeout(self.source_timeout, self.reactor)

        def answered(found: IReadSource | None) -> IReadSource | Deferred[IReadSource]:
            return self._find(path, peer, index + 1) if found is NOT_MINE else found

        def failed(failure: Failure) -> Failure:
            if failure.check(TransferError):
                return failure
            if failure.check(TimeoutError):
                log.warn(
                    "TFTP read source {source} did not answer for {path!r} in {seconds}s",
                    source=repr(source),
                    path=path,
                    seconds=self.source_timeout,
                )
                raise TransferError(504, "the file's source did not answer in time")
            log.failure(
                "TFTP read source {source} failed for {path!r}",
                failure,
                source=repr(source),
                path=path,
            )
            raise TransferError(502, "the file's source failed")

        return asking.addCallbacks(answered, failed)

    def _start_write(
        self, request: WriteRequest, name: str, peer: Address
    ) -> Deferred[_ServerTransfer]:
        if not self.allow_write:
            raise TransferError(403, "this server does not accept uploads")
        path = self._resolve(name, "write", peer)
        netascii = request.mode == "netascii"
        settings = negotiate(
            request.options,
            self.quirks.caps_for(peer[0], self.caps),
            kind="write",
            netascii=netascii,
        )
        size = settings.tsize
        starting = self.storage.begin(path, size, None, None, exact_name=True)
        return starting.addCallback(
            lambda upload: _WriteTransfer(
                self, peer, path, settings, self.timeout, self.retries, upload, netascii
            )
        )

    def _listen(self, transfer: _ServerTransfer, request: bytes) -> None:
        interface = self.interface
        if interface is None:
            interface = self.transport.getHost().host if self.transport is not None else ""
        transfer.key = (transfer.peer, request)
        self._requests[transfer.key] = transfer
        self.transfers.add(transfer)
        transfer.announced = True
        self.observer.transfer_started("tftp", transfer.direction)

        def bind(number: int) -> tuple[Any, bool]:
            return open_port(
                self.reactor,
                transfer,
                interface=interface,
                blksize=transfer.settings.blksize,
                gro=transfer.wants_gro,
                number=number,
            )

        try:
            if self.single_port:
                shared = _SharedTID(self, transfer)
                self.routes[transfer.peer] = transfer
                transfer.port = shared
                transfer.makeConnection(shared)  # type: ignore[arg-type]
            elif self.ports is not None:
                transfer.port_number, (transfer.port, transfer.gro) = self.ports.open(bind)
            else:
                transfer.port, transfer.gro = bind(0)
        except PortsExhausted as exc:
            self._no_port(transfer, str(exc), 503)
            return
        except Exception as exc:
            log.warn("cannot open a TFTP transfer port: {exc}", exc=exc)
            self._no_port(transfer, "the server cannot open a transfer port", 500)
            return
        if transfer.done:  # it ended while starting (e.g. the file could not be read)
            transfer.close()

    def _no_port(self, transfer: _ServerTransfer, reason: str, code: int) -> None:
        """No port for the transfer: ERROR 0 with C{reason}, its record, nothing held."""
        self.forget(transfer)
        transfer.done = True
        transfer.cleanup()
        self._error(transfer.peer, NOT_DEFINED, reason)
        transfer.report(f"refused: {reason}", "refused", code)

    def forget_request(self, transfer: _ServerTransfer) -> None:
        """A transfer has ended: a repeat of its request is a new request."""
        if self._requests.get(transfer.key) is transfer:
            del self._requests[transfer.key]

    def forget(self, transfer: _ServerTransfer) -> None:
        """A transfer has closed its port."""
        self.forget_request(transfer)
        self.transfers.discard(transfer)
        if self.ports is not None and transfer.port_number is not None:
            self.ports.release(transfer.port_number)
            transfer.port_number = None

    def _error(self, peer: Address, code: int, message: str) -> None:
        write_to(self.transport, encode_error(code, message), peer)

    def stopProtocol(self) -> None:
        """The listening port closed: abandon every transfer."""
        self.stop_transfers()

    def pause_requests(self) -> None:
        """Read no more requests (a drain): they wait in the socket's queue; transfers go on.

        In single-port mode the transfers' datagrams arrive on the listening
        port too, so it is still read: new requests are dropped instead (a
        client sends its request again, to whoever listens then).
        """
        if self.single_port:
            self.requests_paused = True
            return
        stop_reading = getattr(self.transport, "stopReading", None)
        if stop_reading is not None:
            stop_reading()

    def in_progress(self) -> int:
        """Transfers running, and requests the storage is still starting.

        A transfer that has ended but still lingers on its port (the RFC 1350
        dally after an upload's last ACK) is not counted: it is done.
        """
        starting = sum(1 for transfer in self._requests.values() if transfer is None)
        return sum(1 for transfer in self.transfers if not transfer.done) + starting

    def stop_transfers(self) -> Deferred[Any]:
        """End every running transfer; fires when their ports are closed."""
        for key in [key for key, transfer in self._requests.items() if transfer is None]:
            del self._requests[key]  # still starting: dropped once the storage answers
        closing = [transfer.abandon() for transfer in list(self.transfers)]
        return DeferredList(closing, consumeErrors=True)


def _not_found(path: str) -> IReadSource:
    raise TransferError(404, f"{path} not found")
