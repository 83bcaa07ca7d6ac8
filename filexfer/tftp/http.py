"""An HTTP(S) read source (C{--tftp-http URL}): files missing under the root, from a web server.

PXE ROMs and phones speak only TFTP, but the images they boot often live on
a web server or an object store's HTTP front.  L{HTTPSource} is the last
link of the read-source chain: a path nobody else has is fetched from
C{BASE_URL/path} with treq and streamed: when the answer has a
Content-Length, the first DATA block leaves as soon as its bytes arrive,
while the same bytes are written to a local cache on disk (by a thread); the
next client asking for it is served from the cache at once.

The cache (C{ROOT/.filexfer/http-cache}, where no TFTP name can reach) is
bounded: a file larger than the cache is refused (ERROR 3), and after each
fetch the least recently served files go until the cache fits.  A cache
entry appears only once the whole body has arrived with the announced
length.  Clients asking for the same file before the answer's headers share
the stream; later ones wait for the cache entry.  When the readers fall
behind, the HTTP connection is paused (at most C{stream_buffer} bytes are
held in memory per reader); a body that stops or fails mid-stream fails the
reads (ERROR 0) and caches nothing.  Without a Content-Length the file is
fetched into the cache before the first DATA block leaves.  The server's
source timeout (C{--tftp-source-timeout}) bounds how long a client waits
for the headers (or for such a whole fetch).

HTTP 404 and 410 are "not mine" (ERROR 1 at the end of the chain); any other
answer but 200, or a failed connection, refuses the request with ERROR 0
and a log line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._log import log
from filexfer.storage import BlockingRunner, FileSource, IReadSource
from filexfer.tftp.sources import NOT_MINE, Address, ITFTPSource

CACHE_DIRECTORY = os.path.join(".filexfer", "http-cache")
"""Where the cache lives under the root (the state directory: no TFTP name reaches it)."""


class _TooLarge(Exception):
    pass


@implementer(ITFTPSource)
class HTTPSource:
    """Files from C{base_url}, through a bounded cache under C{storage_root}.

    @param reactor: for treq's connections (unless C{http} is given).
    @param base_url: C{http://host/boot/}: a path C{a/b} is fetched from
        C{http://host/boot/a/b} (each component percent-encoded).
    @param storage_root: the server's root; the cache is under its state directory.
    @param max_bytes: the most bytes the cache holds.
    @param http: a treq-like client (C{get}, and C{collect}); C{treq} by
        default, C{treq.testing.StubTreq} in tests.
    @param run_blocking: where the cache file is written (in order, one job
        at a time); the reactor's thread pool by default (inline for a
        reactor without one, such as a test's C{Clock}).
    @param stream_buffer: the most bytes held in memory for a reader (or
        waiting for the cache writer) before the HTTP connection is paused.
    @param stall_timeout: seconds without a byte of a streaming body
        (while it is not paused) before the stream fails.
    """

    def __init__(
        self,
        reactor: Any,
        base_url: str,
        *,
        storage_root: str,
        max_bytes: int,
        http: Any = None,
        run_blocking: BlockingRunner[Any] | None = None,
        stream_buffer: int = 1024 * 1024,
        stall_timeout: float = 30.0,
    ) -> None:
        if http is None:
            http = _Treq(reactor)
        self.http = http
        self.reactor = reactor
        self.run_blocking = run_blocking or _default_runner(reactor)
        self.stream_buffer = stream_buffer
        self.stall_timeout = stall_timeout
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.cache = os.path.join(storage_root, CACHE_DIRECTORY)
        self.max_bytes = max_bytes
        self._fetching: dict[str, list[Deferred[IReadSource | None]]] = {}
        os.makedirs(self.cache, exist_ok=True)

    def __repr__(self) -> str:
        return f"HTTP source {self.base_url}"

    def url(self, path: str) -> str:
        """The URL of C{path} (each component percent-encoded)."""
        return self.base_url + quote(path.lstrip("/"), safe="/")

    def _cached(self, path: str) -> str:
        return os.path.join(self.cache, hashlib.sha256(path.encode()).hexdigest())

    def open(self, path: str, client: Address, server: Address) -> Deferred[IReadSource | None]:
        """The cached copy of C{path}, or a fetch of it; L{NOT_MINE} for 404/410."""
        cached = self._cached(path)
        readable = _open(cached)
        if readable is not None:
            return succeed(readable)
        waiting: Deferred[IReadSource | None] = Deferred()
        if path in self._fetching:
            self._fetching[path].append(waiting)
            return waiting
        self._fetching[path] = [waiting]
        fetching = self._fetch(path, cached)
        fetching.addBoth(self._fetched, path, cached)
        return waiting

    def _fetched(self, result: Any, path: str, cached: str) -> None:
        waiters = self._fetching.pop(path, [])
        for waiting in waiters:
            if isinstance(result, Failure):
                waiting.errback(result)
            elif result is NOT_MINE:
                waiting.callback(NOT_MINE)
            else:
                waiting.callback(_open(cached))

    def _fetch(self, path: str, cached: str) -> Deferred[Any]:
        url = self.url(path)
        temp = f"{cached}.part"
        getting: Deferred[Any] = self.http.get(url)

        def answered(response: Any) -> Any:
            if response.code in (404, 410):
                return NOT_MINE
            if response.code != 200:
                raise TransferError(502, f"the HTTP source answered {response.code}")
            length = response.length if isinstance(response.length, int) else None
            if length is not None and length > self.max_bytes:
                raise TransferError(413, "the file is larger than the HTTP cache")
            if length is not None:
                return self._stream(response, path, length, temp, cached)
            handle = open(temp, "wb")
            received = [0]

            def write(chunk: bytes) -> None:
                received[0] += len(chunk)
                if received[0] > self.max_bytes:
                    raise _TooLarge()
                handle.write(chunk)

            def done(result: Any) -> Any:
                handle.close()
                if isinstance(result, Failure):
                    _remove(temp)
                    return result
                os.replace(temp, cached)
                self._evict(keep=cached)
                return cached

            return self.http.collect(response, write).addBoth(done)

        def failed(failure: Failure) -> Failure:
            if failure.check(TransferError):
                return failure
            if failure.check(_TooLarge):
                raise TransferError(413, "the file is larger than the HTTP cache")
            log.warn(
                "{source}: fetching {url} failed: {why}",
                source=repr(self),
                url=url,
                why=failure.getErrorMessage(),
            )
            raise TransferError(502, "the HTTP source could not be reached")

        return getting.addCallback(answered).addErrback(failed)

    def _stream(
        self, response: Any, path: str, length: int, temp: str, cached: str
    ) -> Deferred[Any]:
        """Give the waiting clients readers fed by the body; fire when the file is cached."""
        stream = _Stream(self, length, temp, cached)
        waiters = self._fetching.get(path, [])
        self._fetching[path] = []  # later clients wait for the cache entry
        readers = [stream.reader() for _ in waiters]
        response.deliverBody(stream)
        for waiting, reader in zip(waiters, readers, strict=True):
            waiting.callback(reader)
        return stream.done

    def _evict(self, keep: str) -> None:
        """Remove the least recently served files until the cache holds at most max_bytes."""
        entries = []
        for name in os.listdir(self.cache):
            full = os.path.join(self.cache, name)
            if name.endswith(".part"):
                continue
            try:
                info = os.stat(full)
            except FileNotFoundError:
                continue
            entries.append((info.st_atime, info.st_size, full))
        total = sum(size for _, size, _ in entries)
        for _, size, full in sorted(entries):
            if total <= self.max_bytes:
                break
            if full != keep:
                _remove(full)
                total -= size


class _Treq:
    """treq's C{get} on a client of our reactor, and its C{collect}."""

    def __init__(self, reactor: Any) -> None:
        import treq
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        self._client = HTTPClient(Agent(reactor))
        self.collect = treq.collect

    def get(self, url: str) -> Deferred[Any]:
        return self._client.get(url)


def _default_runner(reactor: Any) -> BlockingRunner[Any]:
    """The reactor's thread pool, or inline for a reactor without one (a test's Clock)."""
    if hasattr(reactor, "getThreadPool"):
        from twisted.internet.threads import deferToThreadPool

        def run(work: Callable[[], Any]) -> Deferred[Any]:
            return deferToThreadPool(reactor, reactor.getThreadPool(), work)

        return run
    return maybeDeferred


class _CacheWriter:
    """Writes a stream's bytes to C{temp}, one job at a time through C{run}.

    C{pending} counts the bytes handed over but not yet written (the
    stream's back-pressure counts them).  A write error is remembered: the
    stream still serves its readers, but nothing is cached.
    """

    def __init__(self, run: BlockingRunner[Any], temp: str, on_written: Callable[[], None]) -> None:
        self._run = run
        self._temp = temp
        self._on_written = on_written
        self._handle: Any = None
        self.pending = 0
        self.error: BaseException | None = None
        self._tail: Deferred[Any] = succeed(None)

    def _then(self, work: Callable[[], Any]) -> Deferred[Any]:
        def step(_: Any) -> Deferred[Any]:
            return self._run(work)

        self._tail = self._tail.addCallback(step)
        return self._tail

    def write(self, data: bytes) -> None:
        self.pending += len(data)

        def work() -> None:
            if self.error is not None:
                return
            if self._handle is None:
                self._handle = open(self._temp, "wb")
            self._handle.write(data)

        def written(result: Any) -> None:
            self.pending -= len(data)
            if isinstance(result, Failure):
                self.error = result.value
            self._on_written()

        self._then(work).addBoth(written)

    def finish(self, length: int, cached: str, evict: Callable[[], None]) -> Deferred[Any]:
        """Close, check the length, move into place; fire with C{cached} (or fail)."""

        def work() -> str:
            self._close()
            if self.error is not None:
                _remove(self._temp)
                raise self.error
            if self._handle is None:  # an empty body: nothing was written
                open(self._temp, "wb").close()
            if os.path.getsize(self._temp) != length:
                _remove(self._temp)
                raise TransferError(502, "the HTTP source sent the wrong length")
            os.replace(self._temp, cached)
            evict()
            return cached

        return self._then(work)

    def abort(self) -> None:
        """Close and remove the partial file."""

        def work() -> None:
            self._close()
            _remove(self._temp)

        self._then(work).addErrback(lambda _: None)

    def _close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()


_DONE = Failure(ResponseDone())


class _Stream(Protocol):
    """A response body (Content-Length known): fed to readers and to the cache writer."""

    def __init__(self, source: HTTPSource, length: int, temp: str, cached: str) -> None:
        self.source = source
        self.length = length
        self.cached = cached
        self.received = 0
        self.readers: list[_StreamReader] = []
        self.writer = _CacheWriter(source.run_blocking, temp, self._regulate)
        self.done: Deferred[Any] = Deferred()
        self.complete = False
        self.error: Failure | None = None
        self.paused = False
        self._ended = False
        self._stall: Any = None

    def reader(self) -> _StreamReader:
        reader = _StreamReader(self)
        self.readers.append(reader)
        return reader

    def connectionMade(self) -> None:
        self._watch()

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        self.received += len(data)
        if self.received > self.length:
            self._abort(TransferError(502, "the HTTP source sent more than its Content-Length"))
            return
        for reader in self.readers:
            reader._feed(data)
        self.writer.write(data)
        self._watch()
        self._regulate()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._ended:
            return
        self._ended = True
        self._unwatch()
        if reason.check(ResponseDone) and self.received == self.length:
            self.complete = True
            for reader in self.readers:
                reader._end()
            source = self.source
            self.writer.finish(
                self.length, self.cached, lambda: source._evict(keep=self.cached)
            ).chainDeferred(self.done)
            return
        log.warn(
            "{source}: the body stopped after {received} of {length} bytes: {why}",
            source=repr(self.source),
            received=self.received,
            length=self.length,
            why=reason.getErrorMessage(),
        )
        self._fail(TransferError(502, "the HTTP source failed mid-stream"))

    def _abort(self, error: TransferError) -> None:
        """Stop the body ourselves (too long, stalled) and fail with C{error}."""
        self._ended = True
        self._unwatch()
        log.warn("{source}: {why}", source=repr(self.source), why=str(error))
        if self.transport is not None:
            self._producer().stopProducing()
        self._fail(error)

    def _fail(self, error: TransferError) -> None:
        self.error = Failure(error)
        for reader in self.readers:
            reader._fail(self.error)
        self.writer.abort()
        self.done.errback(self.error)

    def _producer(self) -> Any:
        """The body's transport: an IPushProducer (twisted.web's TransportProxyProducer)."""
        return self.transport

    def _regulate(self) -> None:
        """Pause the body while a reader (or the writer) holds too much; resume when it drains."""
        if self._ended or self.transport is None:
            return
        held = max([r.buffered for r in self.readers if not r.closed], default=0)
        behind = max(held, self.writer.pending)
        if not self.paused and behind > self.source.stream_buffer:
            self.paused = True
            self._unwatch()
            self._producer().pauseProducing()
        elif self.paused and behind <= self.source.stream_buffer // 2:
            self.paused = False
            self._watch()
            self._producer().resumeProducing()

    def _watch(self) -> None:
        """(Re)start the stall timer: the body must move within stall_timeout."""
        self._unwatch()
        if not self._ended and not self.paused:
            self._stall = self.source.reactor.callLater(self.source.stall_timeout, self._stalled)

    def _unwatch(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        self._abort(TransferError(504, "the HTTP source stalled mid-stream"))


@implementer(IReadSource)
class _StreamReader:
    """One client's reads of a L{_Stream}: the bytes it has not read yet, in memory."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self.size = stream.length
        self._buffer = bytearray()
        self._waiting: tuple[Deferred[bytes], int] | None = None
        self.closed = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def read(self, length: int) -> Deferred[bytes]:
        """The next bytes, up to C{length}: at once if some have arrived, else when they do."""
        if self.closed:
            return fail(TransferError(500, "read after close"))
        if self._buffer:
            return succeed(self._take(length))
        if self._stream.error is not None:
            return fail(self._stream.error)
        if self._stream.complete:
            return succeed(b"")
        waiting: Deferred[bytes] = Deferred()
        self._waiting = (waiting, length)
        return waiting

    def _take(self, length: int) -> bytes:
        chunk = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._stream._regulate()
        return chunk

    def _feed(self, data: bytes) -> None:
        if self.closed:
            return
        self._buffer += data
        if self._waiting is not None:
            waiting, length = self._waiting
            self._waiting = None
            waiting.callback(self._take(length))

    def _end(self) -> None:
        if self._waiting is not None:
            waiting, _ = self._waiting
            self._waiting = None
            waiting.callback(b"")

    def _fail(self, failure: Failure) -> None:
        if self._waiting is not None:
            waiting, _ = self._waiting
            self._waiting = None
            waiting.errback(failure)

    def close(self) -> None:
        """Stop reading; the stream goes on (unthrottled by this reader) to fill the cache."""
        self.closed = True
        self._buffer = bytearray()
        self._waiting = None
        self._stream._regulate()


def _open(cached: str) -> IReadSource | None:
    """The cached file, opened, and marked as just served (for the eviction order)."""
    try:
        handle = open(cached, "rb")
    except FileNotFoundError:
        return None
    size = os.fstat(handle.fileno()).st_size
    try:
        os.utime(cached)
    except OSError:
        pass
    return FileSource(handle, size)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
