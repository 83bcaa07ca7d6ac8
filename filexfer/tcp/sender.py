"""The sending end of the TCP push.

L{send_file} connects through any client endpoint, sends the handshake,
streams the file with a pull producer (one chunk in memory at a time) and
fires with the server's receipt, checked against the client's own hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IPullProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer.storage import Receipt
from filexfer.tcp import _wire

CHUNK_SIZE = 256 * 1024

Progress = Callable[[int, int], None]
"""Called as C{progress(bytes_done, total_bytes)} while a file is sent."""


class SendError(Exception):
    """A send failed; C{str()} is one line for a person."""


class ServerRefused(SendError):
    """The server answered C{error <code> <reason>}."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"server refused: {code} {reason}")
        self.code = code
        self.reason = reason


@implementer(IPullProducer)
class _FileProducer:
    """Reads the file a chunk at a time, hashing what it sends."""

    def __init__(self, protocol: SenderProtocol) -> None:
        self._protocol = protocol

    def resumeProducing(self) -> None:
        self._protocol.send_next_chunk()

    def stopProducing(self) -> None:
        self._protocol.stop_streaming()


class SenderProtocol(Protocol):
    """Sends one file: handshake, wait for C{ok}, stream, wait for C{done}."""

    def __init__(
        self,
        handle: BinaryIO,
        size: int,
        request: _wire.SeedRequest | _wire.PutRequest,
        progress: Progress | None,
        clock: IReactorTime,
        idle_timeout: float,
    ) -> None:
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._timer: IDelayedCall | None = None
        self._handle = handle
        self._size = size
        self._request = request
        self._plain = isinstance(request, _wire.SeedRequest)
        self._progress = progress
        self._digest = hashlib.sha256()
        self._sent = 0
        self._buffer = b""
        self._streaming = False
        self._producing = False
        self._finished_sending = False
        self.result: Deferred[Receipt] = Deferred()

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._idle_timeout, self._stalled)
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = CHUNK_SIZE  # type: ignore[union-attr]
        if isinstance(self._request, _wire.SeedRequest):
            self.transport.write(self._request.name.encode("utf-8"))  # type: ignore[union-attr]
        else:
            self.transport.write(_wire.encode_put(self._request))  # type: ignore[union-attr]

    def _stalled(self) -> None:
        self._timer = None
        self._fail(SendError(f"no progress for {self._idle_timeout:g} seconds; giving up"))

    def _still_alive(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self._still_alive()
        self._buffer += data
        if self._plain and not self._streaming and self._buffer.startswith(_wire.SEED_OK):
            self._buffer = self._buffer[len(_wire.SEED_OK) :]
            self._start_streaming(0)
        while b"\n" in self._buffer and not self.result.called:
            line, _, self._buffer = self._buffer.partition(b"\n")
            self._handle_reply(line)
        if len(self._buffer) > _wire.MAX_HEADER_BLOCK:
            self._fail(SendError("the server sent an overlong reply"))

    def _handle_reply(self, line: bytes) -> None:
        try:
            reply = _wire.parse_reply(line)
        except ValueError as error:
            self._fail(SendError(str(error)))
            return
        if isinstance(reply, _wire.Refusal):
            self._fail(ServerRefused(reply.code, reply.reason))
        elif isinstance(reply, _wire.Ok) and not self._streaming and not self._plain:
            if reply.offset > self._size:
                self._fail(SendError(f"server offered offset {reply.offset} beyond the file"))
            else:
                self._start_streaming(reply.offset)
        elif isinstance(reply, _wire.Done) and self._finished_sending:
            self._check_receipt(reply)
        else:
            self._fail(SendError(f"unexpected reply from server: {line[:80]!r}"))

    def _start_streaming(self, offset: int) -> None:
        self._streaming = True
        if offset:
            self._digest = _hash_prefix(self._handle, offset)
        self._handle.seek(offset)
        self._sent = offset
        self._report_progress()
        if offset == self._size:
            self._all_sent()
            return
        self._producing = True  # first: a real transport pulls the first chunk at once
        self.transport.registerProducer(_FileProducer(self), False)  # type: ignore[union-attr]

    def send_next_chunk(self) -> None:
        """Send one more chunk (the producer's pull)."""
        if self._finished_sending:
            return
        chunk = self._handle.read(min(CHUNK_SIZE, self._size - self._sent))
        if not chunk:
            self._all_sent()
            return
        self._digest.update(chunk)
        self._sent += len(chunk)
        self.transport.write(chunk)  # type: ignore[union-attr]
        self._still_alive()
        self._report_progress()
        if self._sent >= self._size:
            self._all_sent()

    def stop_streaming(self) -> None:
        """The transport gave up on us."""
        self._finished_sending = True

    def _all_sent(self) -> None:
        if self._finished_sending:
            return
        self._stop_producing()
        if self._sent != self._size:
            self._fail(SendError(f"file changed while sending: {self._sent} of {self._size} bytes"))
        elif self._plain:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _check_receipt(self, done: _wire.Done) -> None:
        ours = self._digest.hexdigest()
        if done.size != self._size or done.sha256 != ours:
            self._fail(
                SendError(
                    f"server stored {done.size} bytes hashing to {done.sha256}, "
                    f"but the file has {self._size} bytes hashing to {ours}"
                )
            )
            return
        self._succeed(Receipt(done.size, done.sha256, done.path))

    def _report_progress(self) -> None:
        if self._progress is not None:
            self._progress(self._sent, self._size)

    def _succeed(self, receipt: Receipt) -> None:
        if not self.result.called:
            self.result.callback(receipt)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _fail(self, error: Exception) -> None:
        self._stop_producing()
        if not self.result.called:
            self.result.errback(Failure(error))
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _stop_producing(self) -> None:
        """No more reads from the file (it is closed once the result fires)."""
        if not self._finished_sending:
            self._finished_sending = True
            if self._producing:  # not registered when nothing was left to send
                self._producing = False
                self.transport.unregisterProducer()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._finished_sending = True
        if self.result.called:
            return
        if self._buffer.startswith(b"error"):
            self._handle_reply(self._buffer)
        elif (
            self._plain
            and self._streaming
            and self._sent == self._size
            and reason.check(ConnectionDone)
        ):
            self.result.callback(Receipt(self._size, self._digest.hexdigest(), self._request_path))
        else:
            tls_problem = _describe_tls_failure(reason)
            if tls_problem is not None:
                self.result.errback(Failure(SendError(tls_problem)))
                return
            stage = "before the server confirmed" if self._streaming else "during the handshake"
            self.result.errback(
                Failure(SendError(f"connection closed {stage}: {reason.getErrorMessage()}"))
            )

    @property
    def _request_path(self) -> str:
        request = self._request
        return request.name if isinstance(request, _wire.SeedRequest) else request.path


def _describe_tls_failure(reason: Failure) -> str | None:
    """One line for a failed TLS handshake, or None when it is something else."""
    if reason.check("service_identity.exceptions.VerificationError"):
        return "TLS: the server's certificate is not valid for this host name or address"
    if reason.check("OpenSSL.SSL.Error"):
        args = getattr(reason.value, "args", ())
        details = [str(part[-1]) for part in args[0] if part] if args else []
        text = "; ".join(d for d in details if d) or "handshake failed"
        return f"TLS: {text} (use --cacert for a private authority)"
    return None


def _hash_prefix(handle: BinaryIO, length: int) -> Any:
    digest = hashlib.sha256()
    handle.seek(0)
    remaining = length
    while remaining > 0:
        chunk = handle.read(min(1 << 20, remaining))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    return digest


def send_file(
    reactor: IReactorTime,
    endpoint: IStreamClientEndpoint,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    plain: bool = False,
    token: str | None = None,
    progress: Progress | None = None,
    idle_timeout: float = 300.0,
) -> Deferred[Receipt]:
    """Send the file at C{path} to the receiver at C{endpoint}.

    @param name: the remote relative path (FX/1) or name (classic); the
        file's own name by default.
    @param plain: use the classic form (name, C{ok}, stream, close) for
        receivers that speak nothing else.  There is no receipt then: the
        result describes what was sent.
    @param token: the shared secret for servers that require one.
    @param idle_timeout: give up after this many seconds without progress.
    @return: a Deferred firing with the server's L{Receipt}, verified
        against the client's own SHA-256, or failing with L{SendError}
        (L{ServerRefused} for an C{error} reply) or a connection error.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed when the Deferred fires
    except OSError as exc:
        return fail(SendError(f"cannot read {os.fspath(path)}: {exc.strerror}"))
    info = os.fstat(handle.fileno())
    remote = name if name is not None else os.path.basename(os.fspath(path))
    request: _wire.SeedRequest | _wire.PutRequest
    if plain:
        request = _wire.SeedRequest(remote)
    else:
        request = _wire.PutRequest(remote, info.st_size, None, info.st_mtime_ns, token)
    protocol = SenderProtocol(handle, info.st_size, request, progress, reactor, idle_timeout)
    connecting = endpoint.connect(Factory.forProtocol(lambda: protocol))

    def close(result: Any) -> Any:
        handle.close()
        return result

    def connected(_: Any) -> Deferred[Receipt]:
        return protocol.result

    return connecting.addCallback(connected).addBoth(close)
