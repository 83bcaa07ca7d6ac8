"""The HTTP read source: fetch, cache, share a fetch, refuse what does not fit (treq's StubTreq)."""

from __future__ import annotations

import os

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Request

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

        def check(readable: IReadSource | None) -> None:
            assert readable is not None
            try:
                self.assertEqual(
                    (self.successResultOf(readable.read(100)), readable.size), (b"config", 6)
                )
            finally:
                readable.close()
            self.assertEqual(web.asked, ["/boot/a.cfg"])

        return opening.addCallback(check)
