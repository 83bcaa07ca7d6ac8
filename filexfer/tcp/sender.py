"""The sending end of the TCP push.

L{send_file} connects through any client endpoint, sends the handshake,
streams the file with a pull producer (one chunk in memory at a time) and
fires with the server's receipt, checked against the client's own hash.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IPullProducer,
    IReactorThreads,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._hashing import HASH_READ, ShortFile, sha256_prefix
from filexfer._mtime import NS_MAX, NS_MIN
from filexfer._receipt import Receipt
from filexfer.tcp import _wire

CHUNK_SIZE = 256 * 1024
_SENDFILE_MAX = 8 << 20
"""Bytes per C{sendfile} call (the kernel sends what the socket takes)."""
_REPORT_EVERY = 4 << 20
"""Progress reports from the sending thread, in bytes."""
_POLL_MS = 100
"""How long a blocked sending thread waits before it checks whether to stop."""

RETRY_DEADLINE = 60.0
"""Seconds L{send_file} keeps retrying a busy server by default."""
_FIRST_WAIT = 1.0
_MIN_WAIT = 0.1
_MAX_WAIT = 30.0

Progress = Callable[[int, int], None]
"""Called as C{progress(bytes_done, total_bytes)} while a file is sent."""


class SendError(Exception):
    """A send failed; C{str()} is one line for a person."""


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


@implementer(IPullProducer)
class _FileProducer:
    """Reads the file a chunk at a time, hashing what it sends."""

    def __init__(self, protocol: SenderProtocol) -> None:
        self._protocol = protocol

    def resumeProducing(self) -> None:
        self._protocol.send_next_chunk()

    def stopProducing(self) -> None:
        self._protocol.stop_streaming()


class _ThreadedSend:
    """Streams a byte range of a file to a TCP socket without TLS off the reactor thread.

    One thread pushes bytes [start, end) with C{os.sendfile} (no copy through
    Python), another hashes [0, end), so that a resumed upload's prefix is
    hashed off the reactor thread too (hashlib releases the GIL); each works on its own
    duplicates of the descriptors, so closing the file or the connection on
    the reactor thread never pulls a descriptor from under a thread.  The
    threads report back with C{callFromThread}; L{stop} makes them quit
    within L{_POLL_MS}.
    """

    def __init__(
        self,
        reactor: IReactorThreads,
        sock_fd: int,
        file_fd: int,
        start: int,
        end: int,
        digest: Any,
        progress: Callable[[int], None],
        finished: Callable[[int, int, BaseException | None], None],
        hash_from: int = 0,
    ) -> None:
        self._reactor = reactor
        self._start = start
        self._hash_from = hash_from
        self._end = end
        self._digest = digest
        self._progress = progress
        self._finished = finished
        self._stopped = threading.Event()
        self._results: dict[str, int] = {}
        self._error: BaseException | None = None
        sock, send_file, hash_file = os.dup(sock_fd), os.dup(file_fd), os.dup(file_fd)
        reactor.callInThread(self._send, sock, send_file)
        reactor.callInThread(self._hash, hash_file)

    def stop(self) -> None:
        """Ask both threads to quit (they close their descriptors as they go)."""
        self._stopped.set()

    def _send(self, sock: int, handle: int) -> None:
        position = self._start
        reported = position
        error: BaseException | None = None
        try:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while position < self._end and not self._stopped.is_set():
                try:
                    sent = os.sendfile(
                        sock, handle, position, min(_SENDFILE_MAX, self._end - position)
                    )
                except BlockingIOError:
                    poller.poll(_POLL_MS)
                    continue
                if sent == 0:
                    break  # the file is shorter than it was
                position += sent
                if position - reported >= _REPORT_EVERY or position == self._end:
                    reported = position
                    self._reactor.callFromThread(self._progress, position)
        except BaseException as exc:  # reported on the reactor thread
            error = exc
        finally:
            os.close(sock)
            os.close(handle)
        self._reactor.callFromThread(self._one_done, "sent", position, error)

    def _hash(self, handle: int) -> None:
        position = self._hash_from  # from 0, a resumed prefix too, unless it is hashed already
        error: BaseException | None = None
        try:
            while position < self._end and not self._stopped.is_set():
                chunk = os.pread(handle, min(HASH_READ, self._end - position), position)
                if not chunk:
                    break
                self._digest.update(chunk)
                position += len(chunk)
        except BaseException as exc:  # reported on the reactor thread
            error = exc
        finally:
            os.close(handle)
        self._reactor.callFromThread(self._one_done, "hashed", position, error)

    def _one_done(self, what: str, position: int, error: BaseException | None) -> None:
        self._results[what] = position
        self._error = self._error or error
        if len(self._results) == 2:
            self._finished(self._results["sent"], self._results["hashed"], self._error)


def _socket_fd(transport: object) -> int | None:
    """The descriptor of a TCP connection without TLS, else None."""
    from twisted.internet import tcp  # here: importing it loads TLS, which a send may not need

    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        return transport.fileno()
    return None


class SenderProtocol(Protocol):
    """Sends one file: handshake, wait for C{ok}, stream, wait for C{done}.

    Over TCP without TLS on a reactor with threads, the bytes go out with
    C{sendfile} and are hashed in a second thread (L{_ThreadedSend}); over
    TLS, or in memory, a pull producer sends a chunk at a time.
    """

    def __init__(
        self,
        handle: BinaryIO,
        size: int,
        request: _wire.ClassicRequest | _wire.PutRequest,
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
        self._classic = isinstance(request, _wire.ClassicRequest)
        self._progress = progress
        self._digest = hashlib.sha256()
        self._sent = 0
        self._buffer = b""
        self._streaming = False
        self._producing = False
        self._finished_sending = False
        self._threaded: _ThreadedSend | None = None
        self._early_done: Receipt | None = None
        self._trailer = False
        self._offset = 0
        self.result: Deferred[Receipt] = Deferred()

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._idle_timeout, self._stalled)
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = CHUNK_SIZE  # type: ignore[union-attr]
        if isinstance(self._request, _wire.ClassicRequest):
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
        if self._classic and not self._streaming and self._buffer.startswith(_wire.CLASSIC_OK):
            self._buffer = self._buffer[len(_wire.CLASSIC_OK) :]
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
            if reply.code == 422 and self._offset and self._trailer:
                # what the server held (a partial, a stored file) is not this
                # file as it is now: one fresh attempt (docs/protocol.md, I1)
                self._fail(_StartAfresh(f"server refused: {reply.code} {reply.reason}"))
            else:
                self._fail(ServerRefused(reply.code, reply.reason))
        elif isinstance(reply, _wire.Ok) and not self._streaming and not self._classic:
            if reply.offset > self._size:
                self._fail(SendError(f"server offered offset {reply.offset} beyond the file"))
            elif reply.trailer and reply.offset:
                self._streaming = True
                self._trailer = True
                self._offset = reply.offset
                self._check_prefix(reply.offset, reply.prefix_sha256)
            else:
                self._trailer = reply.trailer
                self._start_streaming(reply.offset)
        elif isinstance(reply, Receipt) and self._finished_sending:
            self._check_receipt(reply)
        elif isinstance(reply, Receipt) and self._threaded is not None:
            self._early_done = reply  # the hashing thread has yet to report
        else:
            self._fail(SendError(f"unexpected reply from server: {line[:80]!r}"))

    def _check_prefix(self, offset: int, theirs: str | None) -> None:
        """Hash our bytes [0, offset) (off the reactor thread when it has threads), then go on.

        C{theirs} is the server's SHA-256 of the bytes it holds: a mismatch
        means our file changed since the interrupted upload, so this attempt
        stops and a fresh one follows.  Without it (C{ok <size> -}, a stored
        file with our Size and Mtime) the trailer carries the proof.
        """
        if IReactorThreads.providedBy(self._clock):
            hashing = deferToThreadPool(
                cast(Any, self._clock),
                cast(IReactorThreads, self._clock).getThreadPool(),
                _hash_prefix,
                self._handle,
                offset,
            )
        else:
            hashing = maybeDeferred(_hash_prefix, self._handle, offset)

        def hashed(digest: Any) -> None:
            if self.result.called:
                return
            if theirs is not None and digest.hexdigest() != theirs:
                self._fail(_StartAfresh("the server holds other bytes for this file"))
                return
            self._digest = digest
            self._start_streaming(offset, prefix_hashed=True)

        def failed(failure: Failure) -> None:
            self._fail(SendError(f"cannot read the file: {failure.getErrorMessage()}"))

        hashing.addCallbacks(hashed, failed)

    def _start_streaming(self, offset: int, prefix_hashed: bool = False) -> None:
        self._streaming = True
        self._sent = offset
        self._report_progress()
        sock_fd = _socket_fd(self.transport)
        if sock_fd is not None and IReactorThreads.providedBy(self._clock):
            # The hashing thread starts at 0 unless the prefix is hashed
            # already: a resumed prefix is hashed off the reactor thread too.
            self._threaded = _ThreadedSend(
                cast(IReactorThreads, self._clock),
                sock_fd,
                self._handle.fileno(),
                offset,
                self._size,
                self._digest,
                self._sent_by_thread,
                self._threads_finished,
                hash_from=offset if prefix_hashed else 0,
            )
            return
        if offset and not prefix_hashed:
            self._digest = _hash_prefix(self._handle, offset)
        self._handle.seek(offset)
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

    def _sent_by_thread(self, position: int) -> None:
        self._sent = position
        self._still_alive()
        self._report_progress()

    def _threads_finished(self, sent: int, hashed: int, error: BaseException | None) -> None:
        self._threaded = None
        if self._finished_sending:
            return  # stopped: the result is settled already
        if error is not None:
            self._fail(SendError(f"sending failed: {error}"))
            return
        self._sent = min(sent, hashed)
        self._all_sent()
        early, self._early_done = self._early_done, None
        if early is not None and not self.result.called:
            self._check_receipt(early)

    def stop_streaming(self) -> None:
        """The transport gave up on us."""
        self._finished_sending = True

    def _all_sent(self) -> None:
        if self._finished_sending:
            return
        self._stop_producing()
        if self._sent != self._size:
            self._fail(SendError(f"file changed while sending: {self._sent} of {self._size} bytes"))
        elif self._classic:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self._trailer:
            trailer = _wire.encode_trailer(self._digest.hexdigest())
            self.transport.write(trailer)  # type: ignore[union-attr]

    def _check_receipt(self, done: Receipt) -> None:
        ours = self._digest.hexdigest()
        if done.size != self._size or done.sha256 != ours:
            self._fail(
                SendError(
                    f"server stored {done.size} bytes hashing to {done.sha256}, "
                    f"but the file has {self._size} bytes hashing to {ours}"
                )
            )
            return
        self._succeed(done)

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
        if self._threaded is not None:
            self._threaded.stop()
        if not self._finished_sending:
            self._finished_sending = True
            if self._producing:  # not registered when nothing was left to send
                self._producing = False
                self.transport.unregisterProducer()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._early_done is not None and self._threaded is not None:
            return  # the receipt came in; it is checked once our hashing thread is done
        if self._threaded is not None:
            self._threaded.stop()
        self._finished_sending = True
        if self.result.called:
            return
        if self._buffer.startswith(b"error"):
            self._handle_reply(self._buffer)
        elif (
            self._classic
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
        return request.name if isinstance(request, _wire.ClassicRequest) else request.path


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
    """The SHA-256 state after the first C{length} bytes of C{handle}.

    @raise SendError: the file is shorter than C{length}.
    """
    handle.seek(0)
    try:
        return sha256_prefix(handle, length, exact=True)
    except ShortFile as short:
        raise SendError(str(short)) from None


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
    retry_deadline: float = RETRY_DEADLINE,
    jitter: Callable[[], float] = random.random,
    on_retry: Callable[[ServerRefused, float], None] | None = None,
) -> Deferred[Receipt]:
    """Send the file at C{path} to the receiver at C{endpoint}.

    @param name: the remote relative path (FX/1) or name (classic); the
        file's own name by default.
    @param plain: use the classic form (name, C{ok}, stream, close) for
        receivers that speak nothing else.  There is no receipt then: the
        result describes what was sent.
    @param token: the shared secret for servers that require one.
    @param idle_timeout: give up after this many seconds without progress.
    @param retry_deadline: while this many seconds have not passed since the
        first attempt, a server that answers C{error 503} (busy) is tried
        again after a wait from L{retry_wait}; 0 never retries.  Nothing
        else is retried: a refused connection means no server is listening.
    @param jitter: random numbers in [0, 1) that spread the waits apart.
    @param on_retry: called as C{on_retry(refusal, seconds)} before each wait.
    @return: a Deferred firing with the server's L{Receipt}, verified
        against the client's own SHA-256, or failing with L{SendError}
        (L{ServerRefused} for an C{error} reply, the last one when the
        server stayed busy) or a connection error.
    """

    once = partial(_send_once, reactor, endpoint, path, name, plain, token, progress, idle_timeout)

    def attempt() -> Deferred[Receipt]:
        def again_from_zero(failure: Failure) -> Deferred[Receipt]:
            if failure.check(_StartAfresh):
                return once(fresh=True)
            return fail(failure)

        return once(fresh=False).addErrback(again_from_zero)

    return Deferred.fromCoroutine(
        _retry_while_busy(reactor, attempt, retry_deadline, jitter, on_retry)
    )


def retry_wait(retry: int, hint: float | None, jitter: float) -> float:
    """Seconds to wait before retry number C{retry} (0 for the first) of a busy server.

    The wait doubles from the server's hint (1 s without one) up to 30 s,
    is never shorter than the hint, and is stretched by C{1 + jitter}
    (0 <= jitter < 1) so that clients turned away together come back apart.
    """
    base = _FIRST_WAIT if hint is None else max(hint, _MIN_WAIT)
    wait = max(min(_MAX_WAIT, base * 2 ** min(retry, 32)), base)
    return float(wait * (1 + jitter))


async def _retry_while_busy(
    clock: IReactorTime,
    attempt: Callable[[], Deferred[Receipt]],
    deadline: float,
    jitter: Callable[[], float],
    on_retry: Callable[[ServerRefused, float], None] | None,
) -> Receipt:
    give_up_at = clock.seconds() + deadline
    retry = 0
    while True:
        try:
            return await attempt()
        except ServerRefused as refusal:
            remaining = give_up_at - clock.seconds()
            if refusal.code != 503 or remaining <= 0:
                raise
            wait = min(retry_wait(retry, refusal.retry_after, jitter()), remaining)
            if on_retry is not None:
                on_retry(refusal, wait)
            await deferLater(clock, wait)
            retry += 1


def _send_once(
    reactor: IReactorTime,
    endpoint: IStreamClientEndpoint,
    path: str | os.PathLike[str],
    name: str | None,
    classic: bool,
    token: str | None,
    progress: Progress | None,
    idle_timeout: float,
    *,
    fresh: bool,
) -> Deferred[Receipt]:
    """One attempt of L{send_file}: one connection, no retry; C{fresh}: C{Resume: no}."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed when the Deferred fires
    except OSError as exc:
        return fail(SendError(f"cannot read {os.fspath(path)}: {exc.strerror}"))
    info = os.fstat(handle.fileno())
    remote = name if name is not None else os.path.basename(os.fspath(path))
    request: _wire.ClassicRequest | _wire.PutRequest
    if classic:
        request = _wire.ClassicRequest(remote)
    else:
        # Mtime is optional: a time no server accepts (after 2262-04-11, which
        # ext4 can hold) is left out rather than have the upload refused.
        mtime_ns = info.st_mtime_ns if NS_MIN <= info.st_mtime_ns <= NS_MAX else None
        request = _wire.PutRequest(
            remote, info.st_size, None, mtime_ns, token, trailer=True, fresh=fresh
        )
    protocol = SenderProtocol(handle, info.st_size, request, progress, reactor, idle_timeout)
    connecting = endpoint.connect(Factory.forProtocol(lambda: protocol))

    def close(result: Any) -> Any:
        handle.close()
        return result

    def connected(_: Any) -> Deferred[Receipt]:
        return protocol.result

    return connecting.addCallback(connected).addBoth(close)
