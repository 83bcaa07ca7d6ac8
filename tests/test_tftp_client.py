"""Our TFTP client against our server (and small fakes) over real loopback UDP."""

from __future__ import annotations

import hashlib
import os
import random
import socket
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

import filexfer.tftp
from filexfer.storage import DirectoryStorage
from filexfer.testing import FakeUDPNetwork, MemoryStorage
from filexfer.tftp import TFTPError, TFTPServerProtocol, TFTPTimeout, download, upload
from filexfer.tftp import _packets as p

reactor: Any = _reactor


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class _PlainServer(DatagramProtocol):
    """An RFC 1350-only server that ignores options and answers from its own port.

    It serves C{content} for any RRQ and records the blocks of any WRQ.
    With C{oack} it answers requests with that OACK instead (to test bad OACKs);
    with C{intruder} a second port also sends a DATA to the client.
    """

    def __init__(self, content: bytes = b"", oack: bytes | None = None) -> None:
        self.content = content
        self.oack = oack
        self.requests: list[p.Packet] = []
        self.received: list[bytes] = []
        self.errors: list[p.Error] = []
        self.intruder: Any = None

    def _block(self, number: int) -> bytes:
        return self.content[(number - 1) * 512 : number * 512]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        packet = p.decode(datagram)
        send = self.transport.write  # type: ignore[union-attr]
        if isinstance(packet, p.ReadRequest | p.WriteRequest):
            self.requests.append(packet)
            if self.oack is not None:
                send(self.oack, addr)
            elif isinstance(packet, p.ReadRequest):
                send(p.encode_data(1, self._block(1)), addr)
                if self.intruder is not None:
                    self.intruder.write(p.encode_data(2, b"evil"), addr)
            else:
                send(p.encode_ack(0), addr)
        elif isinstance(packet, p.Ack):
            if packet.block * 512 <= len(self.content):
                send(p.encode_data(packet.block + 1, self._block(packet.block + 1)), addr)
        elif isinstance(packet, p.Data):
            self.received.append(packet.payload)
            send(p.encode_ack(packet.block), addr)
        elif isinstance(packet, p.Error):
            self.errors.append(packet)


class _Silent(DatagramProtocol):
    """Receives everything and answers nothing."""

    def __init__(self) -> None:
        self.count = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.count += 1


