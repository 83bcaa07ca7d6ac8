"""The TFTP server: one listening port, one object (and port, the TID) per transfer.

L{TFTPServerProtocol} listens on the well-known port and only parses
requests.  Each accepted request gets a L{_ReadTransfer} (RRQ) or
L{_WriteTransfer} (WRQ) on a fresh UDP port of its own; that object owns the
port, the retransmission timer and the retry budget, and closes the port
when it is done.  Storage refusals become ERROR packets through
L{error_code_for}.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._guard import AccessPolicy
from filexfer._log import log, log_transfer
from filexfer.storage import IStorage, IUpload, Receipt
from filexfer.tftp._engine import (
    BlockReceiver,
    BlockSender,
    FileBlocks,
    NetasciiBlocks,
    Send,
    SendMany,
    enable_gro,
    enlarge_buffers,
    fast_block,
    make_send,
    make_send_many,
    read_burst,
    read_directly,
)
from filexfer.tftp._packets import (
    ACCESS_VIOLATION,
    DEFAULT_BLKSIZE,
    ILLEGAL_OPERATION,
    MAX_BLKSIZE,
    MODES,
    NOT_DEFINED,
    OP_ACK,
    OP_DATA,
    OP_ERROR,
    OP_RRQ,
    OP_WRQ,
    UNKNOWN_TID,
    Error,
    MalformedPacket,
    Negotiated,
    NetasciiDecoder,
    OptionAck,
    ReadRequest,
    ServerCaps,
    WriteRequest,
    decode,
    encode,
    encode_ack,
    encode_error,
    error_code_for,
    negotiate,
)

Address = tuple[str, int]

MAX_DATAGRAM = MAX_BLKSIZE + 4
"""Pass this as C{maxPacketSize} to C{listenUDP} so that large blocks fit."""

_WRITE_BUFFER = 256 * 1024


def _peer_text(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Transfer(DatagramProtocol):
    """What both kinds of transfer share: the peer (TID) check, sending, ending."""

    kind = "tftp"
    noisy = False
    fast_opcode = -1
    """Packets with this opcode skip L{decode} and go to L{fast_packet}."""

    def __init__(
        self,
        server: TFTPServerProtocol,
        peer: Address,
        path: str,
        settings: Negotiated,
        timeout: float,
    ) -> None:
        self.server = server
        self.peer = peer
        self.path = path
        self.settings = settings
        self.timeout = float(settings.timeout) if settings.timeout is not None else timeout
        self.started = server.reactor.seconds()
        self.port: Any = None
        self.key: tuple[Address, bytes] = (peer, b"")
        self.done = False
        self.outcome = ""
        self.send: Send = self._not_started
        self.send_many: SendMany | None = None

    # -- helpers --------------------------------------------------------------

    def _not_started(self, datagram: bytes) -> None:
        pass

    def startProtocol(self) -> None:
        self.send = make_send(self.transport, self.peer)
        self.send_many = make_send_many(self.transport, self.peer, self.send)
        self.begin()

    def begin(self) -> None:
        """The port is open: send the first packet."""
        raise NotImplementedError

    def fast_packet(self, block: int, datagram: bytes) -> bool:
        """A datagram with opcode L{fast_opcode}, at least 4 bytes long.

        Returns True when nothing more is expected from the peer until it
        hears from us (see L{readable}).
        """
        raise NotImplementedError

    burst = 1
    """The most reads L{readable} makes per readiness event."""

    wants_gro = False
    """Receive coalesced runs of datagrams (UDP GRO) when the port allows."""

    gro = False

    def readable(self, sock: Any, bufsize: int) -> None:
        """The transfer port is readable: make up to L{burst} reads.

        Called by the port itself (see L{read_directly}) instead of
        C{datagramReceived} per datagram.  In-order packets from the peer
        go straight to L{fast_packet}; reading stops when it says the peer
        now waits for us, so no C{recvfrom} is wasted on an empty socket.
        """
        read_burst(sock, bufsize, self.burst, self.gro, self._datagram)

    def _datagram(self, datagram: Any, addr: Any) -> bool:
        block = fast_block(datagram, addr, self.peer, self.fast_opcode)
        if block >= 0 and not self.done:
            try:
                return self.fast_packet(block, datagram)
            except Exception:
                log.failure("unexpected error in a TFTP transfer with {peer}", peer=self.peer)
                self.finish("internal error", send_error=(NOT_DEFINED, "internal server error"))
                return True
        self.datagramReceived(bytes(datagram), addr)
        return self.port is None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            self._received(datagram, addr)
        except Exception:
            log.failure("unexpected error in a TFTP transfer with {peer}", peer=self.peer)
            self.finish("internal error", send_error=(NOT_DEFINED, "internal server error"))

    def _received(self, datagram: bytes, addr: Any) -> None:
        peer = self.peer
        if addr[0] != peer[0] or addr[1] != peer[1]:
            self._unknown_tid(addr)
            return
        if self.done:
            self.after_done(datagram)
            return
        if len(datagram) >= 4 and datagram[1] == self.fast_opcode and datagram[0] == 0:
            self.fast_packet((datagram[2] << 8) | datagram[3], datagram)
            return
        try:
            packet = decode(datagram)
        except MalformedPacket:
            return
        if isinstance(packet, Error):
            self.finish(f"peer error {packet.code} {packet.message}", send_error=None)
            return
        self.packet_received(packet)

    def _unknown_tid(self, addr: Address) -> None:
        try:
            self.transport.write(  # type: ignore[union-attr]
                encode_error(UNKNOWN_TID, "unknown transfer ID"), addr
            )
        except OSError:
            pass

    def packet_received(self, packet: object) -> None:
        """Handle a decoded packet from the peer."""
        raise NotImplementedError

    def after_done(self, datagram: bytes) -> None:
        """A datagram from the peer after the transfer ended (the dally)."""

    def illegal(self, packet: object) -> None:
        """A packet that has no place in this transfer: ERROR 4 and end."""
        name = type(packet).__name__
        self.finish(
            f"illegal {name} from peer", send_error=(ILLEGAL_OPERATION, f"unexpected {name}")
        )

    def _timed_out(self) -> None:
        """The peer stopped answering: ERROR 0 and end."""
        self.finish("timed out", send_error=(NOT_DEFINED, "timed out"))

    def finish(
        self,
        outcome: str,
        send_error: tuple[int, str] | None = None,
        linger: float = 0.0,
    ) -> None:
        """End the transfer: maybe send an ERROR, log, and close the port."""
        if self.done:
            return
        self.done = True
        self.outcome = outcome
        self.server.forget_request(self)
        if send_error is not None:
            self.send(encode_error(*send_error))
        self.cleanup()
        log_transfer(
            protocol=self.kind,
            peer=_peer_text(self.peer),
            path=self.path,
            nbytes=self.nbytes(),
            seconds=self.server.reactor.seconds() - self.started,
            outcome=outcome,
        )
        if linger > 0:
            self._linger = self.server.reactor.callLater(linger, self.close)
        else:
            self.close()

    def cleanup(self) -> None:
        """Release what the transfer holds (files, uploads, timers)."""

    def nbytes(self) -> int:
        """Bytes transferred so far."""
        return 0

    def close(self) -> Deferred[None]:
        """Stop listening on the transfer's port and forget the transfer."""
        linger = getattr(self, "_linger", None)
        if linger is not None and linger.active():
            linger.cancel()
        self.server.forget(self)
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        result = port.stopListening()
        if isinstance(result, Deferred):
            return result
        return succeed(None)

    def abandon(self) -> Deferred[None]:
        """The server is stopping: end at once."""
        self.finish("server stopped", send_error=(NOT_DEFINED, "server shutting down"))
        return self.close()


