"""A TFTP client: L{upload} and L{download}, each returning a Deferred.

Both ask for C{blksize}, C{windowsize}, C{timeout} and C{tsize} and fall back
to plain RFC 1350 (512-byte blocks, one block per ACK) when the server
ignores options.  A download is written to a temporary file next to the
target and renamed into place only when complete.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO, Literal

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.python.failure import Failure

from filexfer._progress import Progress as Progress
from filexfer._types import ITFTPReactor
from filexfer.storage._sources import FileSource
from filexfer.tftp._netascii import NetasciiDecoder
from filexfer.tftp._packets import (
    DEFAULT_BLKSIZE,
    ILLEGAL_OPERATION,
    MAX_BLKSIZE,
    MAX_TIMEOUT,
    MAX_WINDOWSIZE,
    MIN_BLKSIZE,
    MIN_TIMEOUT,
    MODES,
    NOT_DEFINED,
    OPTION_REFUSED,
    Ack,
    Data,
    ErrorCode,
    Negotiated,
    OptionAck,
    OptionRefused,
    ReadRequest,
    WriteRequest,
    check_oack,
    encode,
    encode_ack,
    encode_error,
)
from filexfer.tftp._packets import Error as ErrorPacket
from filexfer.tftp._udp import Address, open_port, write_to
from filexfer.tftp.transfer import Receiver, Sender, Transfer

DEFAULT_CLIENT_BLKSIZE = 1428
"""Fits one 1500-byte Ethernet frame: 1428 + 4 (TFTP) + 8 (UDP) + 40 (IPv6) < 1500."""

DEFAULT_CLIENT_WINDOWSIZE = 64
"""64 blocks of 1428 bytes (91 KB): two GSO sends, one ACK, and inside a default
Linux receive buffer (212 KB) even for a peer that does not enlarge it."""
DEFAULT_CLIENT_TIMEOUT = 1.0
DEFAULT_CLIENT_RETRIES = 5

_PROGRESS_STEP = 256 * 1024


class TFTPError(Exception):
    """The transfer failed: the server sent an ERROR, or it stopped answering.

    @ivar code: the TFTP error code (0-8).
    @ivar message: the server's (or our) one-line explanation.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = " ".join(message.split())

    def __str__(self) -> str:
        try:
            name = ErrorCode(self.code).name.lower().replace("_", " ")
        except ValueError:
            name = "unknown error"
        detail = f": {self.message}" if self.message else ""
        return f"TFTP error {self.code} ({name}){detail}"


class TFTPTimeout(TFTPError):
    """The peer stopped answering after the allowed retries."""

    def __init__(self, message: str) -> None:
        super().__init__(NOT_DEFINED, message)

    def __str__(self) -> str:
        return f"TFTP timeout: {self.message}"


def _same_host(a: str, b: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, a) == socket.inet_pton(family, b)
        except OSError:
            continue
    return a == b


def _requested_options(
    blksize: int, windowsize: int, timeout: float, tsize: int | None
) -> dict[str, str]:
    options: dict[str, str] = {}
    if blksize != DEFAULT_BLKSIZE:
        options["blksize"] = str(blksize)
    if windowsize != 1:
        options["windowsize"] = str(windowsize)
    if float(timeout).is_integer() and MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        options["timeout"] = str(int(timeout))
    options["tsize"] = str(tsize if tsize is not None else 0)
    return options


