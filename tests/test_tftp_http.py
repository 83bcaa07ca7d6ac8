"""The HTTP read source: fetch, cache, share a fetch, refuse what does not fit (treq's StubTreq)."""

from __future__ import annotations

import os

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from filexfer._errors import TransferError
from filexfer.storage import IReadSource
from filexfer.tftp.http import CACHE_DIRECTORY, HTTPSource

CLIENT = ("192.0.2.7", 1234)
SERVER = ("192.0.2.1", 69)


class Files(Resource):
    """A web server's files, counting the requests."""

    isLeaf = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.files = files
        self.asked: list[str] = []

    def render_GET(self, request: Request) -> bytes:
        path = request.path.decode()
        self.asked.append(path)
        if path == "/boom":
            request.setResponseCode(500)
            return b"no"
        if path not in self.files:
            request.setResponseCode(404)
            return b"not here"
        return self.files[path]


class HTTPSourceTests(unittest.TestCase):
    """HTTPSource against an in-memory web server."""

    def make(
        self, files: dict[str, bytes], max_bytes: int = 1000
    ) -> tuple[HTTPSource, Files, StubTreq]:
        web = Files(files)
        stub = StubTreq(web)
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        source = HTTPSource(
            Clock(),
            "http://boot.example/images",
            storage_root=self.root,
            max_bytes=max_bytes,
            http=stub,
        )
        return source, web, stub

    def read(self, source: HTTPSource, stub: StubTreq, path: str) -> IReadSource | None:
        opening = source.open(path, CLIENT, SERVER)
        stub.flush()
        result = self.successResultOf(opening)
        if result is not None:
            self.addCleanup(result.close)
        return result

    def test_fetch_then_cache(self) -> None:
        """The first read fetches BASE/path; the second is served from the cache."""
        source, web, stub = self.make({"/images/pxe/kernel": b"K" * 300})
        first = self.read(source, stub, "pxe/kernel")
        assert first is not None
        self.assertEqual((self.successResultOf(first.read(1000)), first.size), (b"K" * 300, 300))
        second = self.read(source, stub, "pxe/kernel")
        assert second is not None
        self.assertEqual(self.successResultOf(second.read(1000)), b"K" * 300)
        self.assertEqual(web.asked, ["/images/pxe/kernel"])

    def test_quoted(self) -> None:
        """Components are percent-encoded in the URL."""
        source, _, _ = self.make({})
        self.assertEqual(source.url("a b/c#d"), "http://boot.example/images/a%20b/c%23d")

    def test_missing_is_not_mine(self) -> None:
        """404: not mine (the chain goes on, ERROR 1 at its end)."""
        source, _, stub = self.make({})
        self.assertIsNone(self.read(source, stub, "nothing"))

    def test_server_error_refuses(self) -> None:
        """A 500 refuses with 502 (ERROR 0 to the client)."""
        source, _, stub = self.make({})
        source.base_url = "http://boot.example/"
        opening = source.open("boom", CLIENT, SERVER)
        stub.flush()
        self.assertEqual(self.failureResultOf(opening, TransferError).value.code, 502)

    def test_one_fetch_for_many_clients(self) -> None:
        """Two clients asking at once share one fetch."""
        source, web, stub = self.make({"/images/f": b"data"})
        first = source.open("f", CLIENT, SERVER)
        second = source.open("f", ("192.0.2.8", 1), SERVER)
        stub.flush()
        for opening in (first, second):
            readable = self.successResultOf(opening)
            assert readable is not None
            self.addCleanup(readable.close)
            self.assertEqual(self.successResultOf(readable.read(100)), b"data")
        self.assertEqual(web.asked, ["/images/f"])

    def test_too_large_for_the_cache(self) -> None:
        """A file larger than the cache is refused (413: ERROR 3) and leaves nothing behind."""
        source, _, stub = self.make({"/images/big": b"x" * 2000}, max_bytes=1000)
        opening = source.open("big", CLIENT, SERVER)
        stub.flush()
        self.assertEqual(self.failureResultOf(opening, TransferError).value.code, 413)
        self.assertEqual(os.listdir(os.path.join(self.root, CACHE_DIRECTORY)), [])

    def test_bounded_cache_evicts_least_recent(self) -> None:
        """Past max_bytes, the least recently served file goes."""
        files = {"/images/a": b"a" * 400, "/images/b": b"b" * 400, "/images/c": b"c" * 400}
        source, web, stub = self.make(files, max_bytes=1000)
        cache = os.path.join(self.root, CACHE_DIRECTORY)
        self.read(source, stub, "a")
        self.read(source, stub, "b")
        # make "a" the older one for certain
        os.utime(source._cached("a"), (1, 1))
        self.read(source, stub, "c")
        self.assertFalse(os.path.exists(source._cached("a")))
        self.assertTrue(os.path.exists(source._cached("b")))
        self.assertLessEqual(
            sum(os.path.getsize(os.path.join(cache, n)) for n in os.listdir(cache)), 1000
        )