class ClientServerTests(unittest.TestCase):
    """Round trips between our client and our server."""

    host = "127.0.0.1"
    timeout = 20

    def setUp(self) -> None:
        if self.host == "::1" and not _ipv6_available():
            raise unittest.SkipTest("no IPv6 loopback")  # pragma: no cover
        self.root = os.path.abspath(self.mktemp())
        self.local = os.path.abspath(self.mktemp())
        os.makedirs(self.local)
        self.server = self.make_server()
        self.port = reactor.listenUDP(0, self.server, interface=self.host)
        self.addCleanup(self._stop)
        self.number = self.port.getHost().port

    def make_server(self, **kwargs: Any) -> TFTPServerProtocol:
        self.storage = DirectoryStorage(self.root, kwargs.pop("on_conflict", "overwrite"))
        return TFTPServerProtocol(storage=self.storage, reactor=reactor, **kwargs)

    @defer.inlineCallbacks
    def _stop(self) -> Generator[Any, Any, None]:
        yield self.server.stop_transfers()
        yield self.port.stopListening()

    def write_local(self, name: str, data: bytes) -> str:
        path = os.path.join(self.local, name)
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    @defer.inlineCallbacks
    def round_trip(self, size: int, **options: Any) -> Generator[Any, Any, None]:
        """Upload a random file of C{size} bytes, download it, compare digests."""
        source = self.write_local(f"src-{size}", os.urandom(size))
        sent = yield upload(reactor, self.host, self.number, source, f"up/{size}.bin", **options)
        self.assertEqual(sent, size)
        stored = os.path.join(self.root, "up", f"{size}.bin")
        self.assertEqual(_sha256(stored), _sha256(source))
        target = os.path.join(self.local, f"back-{size}")
        got = yield download(reactor, self.host, self.number, f"up/{size}.bin", target, **options)
        self.assertEqual(got, size)
        self.assertEqual(_sha256(target), _sha256(source))
        self.assertEqual(sorted(os.listdir(self.local)), sorted([f"src-{size}", f"back-{size}"]))

    def test_empty(self) -> defer.Deferred[None]:
        """A 0-byte file goes up and comes back."""
        return self.round_trip(0)

    def test_one_byte(self) -> defer.Deferred[None]:
        """A 1-byte file goes up and comes back."""
        return self.round_trip(1)

    def test_exactly_512(self) -> defer.Deferred[None]:
        """Exactly 512 bytes (one classic block) round-trips."""
        return self.round_trip(512, blksize=512, windowsize=1)

    def test_exact_blocks_default(self) -> defer.Deferred[None]:
        """A whole number of default blocks round-trips (final empty block)."""
        return self.round_trip(1428 * 16)

    def test_few_megabytes(self) -> defer.Deferred[None]:
        """A few MB round-trip with the default options."""
        return self.round_trip(3 * 1024 * 1024 + 7)

    def test_classic_options(self) -> defer.Deferred[None]:
        """blksize 512 and windowsize 1 (plain lock-step) round-trip."""
        return self.round_trip(200_000, blksize=512, windowsize=1)

    def test_big_blocks(self) -> defer.Deferred[None]:
        """The largest blksize with a window round-trips."""
        return self.round_trip(1_000_000, blksize=65464, windowsize=4)

    def test_tiny_blocks_big_window(self) -> defer.Deferred[None]:
        """Tiny blocks with a wide window round-trip."""
        return self.round_trip(50_000, blksize=8, windowsize=64)

    @defer.inlineCallbacks
    def test_server_caps_lower_options(self) -> Generator[Any, Any, None]:
        """A server capping blksize and windowsize still serves the file correctly."""
        yield self._stop()
        self.server = self.make_server(max_blksize=1000, max_windowsize=2)
        self.port = reactor.listenUDP(0, self.server, interface=self.host)
        self.number = self.port.getHost().port
        yield self.round_trip(100_000, blksize=4096, windowsize=32)

    @defer.inlineCallbacks
    def test_progress(self) -> Generator[Any, Any, None]:
        """progress() is called with growing counts, and the total from tsize on download."""
        data = os.urandom(1_000_000)
        source = self.write_local("p", data)
        up_calls: list[tuple[int, int | None]] = []
        down_calls: list[tuple[int, int | None]] = []
        yield upload(
            reactor, self.host, self.number, source, "p", progress=lambda *a: up_calls.append(a)
        )
        target = os.path.join(self.local, "p2")
        yield download(
            reactor, self.host, self.number, "p", target, progress=lambda *a: down_calls.append(a)
        )
        for calls in (up_calls, down_calls):
            self.assertEqual(calls[-1], (len(data), len(data)))
            done = [c[0] for c in calls]
            self.assertEqual(done, sorted(done))
            self.assertGreater(len(calls), 2)

    @defer.inlineCallbacks
    def test_netascii(self) -> Generator[Any, Any, None]:
        """A netascii upload and download keep local newlines and CRs intact."""
        text = b"line one\nline two\r\nbare\rend\n" * 100
        source = self.write_local("t.txt", text)
        yield upload(reactor, self.host, self.number, source, "t.txt", mode="netascii")
        with open(os.path.join(self.root, "t.txt"), "rb") as handle:
            self.assertEqual(handle.read(), text)
        target = os.path.join(self.local, "t2.txt")
        got = yield download(reactor, self.host, self.number, "t.txt", target, mode="netascii")
        self.assertEqual(got, len(text))
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), text)

    @defer.inlineCallbacks
    def test_concurrent(self) -> Generator[Any, Any, None]:
        """Several uploads and downloads at once all complete intact."""
        sources = [self.write_local(f"c{i}", os.urandom(300_000 + i)) for i in range(4)]
        yield defer.gatherResults(
            [upload(reactor, self.host, self.number, s, f"c{i}") for i, s in enumerate(sources)]
        )
        targets = [os.path.join(self.local, f"d{i}") for i in range(4)]
        yield defer.gatherResults(
            [download(reactor, self.host, self.number, f"c{i}", t) for i, t in enumerate(targets)]
        )
        for source, target in zip(sources, targets, strict=True):
            self.assertEqual(_sha256(source), _sha256(target))

    @defer.inlineCallbacks
    def test_missing_file(self) -> Generator[Any, Any, None]:
        """A missing file fails with TFTPError 1, one clear line, and leaves nothing behind."""
        target = os.path.join(self.local, "never")
        failure = yield self.assertFailure(
            download(reactor, self.host, self.number, "nope", target), TFTPError
        )
        self.assertEqual(failure.code, p.FILE_NOT_FOUND)
        self.assertNotIn("\n", str(failure))
        self.assertIn("file not found", str(failure))
        self.assertEqual(os.listdir(self.local), [])

    @defer.inlineCallbacks
    def test_refused_upload(self) -> Generator[Any, Any, None]:
        """An upload the server refuses (name exists, refuse policy) fails with TFTPError 6."""
        yield self._stop()
        self.server = self.make_server(on_conflict="refuse")
        self.port = reactor.listenUDP(0, self.server, interface=self.host)
        self.number = self.port.getHost().port
        source = self.write_local("x", b"x")
        yield upload(reactor, self.host, self.number, source, "x")
        failure = yield self.assertFailure(
            upload(reactor, self.host, self.number, source, "x"), TFTPError
        )
        self.assertEqual(failure.code, p.FILE_EXISTS)

    @defer.inlineCallbacks
    def test_escaping_name(self) -> Generator[Any, Any, None]:
        """An upload to ../name fails with TFTPError 2 and creates nothing."""
        source = self.write_local("e", b"e")
        failure = yield self.assertFailure(
            upload(reactor, self.host, self.number, source, "../escape"), TFTPError
        )
        self.assertEqual(failure.code, p.ACCESS_VIOLATION)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.root), "escape")))