class _ReadTransfer(_Transfer):
    """Serve one RRQ: send a file from storage, a window of blocks at a time."""

    kind = "tftp-rrq"

    def __init__(
        self,
        server: TFTPServerProtocol,
        peer: Address,
        path: str,
        settings: Negotiated,
        timeout: float,
        retries: int,
        handle: BinaryIO,
        netascii: bool,
    ) -> None:
        super().__init__(server, peer, path, settings, timeout)
        self.handle = handle
        self.netascii = netascii
        self.retries = retries
        self.sender: BlockSender | None = None

    def begin(self) -> None:
        settings = self.settings
        blocks = (NetasciiBlocks if self.netascii else FileBlocks)(self.handle, settings.blksize)
        self.sender = BlockSender(
            clock=self.server.reactor,
            send=self.send,
            next_block=blocks.next_block,
            blksize=settings.blksize,
            windowsize=settings.windowsize,
            timeout=self.timeout,
            retries=self.retries,
            on_done=self._sent,
            on_timeout=self._timed_out,
            send_many=self.send_many,
        )
        oack = encode(OptionAck(settings.options)) if settings.options else None
        try:
            self.sender.start(oack)
        except OSError as exc:
            self._read_error(exc)

    fast_opcode = OP_ACK

    def readable(self, sock: Any, bufsize: int) -> None:
        """One ACK per window: read one datagram; an ACK from the peer goes
        straight to the sender (the shortest path, for lock-step clients)."""
        try:
            datagram, addr = sock.recvfrom(bufsize)
        except OSError:
            return  # nothing there, or an ICMP error about an earlier datagram
        peer = self.peer
        sender = self.sender
        if (
            addr[1] == peer[1]
            and addr[0] == peer[0]
            and len(datagram) >= 4
            and datagram[1] == OP_ACK
            and datagram[0] == 0
            and sender is not None
            and not self.done
        ):
            try:
                sender.ack_received((datagram[2] << 8) | datagram[3])
            except OSError as exc:
                self._read_error(exc)
            except Exception:
                log.failure("unexpected error in a TFTP transfer with {peer}", peer=peer)
                self.finish("internal error", send_error=(NOT_DEFINED, "internal server error"))
            return
        self.datagramReceived(datagram, addr)

    def fast_packet(self, block: int, datagram: bytes) -> bool:
        assert self.sender is not None
        try:
            self.sender.ack_received(block)
        except OSError as exc:
            self._read_error(exc)
        return True  # one ACK per window: the next one comes after our DATA

    def packet_received(self, packet: object) -> None:
        self.illegal(packet)  # ACKs took the fast path

    def _read_error(self, exc: OSError) -> None:
        self.finish(f"read error: {exc}", send_error=(NOT_DEFINED, "cannot read the file"))

    def _sent(self) -> None:
        self.finish("ok")

    def nbytes(self) -> int:
        return self.sender.acked_bytes if self.sender is not None else 0

    def cleanup(self) -> None:
        if self.sender is not None:
            self.sender.stop()
        self.handle.close()