class _ClientTransfer(Transfer):
    """One client transfer on its own port: request phase, then data phase.

    The request is repeated until the server answers from a port of its
    own (its TID); the first reply pins that port as the peer.
    """

    def __init__(
        self,
        reactor: ITFTPReactor,
        server: Address,
        request: bytes,
        options: dict[str, str],
        timeout: float,
        retries: int,
        progress: Progress | None,
    ) -> None:
        super().__init__(reactor, None, timeout, retries)
        self.reactor = reactor
        self.server = server
        self.request = request
        self.options = options
        self.progress = progress
        self.result: Deferred[int] = Deferred(lambda _: self.fail(TFTPError(0, "cancelled")))
        self.request_timer = self.new_timer(self._send_request, self._no_answer)
        self._reported = 0

    def _send_request(self) -> int:
        write_to(self.transport, self.request, self.server)
        return 1

    def startProtocol(self) -> None:
        self._send_request()
        self.request_timer.progress(sent=0)  # the first reply times the round trip

    def may_reply(self, addr: Address) -> bool:
        return _same_host(addr[0], self.server[0])

    def pin(self, peer: Address) -> None:
        super().pin(peer)
        self.request_timer.progress(answered=0)
        self.request_timer.stop()

    def peer_error(self, packet: ErrorPacket) -> None:
        self.fail(TFTPError(packet.code, packet.message))

    def local_error(self, exc: OSError) -> None:
        self.abort(NOT_DEFINED, f"local I/O error: {exc}")

    def crashed(self, exc: Exception) -> None:
        self.fail(exc)  # a bug, not the network: fail the transfer with it

    def negotiated(self, packet: OptionAck) -> Negotiated | None:
        """Check an OACK; on a bad one send ERROR 8, fail, and return None."""
        try:
            return check_oack(self.options, packet.options)
        except OptionRefused as exc:
            self.abort(OPTION_REFUSED, str(exc))
            return None

    def packet_received(self, packet: object) -> None:
        if isinstance(packet, OptionAck):
            self.oack_repeated()
        else:
            self.abort(ILLEGAL_OPERATION, f"unexpected {type(packet).__name__}")

    def oack_repeated(self) -> None:
        """The server sent its OACK again: harmless (never answered with DATA)."""

    def abort(self, code: int, message: str) -> None:
        """Tell the server we give up, and fail."""
        if self.peer is not None:
            self.send(encode_error(code, message))
        self.fail(TFTPError(code, message))

    def report(self, done: int, total: int | None, final: bool = False) -> None:
        """Call the progress callback, at most every 256 KiB and at the end."""
        if self.progress is not None and (final or done - self._reported >= _PROGRESS_STEP):
            self._reported = done
            self.progress(done, total)

    def _no_answer(self) -> None:
        host, port = self.server
        self.fail(TFTPTimeout(f"no answer from {host} port {port} in {self.budget:g} s"))

    def timed_out(self) -> None:
        """The data phase gave up."""
        self.send(encode_error(NOT_DEFINED, "timed out"))
        self.fail(TFTPTimeout(f"the server stopped answering for {self.budget:g} s"))

    def succeed(self, nbytes: int) -> None:
        """The transfer completed."""
        self._end()
        self.close_port().addCallback(self._callback, nbytes)

    def fail(self, exc: Exception) -> None:
        """The transfer failed."""
        if self.done:
            return
        self._end()
        failure = Failure(exc)
        self.close_port().addCallback(lambda _: self._errback(failure))

    def _callback(self, _: object, nbytes: int) -> None:
        if not self.result.called:
            self.result.callback(nbytes)

    def _errback(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    def _end(self) -> None:
        self.done = True
        self.request_timer.stop()
        self.cleanup()


class _Uploader(Sender, _ClientTransfer):
    """Send a local file with WRQ."""

    def __init__(self, handle: BinaryIO, size: int, netascii: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.handle = handle
        self.size = size
        self.netascii = netascii

    def first_reply(self, packet: object) -> None:
        if isinstance(packet, OptionAck):
            settings = self.negotiated(packet)
            if settings is None:
                return
        elif isinstance(packet, Ack) and packet.block == 0:
            settings = Negotiated()
        else:
            self.abort(ILLEGAL_OPERATION, f"unexpected {type(packet).__name__} after WRQ")
            return
        self.send_file(
            FileSource(self.handle, self.size),
            self.netascii,
            settings,
            handshake=None,
            on_done=self._sent,
            on_progress=self._progress if self.progress is not None else None,
        )

    def _progress(self, done: int) -> None:
        self.report(done, None if self.netascii else self.size)

    def _sent(self) -> None:
        done = self.nbytes()
        self.report(done, None if self.netascii else self.size, final=True)
        self.succeed(self.size if not self.netascii else done)


class _Downloader(Receiver, _ClientTransfer):
    """Receive a remote file with RRQ into a temporary file, then rename it."""

    def __init__(self, local_path: str, netascii: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.local_path = local_path
        directory = os.path.dirname(os.path.abspath(local_path))
        fd, self.temp_path = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(local_path)}.", suffix=".part"
        )
        self.handle: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)
        self.decoder = NetasciiDecoder() if netascii else None
        self.total: int | None = None
        self.written = 0
        self.renamed = False

    def first_reply(self, packet: object) -> None:
        if isinstance(packet, OptionAck):
            settings = self.negotiated(packet)
            if settings is None:
                return
            handshake: bytes | None = encode_ack(0)
        elif isinstance(packet, Data):
            settings = Negotiated()
            handshake = None
        else:
            self.abort(ILLEGAL_OPERATION, f"unexpected {type(packet).__name__} after RRQ")
            return
        self.total = settings.tsize if self.decoder is None else None
        self.receive_file(
            settings,
            handshake=handshake,
            write=self.handle.write if self.decoder is None else self._write_counted,
            on_last=self._last_block,
        )
        if isinstance(packet, Data):
            assert self.receiver is not None
            self.receiver.data_received(packet.block, packet.payload)

    def oack_repeated(self) -> None:
        """Our ACK 0 was lost: send it again at once (the repeat of a block just acked)."""
        self.request_repeated()

    def _write_counted(self, data: bytes) -> None:
        """Netascii: count the converted bytes (octet counts what was received)."""
        self.handle.write(data)
        self.written += len(data)

    def after_reading(self) -> None:
        if self.receiver is not None and self.decoder is None:
            self.written = self.receiver.received_bytes
        if self.progress is not None and not self.done:
            self.report(self.written, self.total)

    def _last_block(self) -> None:
        assert self.receiver is not None
        if self.decoder is None:
            self.written = self.receiver.received_bytes
        else:
            self._write_counted(self.netascii_tail())
        self.handle.close()
        os.replace(self.temp_path, self.local_path)
        self.renamed = True
        self.receiver.ack_final()
        self.report(self.written, self.total, final=True)
        self.succeed(self.written)

    def cleanup(self) -> None:
        super().cleanup()
        if not self.handle.closed:
            self.handle.close()
        if not self.renamed:
            try:
                os.unlink(self.temp_path)
            except FileNotFoundError:
                pass