class ThreadedStorageTests(ClientServerTests):
    """The same round trips with storage writing and storing in the thread pool, as served."""

    def make_server(self, **kwargs: Any) -> TFTPServerProtocol:
        self.storage = DirectoryStorage(
            self.root,
            kwargs.pop("on_conflict", "overwrite"),
            run_blocking=threads.deferToThread,
            run_writes=threads.deferToThread,
        )
        return TFTPServerProtocol(storage=self.storage, reactor=reactor, **kwargs)


class IPv6ClientServerTests(ClientServerTests):
    """The same round trips over IPv6 loopback (::1)."""

    host = "::1"


class ClientAgainstFakesTests(unittest.TestCase):
    """The client against servers that behave differently from ours."""

    timeout = 20

    def listen(self, protocol: DatagramProtocol) -> int:
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    def test_exports(self) -> None:
        """The package exports the server, the client calls, the errors, tftp:// URLs
        and the read sources."""
        self.assertEqual(
            set(filexfer.tftp.__all__),
            {"TFTPServerProtocol", "upload", "download", "TFTPError", "TFTPTimeout"}
            | {"TFTPURL", "BadURL", "parse_tftp_url", "format_tftp_url"}
            | {"ITFTPSource", "NOT_MINE", "RootSource", "ClientRootSource", "TemplateSource"},
        )

    @defer.inlineCallbacks
    def test_fallback_download(self) -> Generator[Any, Any, None]:
        """A server that ignores options (DATA 1 instead of OACK) is read in 512-byte blocks."""
        content = os.urandom(512 * 5 + 100)
        server = _PlainServer(content)
        number = self.listen(server)
        target = os.path.abspath(self.mktemp())
        got = yield download(reactor, "127.0.0.1", number, "any", target)
        self.assertEqual(got, len(content))
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), content)
        self.assertIn(("blksize", "1428"), server.requests[0].options)  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def test_hostname(self) -> Generator[Any, Any, None]:
        """A host name is resolved before the request is sent."""
        content = b"resolved"
        number = self.listen(_PlainServer(content))
        target = os.path.abspath(self.mktemp())
        got = yield download(reactor, "localhost", number, "any", target)
        self.assertEqual(got, len(content))

    @defer.inlineCallbacks
    def test_fallback_upload(self) -> Generator[Any, Any, None]:
        """A server that answers a WRQ with ACK 0 gets 512-byte blocks, one per ACK."""
        server = _PlainServer()
        number = self.listen(server)
        source = os.path.abspath(self.mktemp())
        data = os.urandom(512 * 3 + 5)
        with open(source, "wb") as handle:
            handle.write(data)
        sent = yield upload(reactor, "127.0.0.1", number, source, "any")
        self.assertEqual(sent, len(data))
        self.assertEqual([len(b) for b in server.received], [512, 512, 512, 5])
        self.assertEqual(b"".join(server.received), data)

    @defer.inlineCallbacks
    def test_bad_oack_refused(self) -> Generator[Any, Any, None]:
        """An OACK with a larger blksize than asked gets ERROR 8 and fails with TFTPError 8."""
        server = _PlainServer(oack=p.encode(p.OptionAck({"blksize": "9000"})))
        number = self.listen(server)
        target = os.path.abspath(self.mktemp())
        failure = yield self.assertFailure(
            download(reactor, "127.0.0.1", number, "f", target, blksize=1428), TFTPError
        )
        self.assertEqual(failure.code, p.OPTION_REFUSED)
        yield _until(lambda: bool(server.errors))
        self.assertEqual([e.code for e in server.errors], [p.OPTION_REFUSED])
        self.assertFalse(os.path.exists(target))

    @defer.inlineCallbacks
    def test_5000_digit_oack_refused(self) -> Generator[Any, Any, None]:
        """An OACK with a 5,000-digit value for any option gets ERROR 8 (516 bytes at most)."""
        for name in ("blksize", "windowsize", "timeout", "tsize"):
            for direction in ("download", "upload"):
                server = _PlainServer(oack=p.encode(p.OptionAck({name: "9" * 5000})))
                number = self.listen(server)
                local = os.path.abspath(self.mktemp())
                if direction == "download":
                    transfer = download(
                        reactor, "127.0.0.1", number, "f", local, windowsize=4, timeout=2
                    )
                else:
                    with open(local, "wb") as handle:
                        handle.write(b"abc")
                    transfer = upload(
                        reactor, "127.0.0.1", number, local, "f", windowsize=4, timeout=2
                    )
                failure = yield self.assertFailure(transfer, TFTPError)
                self.assertEqual(failure.code, p.OPTION_REFUSED, (name, direction))
                self.assertIn("not a number", failure.message)
                yield _until(lambda: bool(server.errors))  # noqa: B023 - awaited right here
                self.assertEqual([e.code for e in server.errors], [p.OPTION_REFUSED])
                self.assertLess(len(server.errors[0].message), 120)

    @defer.inlineCallbacks
    def test_unknown_tid(self) -> Generator[Any, Any, None]:
        """DATA from a second port gets ERROR 5 and does not disturb the download."""
        content = os.urandom(2000)
        server = _PlainServer(content)
        intruder = _PlainServer()
        number = self.listen(server)
        self.listen(intruder)
        server.intruder = intruder.transport
        target = os.path.abspath(self.mktemp())
        d = download(reactor, "127.0.0.1", number, "f", target)
        yield d
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), content)
        yield _until(lambda: bool(intruder.errors))
        self.assertEqual([e.code for e in intruder.errors], [p.UNKNOWN_TID])

    @defer.inlineCallbacks
    def test_timeout(self) -> Generator[Any, Any, None]:
        """A server that never answers fails with TFTPTimeout after the retries; no file left."""
        silent = _Silent()
        number = self.listen(silent)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        target = os.path.join(directory, "never")
        failure = yield self.assertFailure(
            download(reactor, "127.0.0.1", number, "f", target, timeout=0.05, retries=2),
            TFTPTimeout,
        )
        self.assertIsInstance(failure, TFTPError)
        yield _until(lambda: silent.count >= 3)
        self.assertEqual(silent.count, 3)
        self.assertEqual(os.listdir(directory), [])
        self.assertIn("no answer", str(failure))

    @defer.inlineCallbacks
    def test_cancel(self) -> Generator[Any, Any, None]:
        """Cancelling a download fails it, removes the temporary file and stops its timers."""
        number = self.listen(_Silent())
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        d = download(reactor, "127.0.0.1", number, "f", os.path.join(directory, "x"))
        d.cancel()
        yield self.assertFailure(d, TFTPError, defer.CancelledError)
        self.assertEqual(os.listdir(directory), [])
        # (trial's dirty-reactor check fails the test if a retransmission timer is left)

    def test_bad_arguments(self) -> None:
        """Out-of-range blksize, windowsize or mode are ValueErrors before anything is sent."""
        for kwargs in ({"blksize": 7}, {"windowsize": 0}, {"mode": "mail"}, {"timeout": 0}):
            self.assertRaises(
                ValueError, download, reactor, "127.0.0.1", 9, "f", "/nonexistent/x", **kwargs
            )

    def test_timeout_must_be_finite(self) -> None:
        """A NaN or infinite timeout is a ValueError before anything is sent."""
        for timeout in (float("nan"), float("inf")):
            for call in (download, upload):
                self.assertRaises(
                    ValueError,
                    call,
                    reactor,
                    "127.0.0.1",
                    9,
                    "f",
                    "/nonexistent/x",
                    timeout=timeout,
                )