@implementer(IPushProducer)
class _WriteTransfer(_Transfer):
    """Serve one WRQ: store the blocks through an upload, ACK the last one when durable.

    When the upload is a consumer (it writes in the background), the transfer
    registers as its producer: while the storage is behind, window ACKs are
    withheld, which slows the client down.
    """

    kind = "tftp-wrq"

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
        super().__init__(server, peer, path, settings, timeout)
        self.burst = min(settings.windowsize, 64) + 1
        self.wants_gro = True
        self.upload = upload
        self.decoder = NetasciiDecoder() if netascii else None
        self.buffer = bytearray()
        self.retries = retries
        self.receiver: BlockReceiver | None = None
        self.dally = self.timeout * max(1, retries)
        self.receipt: Receipt | None = None
        self.finishing = False

    def begin(self) -> None:
        settings = self.settings
        self.receiver = BlockReceiver(
            clock=self.server.reactor,
            send=self.send,
            deliver=self._deliver,
            blksize=settings.blksize,
            windowsize=settings.windowsize,
            timeout=self.timeout,
            retries=self.retries,
            on_last=self._last_block,
            on_timeout=self._timed_out,
        )
        if IConsumer.providedBy(self.upload):
            IConsumer(self.upload).registerProducer(self, True)
        options = settings.options
        self.receiver.start(encode(OptionAck(options)) if options else encode_ack(0))

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

    fast_opcode = OP_DATA

    def fast_packet(self, block: int, datagram: bytes) -> bool:
        assert self.receiver is not None
        try:
            return self.receiver.data_received(block, datagram[4:])
        except TransferError as exc:
            self._refused(exc)
            return True

    def packet_received(self, packet: object) -> None:
        self.illegal(packet)  # DATA took the fast path

    def after_done(self, datagram: bytes) -> None:
        if self.receipt is not None and datagram[:2] == b"\x00\x03" and len(datagram) >= 4:
            assert self.receiver is not None
            self.receiver.data_received((datagram[2] << 8) | datagram[3], datagram[4:])

    def _deliver(self, payload: bytes) -> None:
        if self.decoder is not None:
            payload = self.decoder.decode(bytes(payload))
        # Bytes wait in the buffer before they are written: a block that
        # breaks a limit gets the ERROR now, instead of its ACK.
        self.upload.check(len(self.buffer) + len(payload))
        self.buffer += payload
        if len(self.buffer) >= _WRITE_BUFFER:
            self._flush()

    def _flush(self, last: bool = False) -> None:
        if self.decoder is not None and last:
            self.buffer += self.decoder.flush()
        if self.buffer and self.upload.stored is None:
            self.upload.write(bytes(self.buffer))
        del self.buffer[:]

    def _last_block(self) -> None:
        try:
            self._flush(last=True)
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
        self.finish(f"ok stored as {receipt.path!r}", linger=self.dally)

    def _not_stored(self, failure: Failure) -> None:
        self.finishing = False
        self.upload.abort(False)
        exc = failure.value
        if isinstance(exc, TransferError):
            self._refused(exc)
        else:
            log.failure("storing a TFTP upload failed", failure)
            self.finish(
                f"failed: {exc}", send_error=(NOT_DEFINED, "the server could not store the file")
            )

    def _refused(self, exc: TransferError) -> None:
        self.finish(
            f"error {exc.code} {exc.reason}", send_error=(error_code_for(exc.code), exc.reason)
        )

    def nbytes(self) -> int:
        return self.receiver.received_bytes if self.receiver is not None else 0

    def cleanup(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
        if self.receipt is None and not self.finishing:
            # While finish() runs (maybe in a thread) the upload is storage's:
            # it either lands complete or storage discards it.
            self.upload.abort(False)


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
    @param timeout: the retransmission timeout in seconds, unless the
        client negotiates C{timeout}.
    @param retries: retransmissions before a transfer is abandoned.
    @param interface: the address transfer ports are bound on.
    @param access: which peer addresses may make requests (everyone by default).
    """

    def __init__(
        self,
        *,
        storage: IStorage,
        reactor: Any,
        allow_read: bool = True,
        allow_write: bool = True,
        max_blksize: int = MAX_BLKSIZE,
        max_windowsize: int = 64,
        timeout: float = 1.0,
        retries: int = 5,
        interface: str | None = None,
        access: AccessPolicy | None = None,
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
        self.transfers: set[_Transfer] = set()
        self._requests: dict[tuple[Address, bytes], _Transfer | None] = {}
        """Requests being served; None while the storage starts one."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """A datagram on the well-known port: a new request, or noise."""
        peer: Address = (addr[0], addr[1])
        try:
            self._request(datagram, peer)
        except Exception:
            log.failure("unexpected error handling a TFTP request from {peer}", peer=peer)

    def _request(self, datagram: bytes, peer: Address) -> None:
        if (peer, datagram) in self._requests:
            return  # the client repeated its request; the transfer answers it
        if len(datagram) < 2:
            return
        if not self.access.allows(peer[0]):
            self._error(peer, ACCESS_VIOLATION, "your address is not allowed")
            log.info("TFTP request from {peer} refused: not in --allow", peer=_peer_text(peer))
            return
        opcode = (datagram[0] << 8) | datagram[1]
        if opcode not in (OP_RRQ, OP_WRQ):
            if opcode != OP_ERROR:
                self._error(peer, ILLEGAL_OPERATION, "expected a read or write request")
            return
        try:
            request = decode(datagram)
        except MalformedPacket:
            return
        assert isinstance(request, ReadRequest | WriteRequest)
        if request.mode not in MODES:
            self._error(peer, ILLEGAL_OPERATION, f"unsupported mode {request.mode!r}")
            return
        try:
            path = request.filename.decode("utf-8")
        except UnicodeDecodeError:
            self._error(peer, ACCESS_VIOLATION, "the file name is not valid UTF-8")
            return
        key = (peer, datagram)
        self._requests[key] = None  # starting: a repeat of the request is ignored
        starting: Deferred[_Transfer]
        if isinstance(request, ReadRequest):
            starting = maybeDeferred(self._start_read, request, path, peer)
        else:
            starting = maybeDeferred(self._start_write, request, path, peer)
        starting.addCallbacks(
            lambda transfer: self._started(key, transfer),
            lambda failure: self._not_started(key, failure, request, path),
        )

    def _started(self, key: tuple[Address, bytes], transfer: _Transfer) -> None:
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
        log_transfer(
            protocol="tftp-rrq" if isinstance(request, ReadRequest) else "tftp-wrq",
            peer=_peer_text(peer),
            path=path,
            nbytes=0,
            seconds=0.0,
            outcome=f"refused: error {exc.code} {exc.reason}",
        )

    def _start_read(self, request: ReadRequest, path: str, peer: Address) -> _Transfer:
        if not self.allow_read:
            raise TransferError(403, "this server does not serve downloads")
        netascii = request.mode == "netascii"
        handle, size = self.storage.open_read(path)
        settings = negotiate(
            request.options, self.caps, kind="read", file_size=None if netascii else size
        )
        return _ReadTransfer(
            self, peer, path, settings, self.timeout, self.retries, handle, netascii
        )

    def _start_write(self, request: WriteRequest, path: str, peer: Address) -> Deferred[_Transfer]:
        if not self.allow_write:
            raise TransferError(403, "this server does not accept uploads")
        netascii = request.mode == "netascii"
        settings = negotiate(request.options, self.caps, kind="write")
        size = None if netascii else settings.tsize
        starting = self.storage.begin(path, size, None, None)
        return starting.addCallback(
            lambda upload: _WriteTransfer(
                self, peer, path, settings, self.timeout, self.retries, upload, netascii
            )
        )

    def _listen(self, transfer: _Transfer, request: bytes) -> None:
        interface = self.interface
        if interface is None:
            interface = self.transport.getHost().host if self.transport is not None else ""
        transfer.key = (transfer.peer, request)
        self._requests[transfer.key] = transfer
        self.transfers.add(transfer)
        size = MAX_DATAGRAM if transfer.settings.blksize > DEFAULT_BLKSIZE else 8192
        try:
            transfer.port = self.reactor.listenUDP(
                0, transfer, interface=interface, maxPacketSize=size
            )
        except Exception as exc:
            self.forget(transfer)
            transfer.done = True
            transfer.cleanup()
            self._error(transfer.peer, NOT_DEFINED, "the server cannot open a transfer port")
            log.warn("cannot open a TFTP transfer port: {exc}", exc=exc)
            return
        if transfer.done:  # it ended while starting (e.g. the file could not be read)
            transfer.close()
            return
        enlarge_buffers(transfer.port)
        if read_directly(transfer.port) and transfer.wants_gro:
            transfer.gro = enable_gro(transfer.port)

    def forget_request(self, transfer: _Transfer) -> None:
        """A transfer has ended: a repeat of its request is a new request."""
        if self._requests.get(transfer.key) is transfer:
            del self._requests[transfer.key]

    def forget(self, transfer: _Transfer) -> None:
        """A transfer has closed its port."""
        self.forget_request(transfer)
        self.transfers.discard(transfer)

    def _error(self, peer: Address, code: int, message: str) -> None:
        try:
            self.transport.write(encode_error(code, message), peer)  # type: ignore[union-attr]
        except OSError:
            pass

    def stopProtocol(self) -> None:
        """The listening port closed: abandon every transfer."""
        self.stop_transfers()

    def stop_transfers(self) -> Deferred[Any]:
        """End every running transfer; fires when their ports are closed."""
        for key in [key for key, transfer in self._requests.items() if transfer is None]:
            del self._requests[key]  # still starting: dropped once the storage answers
        closing = [transfer.abandon() for transfer in list(self.transfers)]
        return DeferredList(closing, consumeErrors=True)