def _check(blksize: int, windowsize: int, timeout: float, retries: int, mode: str) -> None:
    if not MIN_BLKSIZE <= blksize <= MAX_BLKSIZE:
        raise ValueError(f"blksize must be {MIN_BLKSIZE}-{MAX_BLKSIZE}")
    if not 1 <= windowsize <= MAX_WINDOWSIZE:
        raise ValueError(f"windowsize must be 1-{MAX_WINDOWSIZE}")
    if not math.isfinite(timeout) or timeout <= 0 or retries < 0:
        raise ValueError("timeout must be a positive number of seconds and retries not negative")
    if mode not in MODES:
        raise ValueError("mode must be 'octet' or 'netascii'")


def _resolve(reactor: ITFTPReactor, host: str) -> Deferred[str]:
    if isIPAddress(host) or isIPv6Address(host):
        return succeed(host)
    resolved: Deferred[str] = IReactorCore(reactor).resolve(host)
    return resolved


def _run(
    reactor: ITFTPReactor, host: str, port: int, make: Callable[..., _ClientTransfer]
) -> Deferred[int]:
    """Resolve C{host}, then run the transfer C{make(server=(address, port))}."""

    def start(address: str) -> Deferred[int]:
        transfer = make(server=(address, port))
        interface = "::" if isIPv6Address(address) else ""
        blksize = int(transfer.options.get("blksize", DEFAULT_BLKSIZE))
        try:
            transfer.port, transfer.gro = open_port(
                reactor, transfer, interface=interface, blksize=blksize, gro=transfer.wants_gro
            )
        except Exception:
            transfer.done = True
            transfer.cleanup()
            raise
        return transfer.result

    return _resolve(reactor, host).addCallback(start)


def upload(
    reactor: ITFTPReactor,
    host: str,
    port: int,
    local_path: str | os.PathLike[str],
    remote_name: str,
    *,
    blksize: int = DEFAULT_CLIENT_BLKSIZE,
    windowsize: int = DEFAULT_CLIENT_WINDOWSIZE,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
    retries: int = DEFAULT_CLIENT_RETRIES,
    mode: Literal["octet", "netascii"] = "octet",
    progress: Progress | None = None,
) -> Deferred[int]:
    """Upload C{local_path} to C{host}:C{port} as C{remote_name} (WRQ).

    @return: fires with the number of bytes sent, or fails with
        L{TFTPError} (L{TFTPTimeout} when the server stops answering).
    """
    _check(blksize, windowsize, timeout, retries, mode)
    handle = open(local_path, "rb")  # noqa: SIM115 - closed by the transfer
    size = os.fstat(handle.fileno()).st_size
    netascii = mode == "netascii"
    options = _requested_options(blksize, windowsize, timeout, None if netascii else size)
    if netascii:
        del options["tsize"]
    request = encode(WriteRequest(remote_name.encode("utf-8"), mode, options))

    make = partial(
        _Uploader,
        handle,
        size,
        netascii,
        reactor=reactor,
        request=request,
        options=options,
        timeout=timeout,
        retries=retries,
        progress=progress,
    )
    result = _run(reactor, host, port, make)
    result.addErrback(_close_on_failure, handle)
    return result


def _close_on_failure(failure: Failure, handle: BinaryIO) -> Failure:
    handle.close()
    return failure


def download(
    reactor: ITFTPReactor,
    host: str,
    port: int,
    remote_name: str,
    local_path: str | os.PathLike[str],
    *,
    blksize: int = DEFAULT_CLIENT_BLKSIZE,
    windowsize: int = DEFAULT_CLIENT_WINDOWSIZE,
    timeout: float = DEFAULT_CLIENT_TIMEOUT,
    retries: int = DEFAULT_CLIENT_RETRIES,
    mode: Literal["octet", "netascii"] = "octet",
    progress: Progress | None = None,
) -> Deferred[int]:
    """Download C{remote_name} from C{host}:C{port} into C{local_path} (RRQ).

    The data goes to a temporary file next to C{local_path}, renamed into
    place when complete and removed on failure.

    @return: fires with the number of bytes written, or fails with
        L{TFTPError} (L{TFTPTimeout} when the server stops answering).
    """
    _check(blksize, windowsize, timeout, retries, mode)
    netascii = mode == "netascii"
    options = _requested_options(blksize, windowsize, timeout, 0)
    if netascii:
        del options["tsize"]
    request = encode(ReadRequest(remote_name.encode("utf-8"), mode, options))
    target = os.fspath(local_path)

    make = partial(
        _Downloader,
        target,
        netascii,
        reactor=reactor,
        request=request,
        options=options,
        timeout=timeout,
        retries=retries,
        progress=progress,
    )
    return _run(reactor, host, port, make)