@defer.inlineCallbacks
def _until(condition: Callable[[], bool]) -> Generator[Any, Any, None]:
    """Let the reactor run (a bounded number of turns) until C{condition} holds.

    For a datagram still in flight on loopback; the caller asserts afterwards.
    """
    for _ in range(500):
        if condition():
            return
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0, d.callback, None)
        yield d


class SimulatedNetworkTests(unittest.TestCase):
    """Our client and server over a simulated lossy, reordering, duplicating network.

    L{FakeUDPNetwork} delays every datagram 1-3 ms (so later ones may
    overtake earlier ones), and drops or duplicates as asked; no sockets.
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.local = os.path.abspath(self.mktemp())
        os.makedirs(self.local)
        self.data = random.Random(7).randbytes(512 * 300 + 77)
        self.source = os.path.join(self.local, "source")
        with open(self.source, "wb") as handle:
            handle.write(self.data)

    def network(self, seed: int, loss: float = 0.0, duplicate: float = 0.0) -> FakeUDPNetwork:
        return FakeUDPNetwork(
            latency=0.001, jitter=0.002, loss=loss, duplicate=duplicate, seed=seed
        )

    def serve(self, net: FakeUDPNetwork) -> TFTPServerProtocol:
        server = TFTPServerProtocol(
            storage=DirectoryStorage(self.root), reactor=net, timeout=0.05, retries=20
        )
        net.listenUDP(69, server)
        return server

    def transfer(self, net: FakeUDPNetwork, **options: Any) -> None:
        self.serve(net)
        up = upload(net, "127.0.0.1", 69, self.source, "f", timeout=0.05, retries=20, **options)
        net.run_until(up)
        self.assertEqual(self.successResultOf(up), len(self.data))
        with open(os.path.join(self.root, "f"), "rb") as handle:
            self.assertEqual(handle.read(), self.data)
        target = os.path.join(self.local, "copy")
        down = download(net, "127.0.0.1", 69, "f", target, timeout=0.05, retries=20, **options)
        net.run_until(down)
        self.assertEqual(self.successResultOf(down), len(self.data))
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), self.data)

    def test_lossy_lockstep(self) -> None:
        """With 10% loss and reordering, lock-step transfers both ways complete intact."""
        self.transfer(self.network(seed=1, loss=0.1), blksize=512, windowsize=1)

    def test_lossy_windowed(self) -> None:
        """With 10% loss and reordering, windowed transfers both ways complete intact."""
        self.transfer(self.network(seed=2, loss=0.1), blksize=1024, windowsize=8)

    def test_duplicated_packets_no_sorcerers_apprentice(self) -> None:
        """When every datagram arrives twice, each DATA block is still sent exactly once."""
        net = self.network(seed=3, duplicate=1.0)
        self.transfer(net, blksize=512, windowsize=1)
        blocks = 300 + 1
        data_sent = [d for port in net.ports for d, _ in port.sent if d[:2] == b"\x00\x03"]
        self.assertEqual(len(data_sent), 2 * blocks)  # one upload, one download


def _is_data(datagram: bytes, block: int) -> bool:
    return datagram[:4] == b"\x00\x03" + block.to_bytes(2, "big")


class FakeNetworkDownloadTests(unittest.TestCase):
    """download() against a TFTPServerProtocol, both on FakeUDPNetwork: no sockets."""

    def setUp(self) -> None:
        self.net = FakeUDPNetwork()
        self.storage = MemoryStorage()
        self.data = random.Random(5).randbytes(512 * 4 + 100)
        self.storage.files["f"] = self.data
        self.server = TFTPServerProtocol(storage=self.storage, reactor=self.net)
        self.target = os.path.join(os.path.abspath(self.mktemp()))
        os.makedirs(os.path.dirname(self.target), exist_ok=True)

    def download(self, **options: Any) -> defer.Deferred[int]:
        options.setdefault("blksize", 512)
        options.setdefault("windowsize", 1)
        return download(self.net, "127.0.0.1", 69, "f", self.target, **options)

    def stored(self) -> bytes:
        with open(self.target, "rb") as handle:
            return handle.read()

    def test_lost_data_resent_after_timeout(self) -> None:
        """A lost DATA block is sent again when the measured timeout expires, not before.

        The network has no latency: the round trips measure 0 and the timeout
        is its floor, 0.1 s, rather than the 1 s asked for.
        """
        lost: list[bytes] = []

        def drop(source: Any, target: Any, datagram: bytes) -> bool:
            if _is_data(datagram, 3) and not lost:
                lost.append(datagram)
                return True
            return False

        self.net.drop = drop
        self.net.listenUDP(69, self.server)
        result = self.download(timeout=1.0)
        self.net.flush()
        self.assertEqual(len(lost), 1)
        self.assertNoResult(result)
        self.net.advance(0.05)
        self.assertNoResult(result)
        self.net.advance(0.05)
        self.assertEqual(self.successResultOf(result), len(self.data))
        self.assertEqual(self.stored(), self.data)
        transfer_port = self.net.ports[2]  # the listening port, the client's, the server's
        sent = [d for d, _ in transfer_port.sent if _is_data(d, 3)]
        self.assertEqual(len(sent), 2)

    def test_request_repeated_until_server_listens(self) -> None:
        """The RRQ is repeated on the clock: a server that starts late still answers."""
        result = self.download(timeout=2.0)
        self.net.flush()  # the RRQ is lost: nothing listens on port 69 yet
        self.net.listenUDP(69, self.server)
        self.net.advance(1.0)
        self.assertNoResult(result)
        self.net.advance(1.0)
        self.assertEqual(self.successResultOf(result), len(self.data))
        self.assertEqual(self.stored(), self.data)

    def test_silent_server_times_out(self) -> None:
        """When the server goes quiet mid-transfer the client gives up after its retries."""
        self.net.drop = lambda source, target, datagram: _is_data(datagram, 2)
        self.net.listenUDP(69, self.server)
        result = self.download(timeout=1.0, retries=2)
        self.net.flush()
        for _ in range(2):  # Clock.advance runs what is due with the time already moved:
            self.net.advance(1.0)  # one step per retransmission keeps them on time
        self.net.advance(0.5)
        self.assertNoResult(result)
        self.net.advance(0.5)
        self.failureResultOf(result, TFTPTimeout)
        self.assertFalse(os.path.exists(self.target))

    def test_windowed_download_on_lossy_network(self) -> None:
        """A windowed download over a seeded lossy, reordering network completes intact."""
        net = self.net = FakeUDPNetwork(latency=0.002, jitter=0.003, loss=0.15, seed=11)
        self.server = TFTPServerProtocol(storage=self.storage, reactor=net, timeout=1)
        net.listenUDP(69, self.server)
        result = self.download(windowsize=4, timeout=1.0, retries=10)
        self.assertTrue(net.run_until(result, limit=120))
        self.assertEqual(self.successResultOf(result), len(self.data))
        self.assertEqual(self.stored(), self.data)
