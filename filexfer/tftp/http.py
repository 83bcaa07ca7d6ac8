"""An HTTP(S) read source (C{--tftp-http URL}): files missing under the root, from a web server.

PXE ROMs and phones speak only TFTP, but the images they boot often live on
a web server or an object store's HTTP front.  L{HTTPSource} is the last
link of the read-source chain: a path nobody else has is fetched from
C{BASE_URL/path} with treq, streamed into a local cache on disk, and served
from there; the next client asking for it is served from the cache at once.

The cache (C{ROOT/.filexfer/http-cache}, where no TFTP name can reach) is
bounded: a file larger than the cache is refused (ERROR 3), and after each
fetch the least recently served files go until the cache fits.  Several
clients asking for the same missing file share one fetch.  The fetch
completes before the first DATA block leaves; the server's source timeout
(C{--tftp-source-timeout}) bounds how long a client waits for it.

HTTP 404 and 410 are "not mine" (ERROR 1 at the end of the chain); any other
answer but 200, or a failed connection, refuses the request with ERROR 0
and a log line.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._log import log
from filexfer.storage import FileSource, IReadSource
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
    """

    def __init__(
        self,
        reactor: Any,
        base_url: str,
        *,
        storage_root: str,
        max_bytes: int,
        http: Any = None,
    ) -> None:
        if http is None:
            http = _Treq(reactor)
        self.http = http
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