class RealHTTPTests(unittest.TestCase):
    """treq over a real socket: a twisted.web server on 127.0.0.1 and the real reactor."""

    def test_fetch_over_loopback(self) -> Deferred[None]:
        """HTTPSource's own treq client fetches from a web server on loopback."""
        from twisted.internet import reactor
        from twisted.web.server import Site

        web = Files({"/boot/a.cfg": b"config"})
        listening = reactor.listenTCP(0, Site(web), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        url = f"http://127.0.0.1:{listening.getHost().port}/boot"
        source = HTTPSource(reactor, url, storage_root=root, max_bytes=1000)
        opening = source.open("a.cfg", CLIENT, SERVER)

        def check(readable: IReadSource | None) -> Deferred[None]:
            # the body streams: the read fires when its bytes arrive
            assert readable is not None
            self.assertEqual(readable.size, 6)

            def got(data: bytes) -> None:
                readable.close()
                self.assertEqual(data, b"config")
                self.assertEqual(web.asked, ["/boot/a.cfg"])

            return readable.read(100).addCallback(got)

        return opening.addCallback(check)


class Trickle(Resource):
    """A web server that announces a Content-Length and sends the body when the test says."""

    isLeaf = True

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self.requests: list[Request] = []

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-length", str(self.length).encode())
        request.write(b"")  # the headers go out now
        self.requests.append(request)
        return NOT_DONE_YET


class StreamingTests(unittest.TestCase):
    """With a Content-Length, reads are fed from the body as it arrives."""

    def make(self, length: int, **kwargs: object) -> tuple[HTTPSource, Trickle, StubTreq, Clock]:
        web = Trickle(length)
        stub = StubTreq(web)
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        clock = Clock()
        source = HTTPSource(
            clock,
            "http://boot.example/",
            storage_root=self.root,
            max_bytes=10_000,
            http=stub,
            **kwargs,  # type: ignore[arg-type]
        )
        return source, web, stub, clock

    def cache(self) -> list[str]:
        return os.listdir(os.path.join(self.root, CACHE_DIRECTORY))

    def test_first_block_before_the_body_is_complete(self) -> None:
        """The source and its first bytes come while the body streams; then the cache fills."""
        source, web, stub, _ = self.make(1000)
        opening = source.open("kernel", CLIENT, SERVER)
        stub.flush()
        readable = self.successResultOf(opening)
        assert readable is not None
        self.addCleanup(readable.close)
        self.assertEqual(readable.size, 1000)
        reading = readable.read(512)
        self.assertNoResult(reading)
        web.requests[0].write(b"a" * 600)
        stub.flush()
        self.assertEqual(self.successResultOf(reading), b"a" * 512)
        self.assertFalse(os.path.exists(source._cached("kernel")))
        # a second client meanwhile waits for the cache entry, without a second request
        later = source.open("kernel", ("192.0.2.8", 1), SERVER)
        self.assertNoResult(later)
        web.requests[0].write(b"b" * 400)
        web.requests[0].finish()
        stub.flush()
        self.assertEqual(self.successResultOf(readable.read(1000)), b"a" * 88 + b"b" * 400)
        self.assertEqual(self.successResultOf(readable.read(1000)), b"")
        with open(source._cached("kernel"), "rb") as handle:
            self.assertEqual(handle.read(), b"a" * 600 + b"b" * 400)
        cached = self.successResultOf(later)
        assert cached is not None
        self.addCleanup(cached.close)
        self.assertEqual(self.successResultOf(cached.read(2000)), b"a" * 600 + b"b" * 400)
        self.assertEqual(len(web.requests), 1)

    def test_mid_stream_failure(self) -> None:
        """The connection drops mid-body: the read fails (502, ERROR 0) and nothing is cached."""
        source, web, stub, _ = self.make(1000)
        opening = source.open("kernel", CLIENT, SERVER)
        stub.flush()
        readable = self.successResultOf(opening)
        assert readable is not None
        self.addCleanup(readable.close)
        web.requests[0].write(b"a" * 300)
        stub.flush()
        self.assertEqual(self.successResultOf(readable.read(1000)), b"a" * 300)
        reading = readable.read(1000)
        web.requests[0].channel.transport.loseConnection()  # type: ignore[union-attr]
        stub.flush()
        self.assertEqual(self.failureResultOf(reading, TransferError).value.code, 502)
        self.assertEqual(self.cache(), [])
        # the next client fetches afresh
        source.open("kernel", CLIENT, SERVER)
        stub.flush()
        self.assertEqual(len(web.requests), 2)

    def test_stall_times_out(self) -> None:
        """A body that stops moving fails the read (504) after stall_timeout; nothing is cached."""
        source, web, stub, clock = self.make(1000, stall_timeout=5.0)
        opening = source.open("kernel", CLIENT, SERVER)
        stub.flush()
        readable = self.successResultOf(opening)
        assert readable is not None
        self.addCleanup(readable.close)
        web.requests[0].write(b"a" * 100)
        stub.flush()
        clock.advance(4)
        self.assertEqual(self.successResultOf(readable.read(1000)), b"a" * 100)
        web.requests[0].write(b"b" * 50)  # the body moved: the timer starts again
        stub.flush()
        self.assertEqual(self.successResultOf(readable.read(1000)), b"b" * 50)
        reading = readable.read(1000)
        clock.advance(4)
        self.assertNoResult(reading)
        clock.advance(2)
        self.assertEqual(self.failureResultOf(reading, TransferError).value.code, 504)
        stub.flush()
        self.assertEqual(self.cache(), [])


class FakeTransport:
    """The HTTP body's producer: records pause and resume."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeResponse:
    code = 200

    def __init__(self, length: int) -> None:
        self.length = length
        self.protocol: object = None

    def deliverBody(self, protocol: object) -> None:
        self.protocol = protocol
        protocol.makeConnection(FakeTransport())  # type: ignore[attr-defined]


class FakeHTTP:
    def __init__(self, response: FakeResponse) -> None:
        self.response = response

    def get(self, url: str) -> Deferred[FakeResponse]:
        return succeed(self.response)


class BackPressureTests(unittest.TestCase):
    """A reader behind pauses the body; reading resumes it; the buffer stays bounded."""

    def test_paused_while_the_reader_is_behind(self) -> None:
        response = FakeResponse(10_000)
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        jobs: list[object] = []

        def run(work):  # type: ignore[no-untyped-def]
            jobs.append(work)
            return maybeDeferred(work)

        source = HTTPSource(
            Clock(),
            "http://boot.example/",
            storage_root=root,
            max_bytes=100_000,
            http=FakeHTTP(response),
            run_blocking=run,
            stream_buffer=1000,
        )
        readable = self.successResultOf(source.open("big", CLIENT, SERVER))
        assert readable is not None
        self.addCleanup(readable.close)
        body = response.protocol
        transport = body.transport  # type: ignore[attr-defined]
        data = bytes(range(100)) * 100
        sent = 0
        most_held = 0
        got = b""
        while len(got) < len(data):
            # the server sends 300-byte pieces while it is not paused
            while not transport.paused and sent < len(data):
                body.dataReceived(data[sent : sent + 300])  # type: ignore[attr-defined]
                sent += 300
                most_held = max(most_held, readable.buffered)  # type: ignore[attr-defined]
            got += self.successResultOf(readable.read(256))
        self.assertEqual(got, data)
        self.assertGreater(transport.pauses, 3)
        self.assertLessEqual(most_held, 1000 + 300)
        body.connectionLost(Failure(ResponseDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(readable.read(256)), b"")
        self.assertTrue(jobs)  # the cache was written through the runner
        with open(source._cached("big"), "rb") as handle:
            self.assertEqual(handle.read(), data)
