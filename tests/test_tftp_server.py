"""The TFTP server's transfer states, driven deterministically on a fake UDP network.

The tests play the client by hand: L{FakeUDPPort.receive} hands a datagram to
the server's port at once (through the transfers' own reads and fast path),
and what the server sends is read back from the port's C{sent}.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial import unittest

from filexfer._guard import AccessPolicy
from filexfer.storage import DirectoryStorage, FileSource
from filexfer.testing import FakeUDPNetwork, FakeUDPPort
from filexfer.tftp import TFTPServerProtocol
from filexfer.tftp import _packets as p

CLIENT = ("127.0.0.1", 50000)
OTHER = ("127.0.0.1", 50001)


class Harness:
    """A server on a L{FakeUDPNetwork}, and helpers to play the client."""

    def __init__(
        self,
        test: unittest.TestCase,
        on_conflict: Any = "rename",
        interface: str = "127.0.0.1",
        max_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.reactor = FakeUDPNetwork()
        self.root = os.path.abspath(test.mktemp())
        self.storage = DirectoryStorage(self.root, on_conflict, max_size=max_size)
        self.server = TFTPServerProtocol(storage=self.storage, reactor=self.reactor, **kwargs)
        self.main = self.reactor.listenUDP(69, self.server, interface=interface)

    def put_file(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.root, name), "wb") as handle:
            handle.write(data)

    def stored(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, name), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def temp_files(self) -> list[str]:
        state = os.path.join(self.root, ".filexfer")
        return [name for sub in ("tmp", "partial") for name in os.listdir(os.path.join(state, sub))]

    def request(self, packet: p.Packet, client: tuple[str, int] = CLIENT) -> FakeUDPPort | None:
        """Send a request to the main port; return the new transfer port, if any."""
        before = len(self.reactor.ports)
        self.main.receive(p.encode(packet), client)
        if len(self.reactor.ports) > before:
            return self.reactor.ports[-1]
        return None

    def send(self, port: FakeUDPPort, packet: p.Packet, client: tuple[str, int] = CLIENT) -> None:
        port.receive(p.encode(packet), client)

    def take(self, port: FakeUDPPort, to: tuple[str, int] = CLIENT) -> list[p.Packet]:
        """The packets sent to C{to} since the last call, decoded."""
        packets = [p.decode(d) for d, addr in port.sent if addr == to]
        port.sent[:] = [(d, addr) for d, addr in port.sent if addr != to]
        return packets


def _blocks(data: bytes, size: int) -> list[bytes]:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    if not chunks or len(chunks[-1]) == size:
        chunks.append(b"")
    return chunks


class NamesFromTheRootTests(unittest.TestCase):
    """A leading / names a path from the root (tftpd-hpa -s), for RRQ and WRQ."""

    def download(self, h: Harness, name: bytes) -> bytes:
        port = h.request(p.ReadRequest(name, "octet"))
        assert port is not None, h.take(h.main)
        (packet,) = h.take(port)
        assert isinstance(packet, p.Data)
        h.send(port, p.Ack(packet.block))
        return packet.payload

    def test_rrq(self) -> None:
        """RRQ /pxelinux.cfg/default and /boot.cfg are served from the root."""
        h = Harness(self)
        os.makedirs(os.path.join(h.root, "pxelinux.cfg"))
        h.put_file("pxelinux.cfg/default", b"DEFAULT linux")
        h.put_file("boot.cfg", b"boot")
        self.assertEqual(self.download(h, b"/pxelinux.cfg/default"), b"DEFAULT linux")
        self.assertEqual(self.download(h, b"/boot.cfg"), b"boot")

    def test_repeated_slashes(self) -> None:
        """Any number of leading slashes name the root, as POSIX and tftpd-hpa read them."""
        h = Harness(self)
        h.put_file("boot.cfg", b"boot")
        self.assertEqual(self.download(h, b"//boot.cfg"), b"boot")
        self.assertEqual(self.download(h, b"///boot.cfg"), b"boot")

    def test_wrq(self) -> None:
        """WRQ /up.cfg stores up.cfg in the root; /dir/x.cfg stores dir/x.cfg."""
        h = Harness(self)
        for name in (b"/up.cfg", b"/dir/x.cfg"):
            port = h.request(p.WriteRequest(name, "octet"))
            assert port is not None, h.take(h.main)
            self.assertEqual(h.take(port), [p.Ack(0)])
            h.send(port, p.Data(1, name))
            self.assertEqual(h.take(port), [p.Ack(1)])
        self.assertEqual((h.stored("up.cfg"), h.stored("dir/x.cfg")), (b"/up.cfg", b"/dir/x.cfg"))

    def test_missing_from_root(self) -> None:
        """RRQ /missing is ERROR 1 (file not found), not an access violation."""
        h = Harness(self)
        self.assertIsNone(h.request(p.ReadRequest(b"/missing", "octet")))
        self.assertEqual([e.code for e in h.take(h.main)], [p.FILE_NOT_FOUND])  # type: ignore[union-attr]


class ReadRequestTests(unittest.TestCase):
    """RRQ: serving files."""

    def test_small_file(self) -> None:
        """A file smaller than a block goes in one DATA; its ACK ends the transfer."""
        h = Harness(self)
        h.put_file("a.txt", b"hello")
        port = h.request(p.ReadRequest(b"a.txt", "octet"))
        assert port is not None
        self.assertEqual(h.take(port), [p.Data(1, b"hello")])
        h.send(port, p.Ack(1))
        self.assertTrue(port.closed)
        self.assertEqual(h.take(port), [])

    def test_empty_file(self) -> None:
        """An empty file is one empty DATA block."""
        h = Harness(self)
        h.put_file("empty", b"")
        port = h.request(p.ReadRequest(b"empty", "octet"))
        assert port is not None
        self.assertEqual(h.take(port), [p.Data(1, b"")])
        h.send(port, p.Ack(1))
        self.assertTrue(port.closed)

    def test_exact_multiple_of_blksize(self) -> None:
        """A file of exactly two blocks ends with a third, empty block."""
        h = Harness(self)
        data = os.urandom(1024)
        h.put_file("f", data)
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        got = []
        for block in (1, 2, 3):
            (packet,) = h.take(port)
            assert isinstance(packet, p.Data)
            self.assertEqual(packet.block, block)
            got.append(packet.payload)
            h.send(port, p.Ack(block))
        self.assertEqual(got, [data[:512], data[512:], b""])
        self.assertTrue(port.closed)

    def test_rollover(self) -> None:
        """Past block 65535 the block number wraps to 0 and the data stays in order."""
        h = Harness(self)
        data = os.urandom(8 * 65540 + 3)
        h.put_file("big", data)
        options = {"blksize": "8", "windowsize": "64"}
        port = h.request(p.ReadRequest(b"big", "octet", options))
        assert port is not None
        self.assertEqual(h.take(port), [p.OptionAck(options)])
        h.send(port, p.Ack(0))
        received: list[bytes] = []
        numbers: list[int] = []
        for _ in range(2000):
            window = h.take(port)
            if not window:
                break
            for packet in window:
                assert isinstance(packet, p.Data)
                numbers.append(packet.block)
                received.append(packet.payload)
            h.send(port, p.Ack(numbers[-1]))
        self.assertEqual(b"".join(received), data)
        self.assertEqual(numbers[65534:65538], [65535, 0, 1, 2])
        self.assertTrue(port.closed)

    def test_oack_negotiation(self) -> None:
        """Options are answered with an OACK; DATA 1 waits for ACK 0."""
        h = Harness(self, max_blksize=1024)
        h.put_file("f", b"x" * 3000)
        request = {"blksize": "1428", "tsize": "0", "windowsize": "2", "timeout": "3", "x": "1"}
        port = h.request(p.ReadRequest(b"f", "octet", request))
        assert port is not None
        expected = {"blksize": "1024", "tsize": "3000", "windowsize": "2", "timeout": "3"}
        self.assertEqual(h.take(port), [p.OptionAck(expected)])
        h.send(port, p.Ack(1))  # not the ACK of the OACK: ignored
        self.assertEqual(h.take(port), [])
        h.send(port, p.Ack(0))
        self.assertEqual(h.take(port), [p.Data(1, b"x" * 1024), p.Data(2, b"x" * 1024)])

    def test_negotiated_timeout_bounds_the_backoff(self) -> None:
        """RFC 2349 timeout is echoed and caps the backoff: 1 s first, doubling, at most 3 s."""
        h = Harness(self, timeout=1.0)
        h.put_file("f", b"data")
        port = h.request(p.ReadRequest(b"f", "octet", {"timeout": "3"}))
        assert port is not None
        self.assertEqual(h.take(port), [p.OptionAck({"timeout": "3"})])
        resent = []
        while h.reactor.getDelayedCalls():
            when = min(call.getTime() for call in h.reactor.getDelayedCalls())
            h.reactor.advance(when - h.reactor.seconds())
            resent.append((h.reactor.seconds(), h.take(port)))
        oack = [p.OptionAck({"timeout": "3"})]
        # given up after max(timeout 3, 5 s) x (retries 5 + 1) = 30 s without progress
        self.assertEqual([when for when, _ in resent], [1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30])
        self.assertEqual([packets for _, packets in resent[:-1]], [oack] * 10)
        self.assertIsInstance(resent[-1][1][0], p.Error)

    def test_windowsize(self) -> None:
        """A window of blocks goes out at once; an ACK of its end sends the next window."""
        h = Harness(self)
        data = os.urandom(512 * 9 + 100)
        h.put_file("f", data)
        port = h.request(p.ReadRequest(b"f", "octet", {"windowsize": "4"}))
        assert port is not None
        h.take(port)
        h.send(port, p.Ack(0))
        self.assertEqual([pk.block for pk in h.take(port)], [1, 2, 3, 4])  # type: ignore[union-attr]
        h.send(port, p.Ack(4))
        self.assertEqual([pk.block for pk in h.take(port)], [5, 6, 7, 8])  # type: ignore[union-attr]

    def test_window_gap_goes_back(self) -> None:
        """An ACK inside the window (the client saw a gap) resends from the block after it."""
        h = Harness(self)
        h.put_file("f", os.urandom(512 * 20))
        port = h.request(p.ReadRequest(b"f", "octet", {"windowsize": "4"}))
        assert port is not None
        h.send(port, p.Ack(0))
        h.take(port)
        h.send(port, p.Ack(2))
        self.assertEqual([pk.block for pk in h.take(port)], [3, 4, 5, 6])  # type: ignore[union-attr]

    def test_window_timeout_resends_window(self) -> None:
        """On timeout the whole unacknowledged window is sent again."""
        h = Harness(self)
        h.put_file("f", os.urandom(512 * 20))
        port = h.request(p.ReadRequest(b"f", "octet", {"windowsize": "3"}))
        assert port is not None
        h.take(port)
        h.send(port, p.Ack(0))
        first = h.take(port)
        h.reactor.advance(1.0)
        self.assertEqual(h.take(port), first)

    def test_lost_data_resent_after_timeout_only(self) -> None:
        """A lost DATA is sent again when the timeout expires, not before."""
        h = Harness(self, timeout=1.0)
        h.put_file("f", b"z" * 600)
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        self.assertEqual(h.take(port), [p.Data(1, b"z" * 512)])
        h.reactor.advance(0.99)
        self.assertEqual(h.take(port), [])
        h.reactor.advance(0.01)
        self.assertEqual(h.take(port), [p.Data(1, b"z" * 512)])

    def test_duplicate_ack_no_resend(self) -> None:
        """A duplicate ACK does not make the server resend (no Sorcerer's Apprentice)."""
        h = Harness(self)
        h.put_file("f", b"q" * 1500)
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        h.take(port)
        h.send(port, p.Ack(1))
        self.assertEqual(h.take(port), [p.Data(2, b"q" * 512)])
        h.send(port, p.Ack(1))
        h.send(port, p.Ack(1))
        self.assertEqual(h.take(port), [])

    def test_reordered_late_ack_ignored(self) -> None:
        """A late ACK of an earlier block, arriving after a later one, changes nothing."""
        h = Harness(self)
        h.put_file("f", os.urandom(512 * 20))
        port = h.request(p.ReadRequest(b"f", "octet", {"windowsize": "4"}))
        assert port is not None
        h.send(port, p.Ack(0))
        h.send(port, p.Ack(4))
        h.take(port)
        h.send(port, p.Ack(2))
        self.assertEqual(h.take(port), [])
        h.send(port, p.Ack(8))
        self.assertEqual([pk.block for pk in h.take(port)], [9, 10, 11, 12])  # type: ignore[union-attr]

    def test_bounded_retries(self) -> None:
        """After (retries + 1) x max(timeout, 5 s) of silence: an ERROR, the port closed."""
        h = Harness(self, timeout=1.0, retries=3)
        h.put_file("f", b"r" * 100)
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        for _ in range(19):
            h.reactor.advance(1.0)
        self.assertFalse(port.closed)
        h.reactor.advance(1.0)
        packets = h.take(port)
        self.assertEqual(packets[:20], [p.Data(1, b"r" * 100)] * 20)  # every 1 s (the ceiling)
        self.assertIsInstance(packets[20], p.Error)
        self.assertTrue(port.closed)
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_unknown_tid(self) -> None:
        """A packet from another port gets ERROR 5 there and the transfer goes on."""
        h = Harness(self)
        h.put_file("f", b"s" * 700)
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        h.take(port)
        h.send(port, p.Ack(1), client=OTHER)
        (error,) = h.take(port, to=OTHER)
        self.assertEqual((error.code, port.closed), (p.UNKNOWN_TID, False))  # type: ignore[union-attr]
        self.assertEqual(h.take(port), [])
        h.send(port, p.Ack(1))
        self.assertEqual(h.take(port), [p.Data(2, b"s" * 188)])

    def test_peer_error_ends_transfer(self) -> None:
        """An ERROR from the client ends the transfer without a reply."""
        h = Harness(self)
        h.put_file("f", b"s" * 700)
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        h.take(port)
        h.send(port, p.Error(0, "user cancelled"))
        self.assertEqual((port.closed, h.take(port)), (True, []))

    def test_wrong_packet_is_illegal(self) -> None:
        """A DATA sent to a read transfer gets ERROR 4 and ends it."""
        h = Harness(self)
        h.put_file("f", b"s" * 700)
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        h.take(port)
        h.send(port, p.Data(1, b"x"))
        (error,) = h.take(port)
        self.assertEqual((error.code, port.closed), (p.ILLEGAL_OPERATION, True))  # type: ignore[union-attr]

    def test_garbage_on_transfer_port_ignored(self) -> None:
        """A malformed datagram from the peer is dropped and the transfer goes on."""
        h = Harness(self)
        h.put_file("f", b"s" * 700)
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        h.take(port)
        port.receive(b"\x00", CLIENT)
        self.assertFalse(port.closed)
        h.send(port, p.Ack(1))
        self.assertEqual(h.take(port), [p.Data(2, b"s" * 188)])

    def test_missing_file(self) -> None:
        """A missing file is ERROR 1 from the main port, and no transfer port opens."""
        h = Harness(self)
        self.assertIsNone(h.request(p.ReadRequest(b"nope", "octet")))
        (error,) = h.take(h.main)
        self.assertEqual(error.code, p.FILE_NOT_FOUND)  # type: ignore[union-attr]

    def test_escaping_paths(self) -> None:
        """../etc/passwd, /../etc/passwd, empty components and non-UTF-8 names are ERROR 2."""
        h = Harness(self)
        names = (
            b"../etc/passwd",
            b"/../etc/passwd",
            b"//../x",
            b"a/../../x",
            b"/./a",
            b"/a//b",
            b"/",
            b"//",
            b"a/",
            b"\xff",
            b".filexfer/tmp",
            b"/.filexfer/tmp",
        )
        for name in names:
            self.assertIsNone(h.request(p.ReadRequest(name, "octet")))
            self.assertIsNone(h.request(p.WriteRequest(name, "octet")))
            errors = h.take(h.main)
            self.assertEqual([e.code for e in errors], [2, 2], name)  # type: ignore[union-attr]

    def test_reading_disabled(self) -> None:
        """With allow_read=False an RRQ is ERROR 2."""
        h = Harness(self, allow_read=False)
        h.put_file("f", b"secret")
        self.assertIsNone(h.request(p.ReadRequest(b"f", "octet")))
        (error,) = h.take(h.main)
        self.assertEqual(error.code, p.ACCESS_VIOLATION)  # type: ignore[union-attr]

    def test_address_not_allowed(self) -> None:
        """A request from outside the allowed networks is ERROR 2; an allowed one is served."""
        h = Harness(self, access=AccessPolicy(["10.0.0.0/8"]))
        h.put_file("f", b"data")
        self.assertIsNone(h.request(p.ReadRequest(b"f", "octet")))
        (error,) = h.take(h.main)
        self.assertEqual(error.code, p.ACCESS_VIOLATION)  # type: ignore[union-attr]
        inside = ("10.1.2.3", 5000)
        port = h.request(p.ReadRequest(b"f", "octet"), client=inside)
        assert port is not None
        self.assertEqual(h.take(port, to=inside), [p.Data(1, b"data")])

    def test_netascii(self) -> None:
        """In netascii mode LF is sent as CR LF and CR as CR NUL, and tsize is not offered."""
        h = Harness(self)
        h.put_file("t", b"a\nb\rc")
        port = h.request(p.ReadRequest(b"t", "NetASCII", {"tsize": "0"}))
        assert port is not None
        self.assertEqual(h.take(port), [p.Data(1, b"a\r\nb\r\0c")])

    def test_netascii_block_boundaries(self) -> None:
        """Netascii expansion is cut into full blocks."""
        h = Harness(self)
        h.put_file("t", b"\n" * 300)
        port = h.request(p.ReadRequest(b"t", "netascii"))
        assert port is not None
        self.assertEqual(h.take(port), [p.Data(1, b"\r\n" * 256)])
        h.send(port, p.Ack(1))
        self.assertEqual(h.take(port), [p.Data(2, b"\r\n" * 44)])

    def test_duplicate_request_ignored(self) -> None:
        """A retransmitted request does not start a second transfer."""
        h = Harness(self)
        h.put_file("f", b"once")
        first = h.request(p.ReadRequest(b"f", "octet"))
        second = h.request(p.ReadRequest(b"f", "octet"))
        self.assertIsNotNone(first)
        self.assertIsNone(second)
        self.assertEqual(len(h.server.transfers), 1)

    def test_concurrent_transfers_independent(self) -> None:
        """Two transfers from two clients progress independently."""
        h = Harness(self)
        h.put_file("a", b"A" * 600)
        h.put_file("b", b"B" * 600)
        port_a = h.request(p.ReadRequest(b"a", "octet"), client=CLIENT)
        port_b = h.request(p.ReadRequest(b"b", "octet"), client=OTHER)
        assert port_a is not None and port_b is not None
        self.assertIsNot(port_a, port_b)
        h.send(port_b, p.Ack(1), client=OTHER)
        self.assertEqual(h.take(port_b, to=OTHER)[-1], p.Data(2, b"B" * 88))
        self.assertEqual(h.take(port_a), [p.Data(1, b"A" * 512)])
        h.send(port_b, p.Ack(2), client=OTHER)
        self.assertTrue(port_b.closed)
        self.assertFalse(port_a.closed)

    def test_logs_transfer(self) -> None:
        """A finished transfer is logged once with its protocol, path, bytes and outcome."""
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        h = Harness(self)
        h.put_file("f", b"12345")
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        h.send(port, p.Ack(1))
        logged = [e for e in events if e.get("protocol") == "tftp-rrq"]
        self.assertEqual(len(logged), 1)
        self.assertEqual(
            (logged[0]["path"], logged[0]["nbytes"], logged[0]["outcome"]), ("f", 5, "ok")
        )


class WriteRequestTests(unittest.TestCase):
    """WRQ: storing uploads."""

    def test_small_upload(self) -> None:
        """ACK 0, then the last DATA is stored and ACKed."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"new.bin", "octet"))
        assert port is not None
        self.assertEqual(h.take(port), [p.Ack(0)])
        h.send(port, p.Data(1, b"payload"))
        self.assertEqual(h.take(port), [p.Ack(1)])
        self.assertEqual(h.stored("new.bin"), b"payload")
        self.assertEqual(h.temp_files(), [])

    def test_atomic_store(self) -> None:
        """The final name appears only with the last block, before its ACK is sent."""
        h = Harness(self)
        data = os.urandom(512 * 3 + 10)
        port = h.request(p.WriteRequest(b"atomic.bin", "octet"))
        assert port is not None
        h.take(port)
        chunks = _blocks(data, 512)
        for number, chunk in enumerate(chunks[:-1], start=1):
            h.send(port, p.Data(number, chunk))
            self.assertEqual(h.take(port), [p.Ack(number)])
            self.assertNotIn("atomic.bin", os.listdir(h.root))
        h.send(port, p.Data(len(chunks), chunks[-1]))
        self.assertEqual(h.stored("atomic.bin"), data)
        self.assertEqual(h.take(port), [p.Ack(len(chunks))])

    def test_upload_exact_multiple(self) -> None:
        """An upload of exactly one block ends with an empty DATA 2."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"one", "octet"))
        assert port is not None
        h.send(port, p.Data(1, b"o" * 512))
        self.assertIsNone(h.stored("one"))
        h.send(port, p.Data(2, b""))
        self.assertEqual(h.stored("one"), b"o" * 512)

    def test_oack_then_data(self) -> None:
        """With options the server OACKs, resends the OACK on timeout, and takes DATA 1."""
        h = Harness(self)
        options = {"blksize": "16", "tsize": "20"}
        port = h.request(p.WriteRequest(b"w", "octet", options))
        assert port is not None
        self.assertEqual(h.take(port), [p.OptionAck(options)])
        h.reactor.advance(1.0)
        self.assertEqual(h.take(port), [p.OptionAck(options)])
        h.send(port, p.Data(1, b"0123456789abcdef"))
        h.send(port, p.Data(2, b"wxyz"))
        self.assertEqual(h.take(port), [p.Ack(1), p.Ack(2)])
        self.assertEqual(h.stored("w"), b"0123456789abcdefwxyz")

    def test_windowed_upload_acks_per_window(self) -> None:
        """With windowsize 4 the server ACKs every fourth block, and the last."""
        h = Harness(self)
        data = os.urandom(512 * 9 + 1)
        port = h.request(p.WriteRequest(b"win", "octet", {"windowsize": "4"}))
        assert port is not None
        h.take(port)
        for number, chunk in enumerate(_blocks(data, 512), start=1):
            h.send(port, p.Data(number, chunk))
        self.assertEqual(h.take(port), [p.Ack(4), p.Ack(8), p.Ack(10)])
        self.assertEqual(h.stored("win"), data)

    def test_reordering_reacks_last_in_order(self) -> None:
        """A block ahead of the expected one re-ACKs the last in-order block, once."""
        h = Harness(self)
        data = os.urandom(512 * 6 + 3)
        chunks = _blocks(data, 512)
        port = h.request(p.WriteRequest(b"reord", "octet", {"windowsize": "4"}))
        assert port is not None
        h.take(port)
        h.send(port, p.Data(1, chunks[0]))
        h.send(port, p.Data(3, chunks[2]))
        h.send(port, p.Data(4, chunks[3]))
        self.assertEqual(h.take(port), [p.Ack(1)])
        for number in (2, 3, 4, 5):
            h.send(port, p.Data(number, chunks[number - 1]))
        self.assertEqual(h.take(port), [p.Ack(5)])
        h.send(port, p.Data(6, chunks[5]))
        h.send(port, p.Data(7, chunks[6]))
        self.assertEqual(h.take(port), [p.Ack(7)])
        self.assertEqual(h.stored("reord"), data)

    def test_repeated_data_reacked_at_once(self) -> None:
        """Issue 10 item 3: the first ACK is lost and the sender repeats DATA 1 every 0.2 s.

        Each repeat is answered with ACK 1 at once (as tftpd-hpa does), not
        when our own timer fires: a sender with a short retry budget would
        give up first.
        """
        h = Harness(self)
        port = h.request(p.WriteRequest(b"dup", "octet"))
        assert port is not None
        self.assertEqual(h.take(port), [p.Ack(0)])
        h.send(port, p.Data(1, b"d" * 512))
        self.assertEqual(h.take(port), [p.Ack(1)])  # lost on its way
        for _ in range(3):
            h.reactor.advance(0.2)
            h.send(port, p.Data(1, b"d" * 512))
            self.assertEqual(h.take(port), [p.Ack(1)])
        h.send(port, p.Data(2, b"end"))
        self.assertEqual(h.take(port), [p.Ack(2)])
        self.assertEqual(h.stored("dup"), b"d" * 512 + b"end")

    def test_repeated_request_answered_at_once(self) -> None:
        """Issue 10 item 3, the request's kind: our first answer is lost and the
        client repeats its request every 0.2 s; each repeat gets that answer
        again at once (OACK or DATA 1 for an RRQ, OACK or ACK 0 for a WRQ),
        from the transfer's port, and no second transfer starts."""
        h = Harness(self)
        h.put_file("boot.cfg", b"b" * 700)
        cases = [
            (p.ReadRequest(b"boot.cfg", "octet"), p.Data(1, b"b" * 512)),
            (
                p.ReadRequest(b"boot.cfg", "octet", {"blksize": "1024"}),
                p.OptionAck({"blksize": "1024"}),
            ),
            (p.WriteRequest(b"up.cfg", "octet"), p.Ack(0)),
            (
                p.WriteRequest(b"up2.cfg", "octet", {"blksize": "1024"}),
                p.OptionAck({"blksize": "1024"}),
            ),
        ]
        for number, (request, first) in enumerate(cases):
            client = (CLIENT[0], CLIENT[1] + 1 + number)
            port = h.request(request, client)
            assert port is not None
            self.assertEqual(h.take(port, client), [first])  # lost on its way
            ports = len(h.reactor.ports)
            for _ in range(3):
                h.reactor.advance(0.2)
                self.assertIsNone(h.request(request, client))
                self.assertEqual(h.take(port, client), [first])
            h.reactor.advance(0.01)  # a copy the network made of the request: not answered twice
            self.assertIsNone(h.request(request, client))
            self.assertEqual(h.take(port, client), [])
            self.assertEqual(len(h.reactor.ports), ports)

    def test_repeated_request_after_answer_ignored(self) -> None:
        """Once the client has answered (ACKed), a late copy of its request sends nothing."""
        h = Harness(self)
        h.put_file("late.bin", b"l" * 1000)
        request = p.ReadRequest(b"late.bin", "octet")
        port = h.request(request)
        assert port is not None
        self.assertEqual(h.take(port), [p.Data(1, b"l" * 512)])
        h.send(port, p.Ack(1))
        self.assertEqual(h.take(port), [p.Data(2, b"l" * 488)])
        h.reactor.advance(0.06)  # past the guard, before the timer's floor (0.1 s)
        self.assertIsNone(h.request(request))
        self.assertEqual(h.take(port), [])

    def test_network_copy_of_data_answered_once(self) -> None:
        """Two copies of a DATA arriving together get one ACK (the guard, half the floor)."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"twice", "octet"))
        assert port is not None
        h.take(port)
        h.send(port, p.Data(1, b"t" * 512))
        h.reactor.advance(0.01)
        h.send(port, p.Data(1, b"t" * 512))
        self.assertEqual(h.take(port), [p.Ack(1)])

    def test_older_duplicate_not_reacked(self) -> None:
        """A repeat of a block older than the one last ACKed is not answered."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"old", "octet"))
        assert port is not None
        h.take(port)
        h.send(port, p.Data(1, b"o" * 512))
        h.send(port, p.Data(2, b"o" * 512))
        h.take(port)
        h.reactor.advance(0.06)  # past the guard, before the timer (0.1 s)
        h.send(port, p.Data(1, b"o" * 512))
        self.assertEqual(h.take(port), [])

    def test_repeated_data_mid_window_not_reacked(self) -> None:
        """In a window, a repeat of the block last ACKed after newer blocks came is ignored."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"win", "octet", {"windowsize": "2"}))
        assert port is not None
        h.take(port)
        for number in (1, 2, 3):
            h.send(port, p.Data(number, b"w" * 512))
        self.assertEqual(h.take(port), [p.Ack(2)])
        h.reactor.advance(0.06)
        h.send(port, p.Data(2, b"w" * 512))  # ACK 2 is stale: block 3 came since
        self.assertEqual(h.take(port), [])

    def test_final_ack_repeated_while_dallying(self) -> None:
        """A repeat of the final DATA (our ACK was lost) is answered with the final ACK."""
        h = Harness(self, timeout=1.0, retries=2)
        port = h.request(p.WriteRequest(b"dally", "octet"))
        assert port is not None
        h.send(port, p.Data(1, b"end"))
        h.take(port)
        h.send(port, p.Data(1, b"end"))
        self.assertEqual(h.take(port), [p.Ack(1)])
        self.assertFalse(port.closed)
        h.reactor.advance(2.0)
        self.assertTrue(port.closed)
        self.assertEqual(h.stored("dally"), b"end")

    def test_rollover_upload(self) -> None:
        """An upload past block 65535 wraps to 0 and is stored intact."""
        h = Harness(self)
        data = os.urandom(8 * 65537 + 5)
        port = h.request(p.WriteRequest(b"wrap", "octet", {"blksize": "8", "windowsize": "256"}))
        assert port is not None
        h.take(port)
        for number, chunk in enumerate(_blocks(data, 8), start=1):
            h.send(port, p.Data(number & 0xFFFF, chunk))
        acks = h.take(port)
        self.assertIn(p.Ack(0), acks)  # 65536 = 256 * 256: a window ends on the wrap
        self.assertEqual(acks[-1], p.Ack((65537 + 1) & 0xFFFF))
        self.assertEqual(h.stored("wrap"), data)

    def test_bounded_retries_abort_upload(self) -> None:
        """A silent client: ACK 1 repeated twice, then every 6 s; ERROR after 15 s; no file left."""
        h = Harness(self, timeout=1.0, retries=2)
        port = h.request(p.WriteRequest(b"lost", "octet"))
        assert port is not None
        h.send(port, p.Data(1, b"l" * 512))
        self.assertEqual(len(h.temp_files()), 1)
        for _ in range(14):
            h.reactor.advance(1.0)
        self.assertFalse(port.closed)
        h.reactor.advance(1.0)  # (retries + 1) x max(timeout, 5 s)
        packets = h.take(port)
        # ACK 1, two quick repeats (at 1 and 3 s), then one 6 s after the last: 9 s; ERROR at 15 s
        self.assertEqual(packets[:6], [p.Ack(0)] + [p.Ack(1)] * 5)
        self.assertIsInstance(packets[6], p.Error)
        self.assertEqual(len(packets), 7)
        self.assertTrue(port.closed)
        self.assertIsNone(h.stored("lost"))
        self.assertEqual(h.temp_files(), [])
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_sender_that_waits_for_a_repeated_ack(self) -> None:
        """Fresh-eyes finding on issue 10 item 4: curl resends DATA only when it sees a
        repeated ACK (its own timer never resends).  When ACK 1 and both quick
        repeats are lost, a later repeat (every 6 s, past tftp-hpa's 5 s timer)
        still comes, and the upload finishes instead of timing out."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"curl.bin", "octet"))
        assert port is not None
        self.assertEqual(h.take(port), [p.Ack(0)])
        h.send(port, p.Data(1, b"c" * 512))
        for _ in range(10):
            h.reactor.advance(0.1)
        self.assertEqual(h.take(port), [p.Ack(1)] * 3)  # the ACK and two quick repeats: all lost
        h.reactor.advance(5.0)
        self.assertEqual(h.take(port), [])  # quiet: tftp-hpa's own 5 s timer fires meanwhile
        h.reactor.advance(1.5)
        self.assertEqual(h.take(port), [p.Ack(1)])  # this one arrives: curl sends on
        h.send(port, p.Data(2, b"end"))
        self.assertEqual(h.take(port), [p.Ack(2)])
        self.assertEqual(h.stored("curl.bin"), b"c" * 512 + b"end")

    def test_peer_error_aborts_upload(self) -> None:
        """An ERROR from the client discards the partial upload."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"gone", "octet"))
        assert port is not None
        h.send(port, p.Data(1, b"g" * 512))
        h.send(port, p.Error(0, "bye"))
        self.assertTrue(port.closed)
        self.assertEqual((h.stored("gone"), h.temp_files()), (None, []))

    def test_unknown_tid_during_upload(self) -> None:
        """DATA from another port gets ERROR 5 and is not stored."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"tid", "octet"))
        assert port is not None
        h.send(port, p.Data(1, b"intruder"), client=OTHER)
        (error,) = h.take(port, to=OTHER)
        self.assertEqual(error.code, p.UNKNOWN_TID)  # type: ignore[union-attr]
        h.send(port, p.Data(1, b"real"))
        self.assertEqual(h.stored("tid"), b"real")

    def test_refuse_policy(self) -> None:
        """With the refuse policy an existing name is ERROR 6, and the file is kept."""
        h = Harness(self, on_conflict="refuse")
        h.put_file("exists", b"old")
        self.assertIsNone(h.request(p.WriteRequest(b"exists", "octet")))
        (error,) = h.take(h.main)
        self.assertEqual(error.code, p.FILE_EXISTS)  # type: ignore[union-attr]
        self.assertEqual(h.stored("exists"), b"old")

    def test_rename_policy_refuses(self) -> None:
        """Under the default (rename) policy an existing name is ERROR 6: never 'r (1).txt'."""
        h = Harness(self)
        h.put_file("r.txt", b"old")
        self.assertIsNone(h.request(p.WriteRequest(b"r.txt", "octet")))
        self.assertEqual(h.take(h.main), [p.Error(p.FILE_EXISTS, "r.txt already exists")])
        self.assertEqual(
            (sorted(os.listdir(h.root)), h.stored("r.txt")), ([".filexfer", "r.txt"], b"old")
        )

    def test_existing_directory_refused(self) -> None:
        """A WRQ naming a directory is ERROR 6 under every policy; the directory stays."""
        for policy in ("rename", "overwrite", "refuse"):
            h = Harness(self, on_conflict=policy)
            os.makedirs(os.path.join(h.root, "d"))
            self.assertIsNone(h.request(p.WriteRequest(b"/d", "octet")))
            self.assertEqual([e.code for e in h.take(h.main)], [p.FILE_EXISTS], policy)  # type: ignore[union-attr]
            self.assertTrue(os.path.isdir(os.path.join(h.root, "d")))

    def test_appears_during_upload(self) -> None:
        """A file that appears under the name while the upload runs makes the end ERROR 6."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"late.cfg", "octet"))
        assert port is not None
        h.put_file("late.cfg", b"theirs")
        h.send(port, p.Data(1, b"mine"))
        self.assertEqual([type(e) for e in h.take(port)], [p.Ack, p.Error])
        self.assertEqual(sorted(os.listdir(h.root)), [".filexfer", "late.cfg"])
        self.assertEqual((h.stored("late.cfg"), h.temp_files()), (b"theirs", []))

    def test_numbered_copy_never_answers(self) -> None:
        """An upload equal to 'fw (1).bin' is stored as fw.bin, the name asked for."""
        h = Harness(self)
        h.put_file("fw (1).bin", b"image")
        port = h.request(p.WriteRequest(b"fw.bin", "octet", {"tsize": "5"}))
        assert port is not None
        h.send(port, p.Data(1, b"image"))
        self.assertEqual(h.stored("fw.bin"), b"image")

    def test_overwrite_policy_replaces_atomically(self) -> None:
        """Under overwrite the old file is served until the last block, then replaced."""
        h = Harness(self, on_conflict="overwrite")
        h.put_file("fw.bin", b"old")
        port = h.request(p.WriteRequest(b"/fw.bin", "octet"))
        assert port is not None
        h.send(port, p.Data(1, b"n" * 512))
        self.assertEqual(h.stored("fw.bin"), b"old")
        h.send(port, p.Data(2, b"ew"))
        self.assertEqual(h.take(port), [p.Ack(0), p.Ack(1), p.Ack(2)])
        self.assertEqual(h.stored("fw.bin"), b"n" * 512 + b"ew")

    def test_overwrite_same_bytes_unchanged(self) -> None:
        """Under overwrite an upload of the very same bytes succeeds and changes nothing."""
        h = Harness(self, on_conflict="overwrite")
        h.put_file("fw.bin", b"same")
        before = os.stat(os.path.join(h.root, "fw.bin"))
        port = h.request(p.WriteRequest(b"fw.bin", "octet"))
        assert port is not None
        h.send(port, p.Data(1, b"same"))
        self.assertEqual(h.take(port), [p.Ack(0), p.Ack(1)])
        after = os.stat(os.path.join(h.root, "fw.bin"))
        self.assertEqual((after.st_ino, after.st_mtime_ns), (before.st_ino, before.st_mtime_ns))

    def test_too_large(self) -> None:
        """A tsize above the storage's limit is ERROR 3 before any data."""
        h = Harness(self, max_size=100)
        self.assertIsNone(h.request(p.WriteRequest(b"big", "octet", {"tsize": "101"})))
        (error,) = h.take(h.main)
        self.assertEqual(error.code, p.DISK_FULL)  # type: ignore[union-attr]

    def test_more_than_tsize(self) -> None:
        """More data than the announced tsize is an ERROR and nothing is stored."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"liar", "octet", {"tsize": "3"}))
        assert port is not None
        h.send(port, p.Data(1, b"four"))
        packets = h.take(port)
        self.assertIsInstance(packets[-1], p.Error)
        self.assertEqual((h.stored("liar"), h.temp_files(), port.closed), (None, [], True))

    def test_tsize_zero_is_unknown_size(self) -> None:
        """A WRQ with tsize 0 (cat f | curl -T -) is an upload of unknown size: stored."""
        h = Harness(self)
        data = os.urandom(1300)
        port = h.request(p.WriteRequest(b"x.bin", "octet", {"tsize": "0"}))
        assert port is not None
        self.assertEqual(h.take(port), [p.OptionAck({"tsize": "0"})])
        for block, chunk in enumerate(_blocks(data, 512), 1):
            h.send(port, p.Data(block, chunk))
        self.assertEqual(h.take(port), [p.Ack(1), p.Ack(2), p.Ack(3)])
        self.assertEqual(h.stored("x.bin"), data)

    def test_tsize_zero_max_size_still_applies(self) -> None:
        """With tsize 0, the block that passes --max-size gets ERROR 3 instead of its ACK."""
        h = Harness(self, max_size=1000)
        port = h.request(p.WriteRequest(b"x.bin", "octet", {"tsize": "0"}))
        assert port is not None
        h.take(port)
        h.send(port, p.Data(1, b"a" * 512))
        self.assertEqual(h.take(port), [p.Ack(1)])
        h.send(port, p.Data(2, b"b" * 512))
        (error,) = h.take(port)
        self.assertEqual(error.code, p.DISK_FULL)  # type: ignore[union-attr]
        self.assertEqual((h.stored("x.bin"), h.temp_files(), port.closed), (None, [], True))

    def test_refused_block_never_acked(self) -> None:
        """The block that breaks a rule gets the ERROR, and no ACK covers it, in any window.

        Windows of 1, 4 and 16 blocks; the size limit and the announced tsize;
        the limit reached at a window's last block, inside a window and at the
        short last block.
        """
        for windowsize in (1, 4, 16):
            for rule, options, limit in (
                ("max-size", {}, 512 * 4 - 1),
                ("max-size", {}, 512 * 3 + 100),
                ("max-size", {}, 512 * 5 + 10),
                ("tsize", {"tsize": str(512 * 4 - 1)}, None),
                ("tsize", {"tsize": str(512 * 5 + 10)}, None),
            ):
                label = f"window {windowsize}, {rule} {limit or options}"
                h = Harness(self, max_size=limit)
                asked = {**options, "windowsize": str(windowsize)}
                port = h.request(p.WriteRequest(b"w.bin", "octet", asked))
                assert port is not None, label
                h.take(port)
                data = b"z" * (512 * 5 + 20)
                allowed = limit if limit is not None else int(options["tsize"])
                acked: list[int] = []
                for block, chunk in enumerate(_blocks(data, 512), 1):
                    h.send(port, p.Data(block, chunk))
                    packets = h.take(port)
                    acked += [a.block for a in packets if isinstance(a, p.Ack)]
                    if any(isinstance(e, p.Error) for e in packets):
                        self.assertGreater(block * 512, allowed, label)
                        break
                else:
                    self.fail(f"{label}: no ERROR")
                self.assertTrue(all(a * 512 <= allowed for a in acked), (label, acked))
                self.assertEqual((h.stored("w.bin"), h.temp_files()), (None, []), label)

    def test_less_than_tsize(self) -> None:
        """Fewer bytes than the announced tsize is an ERROR and nothing is kept."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"short", "octet", {"tsize": "600"}))
        assert port is not None
        h.send(port, p.Data(1, b"only this"))
        packets = h.take(port)
        self.assertIsInstance(packets[-1], p.Error)
        self.assertEqual((h.stored("short"), h.temp_files(), port.closed), (None, [], True))

    def test_final_ack_waits_for_durable_store(self) -> None:
        """With a slow (threaded) finish, the last ACK is sent only once the file is in place."""
        h = Harness(self)
        pending: list[tuple[Deferred[Any], Callable[[], Any]]] = []

        def later(work: Callable[[], Any]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((d, work))
            return d

        h.storage.run_blocking = later
        self.assertIsNone(h.request(p.WriteRequest(b"slow", "octet")))
        self.assertIsNone(h.request(p.WriteRequest(b"slow", "octet")))  # a repeat: ignored
        d, work = pending.pop()
        before = len(h.reactor.ports)
        d.callback(work())  # the storage has started the upload (off the reactor in service)
        self.assertEqual((len(h.reactor.ports), pending), (before + 1, []))
        port = h.reactor.ports[-1]
        h.take(port)
        h.send(port, p.Data(1, b"last"))
        h.send(port, p.Data(1, b"last"))  # a retransmission while storing
        self.assertEqual((h.take(port), h.stored("slow")), ([], None))
        d, work = pending.pop()
        d.callback(work())
        self.assertEqual((h.take(port), h.stored("slow")), ([p.Ack(1)], b"last"))

    def test_background_writes_back_pressure(self) -> None:
        """While background writes lag behind, window ACKs are withheld, then sent."""
        h = Harness(self)
        pending: list[tuple[Deferred[Any], Callable[[], Any]]] = []

        def later(work: Callable[[], Any]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((d, work))
            return d

        def drain() -> None:
            for _ in range(10_000):
                if not pending:
                    return
                d, work = pending.pop(0)
                d.callback(work())

        h.storage.run_writes = later
        blksize = 65464
        data = os.urandom(blksize * 200 + 1)
        chunks = _blocks(data, blksize)
        port = h.request(p.WriteRequest(b"bp", "octet", {"blksize": str(blksize)}))
        assert port is not None
        h.take(port)
        withheld = None
        for number, chunk in enumerate(chunks[:-1], start=1):
            h.send(port, p.Data(number, chunk))
            if h.take(port) != [p.Ack(number)]:
                withheld = number
                break
        self.assertIsNotNone(withheld, "the storage never pushed back")
        assert withheld is not None
        drain()
        self.assertEqual(h.take(port), [p.Ack(withheld)])
        for number, chunk in enumerate(chunks[withheld:], start=withheld + 1):
            h.send(port, p.Data(number, chunk))
            drain()
        self.assertEqual(h.stored("bp"), data)
        self.assertEqual(h.take(port)[-1], p.Ack(len(chunks)))

    def test_writing_disabled(self) -> None:
        """With allow_write=False a WRQ is ERROR 2."""
        h = Harness(self, allow_write=False)
        self.assertIsNone(h.request(p.WriteRequest(b"f", "octet")))
        (error,) = h.take(h.main)
        self.assertEqual(error.code, p.ACCESS_VIOLATION)  # type: ignore[union-attr]

    def test_netascii_upload(self) -> None:
        """A netascii upload is stored with local newlines, CR LF cut across blocks."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"n.txt", "netascii", {"blksize": "8"}))
        assert port is not None
        h.send(port, p.Data(1, b"line1\r\nx"))
        h.send(port, p.Data(2, b"\r"))
        self.assertEqual(h.stored("n.txt"), b"line1\nx\r")
        port2 = h.request(p.WriteRequest(b"m.txt", "netascii", {"blksize": "8"}))
        assert port2 is not None
        h.send(port2, p.Data(1, b"abcdefg\r"))
        h.send(port2, p.Data(2, b"\nz\r\0"))
        self.assertEqual(h.stored("m.txt"), b"abcdefg\nz\r")


class HugeOptionValueTests(unittest.TestCase):
    """Option values of 5,000 digits are malformed: ignored (RFC 2347), never a crash."""

    OPTIONS = ("blksize", "timeout", "tsize", "windowsize")

    def test_rrq(self) -> None:
        """An RRQ with a 5,000-digit option is served plainly; the other options still count."""
        for name in self.OPTIONS:
            h = Harness(self)
            h.put_file("f", b"data")
            port = h.request(p.ReadRequest(b"f", "octet", {name: "9" * 5000}))
            assert port is not None, name
            self.assertEqual(h.take(port), [p.Data(1, b"data")], name)
            other = "blksize" if name != "blksize" else "windowsize"
            port = h.request(p.ReadRequest(b"f", "octet", ((name, "9" * 5000), (other, "8"))))
            assert port is not None, name
            self.assertEqual(h.take(port), [p.OptionAck({other: "8"})], name)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_wrq(self) -> None:
        """A WRQ with a 5,000-digit option gets ACK 0 (no OACK), and the upload is stored."""
        for name in self.OPTIONS:
            h = Harness(self)
            port = h.request(p.WriteRequest(b"w", "octet", {name: "9" * 5000}))
            assert port is not None, name
            self.assertEqual(h.take(port), [p.Ack(0)], name)
            h.send(port, p.Data(1, b"abc"))
            self.assertEqual(h.take(port), [p.Ack(1)], name)
            self.assertEqual(h.stored("w"), b"abc", name)
        self.assertEqual(self.flushLoggedErrors(), [])


class MainPortTests(unittest.TestCase):
    """The well-known port: requests only."""

    def test_mail_mode(self) -> None:
        """Mode mail (or any other) is ERROR 4."""
        h = Harness(self)
        h.put_file("f", b"x")
        for mode in ("mail", "binary"):
            self.assertIsNone(h.request(p.ReadRequest(b"f", mode)))
        self.assertEqual([e.code for e in h.take(h.main)], [4, 4])  # type: ignore[union-attr]

    def test_runts_dropped(self) -> None:
        """Datagrams shorter than an opcode are dropped silently, without an exception."""
        h = Harness(self)
        for datagram in (b"", b"\x00"):
            h.main.receive(datagram, CLIENT)
        self.assertEqual((h.main.sent, len(h.reactor.ports)), ([], 1))

    def test_malformed_requests_get_error_4(self) -> None:
        """A request with no NUL, an empty name or no mode is ERROR 4 (tftpd-hpa answers too)."""
        h = Harness(self)
        h.put_file("name", b"x")
        datagrams = (
            b"\x00\x01",
            b"\x00\x01name",
            b"\x00\x02name",
            b"\x00\x01\0octet\0",
            b"\x00\x02\0octet\0",
            b"\x00\x01\0",
            b"\x00\x01\0\0",
            b"\x00\x01name\0",
            b"\x00\x02name\0\0",
            b"\x00\x01name\0oct\xe9t\0",
        )
        for datagram in datagrams:
            h.main.receive(datagram, CLIENT)
            errors = h.take(h.main)
            self.assertEqual(
                [(type(e), e.code) for e in errors],  # type: ignore[union-attr]
                [(p.Error, p.ILLEGAL_OPERATION)],
                datagram,
            )
        self.assertEqual(len(h.reactor.ports), 1)

    def test_mode_without_nul_is_served(self) -> None:
        """An RRQ or WRQ whose mode lacks its NUL is served, as tftpd-hpa serves it."""
        h = Harness(self)
        h.put_file("name", b"hello")
        h.main.receive(b"\x00\x01name\0octet", CLIENT)
        port = h.reactor.ports[-1]
        self.assertEqual(h.take(port), [p.Data(1, b"hello")])
        h.main.receive(b"\x00\x02up\0octet", OTHER)
        up = h.reactor.ports[-1]
        self.assertEqual(h.take(up, OTHER), [p.Ack(0)])
        h.send(up, p.Data(1, b"stored"), OTHER)
        self.assertEqual(h.stored("up"), b"stored")

    def test_error_for_long_name_fits(self) -> None:
        """The ERROR for a missing, deeply nested 5,000-byte name fits 516 bytes, NUL-ended."""
        h = Harness(self)
        name = "/" + "/".join(["d\u00e9j\u00e0"] * 700) + "/missing.cfg"
        self.assertIsNone(h.request(p.ReadRequest(name.encode(), "octet")))
        ((datagram, _),) = h.main.sent
        self.assertLessEqual(len(datagram), 516)
        self.assertEqual((datagram[:4], datagram[-1:]), (b"\x00\x05\x00\x01", b"\0"))
        datagram[4:-1].decode("utf-8")  # cut on a character boundary

    def test_non_request_opcodes(self) -> None:
        """DATA, ACK, OACK and unknown opcodes are ERROR 4; an ERROR is not answered."""
        h = Harness(self)
        for packet in (p.encode(p.Data(1, b"")), p.encode(p.Ack(0)), b"\x00\x06", b"\x00\x09"):
            h.main.receive(packet, CLIENT)
        h.main.receive(p.encode(p.Error(0, "x")), CLIENT)
        self.assertEqual([e.code for e in h.take(h.main)], [4, 4, 4, 4])  # type: ignore[union-attr]

    def test_transfer_port_interface_follows_listener(self) -> None:
        """Transfer ports are bound on the listening port's address, IPv6 included."""
        for interface in ("127.0.0.1", "::1", "::"):
            h = Harness(self, interface=interface)
            h.put_file("f", b"x")
            port = h.request(p.ReadRequest(b"f", "octet"), client=("::1", 5555))
            assert port is not None
            self.assertEqual(port.interface, interface)
            self.assertEqual(h.take(port, to=("::1", 5555)), [p.Data(1, b"x")])

    def test_explicit_interface(self) -> None:
        """The interface argument overrides the listening address for transfer ports."""
        reactor = FakeUDPNetwork()
        root = self.mktemp()
        server = TFTPServerProtocol(
            storage=DirectoryStorage(root), reactor=reactor, interface="127.0.0.2"
        )
        main = reactor.listenUDP(69, server, interface="")
        main.receive(p.encode(p.WriteRequest(b"f", "octet")), CLIENT)
        self.assertEqual(reactor.ports[-1].interface, "127.0.0.2")

    def test_no_transfer_port(self) -> None:
        """When no transfer port can be opened the client gets ERROR 0 and nothing leaks."""
        h = Harness(self)
        h.reactor.listen_error = CannotListenError("127.0.0.1", 0, OSError("no ports left"))
        h.put_file("f", b"x")
        self.assertIsNone(h.request(p.ReadRequest(b"f", "octet")))
        self.assertIsNone(h.request(p.WriteRequest(b"g", "octet")))
        self.assertEqual([e.code for e in h.take(h.main)], [0, 0])  # type: ignore[union-attr]
        self.assertEqual((h.server.transfers, h.temp_files()), (set(), []))

    def test_stop_abandons_transfers(self) -> None:
        """Stopping the server ends every transfer and discards partial uploads."""
        h = Harness(self)
        h.put_file("f", b"x" * 2000)
        read = h.request(p.ReadRequest(b"f", "octet"))
        write = h.request(p.WriteRequest(b"w", "octet"))
        assert read is not None and write is not None
        h.send(write, p.Data(1, b"w" * 512))
        h.main.stopListening()
        self.assertEqual((read.closed, write.closed), (True, True))
        self.assertEqual((h.server.transfers, h.temp_files()), (set(), []))
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_unreadable_file(self) -> None:
        """A read error while starting sends ERROR 0, closes the port and forgets the transfer."""
        h = Harness(self)
        h.put_file("f", b"x" * 100)

        class Broken(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                raise OSError(errno.EIO, "I/O error")

        h.storage.open_read = lambda path: succeed(FileSource(Broken(), 100))  # type: ignore[method-assign]
        port = h.request(p.ReadRequest(b"f", "octet"))
        assert port is not None
        (error,) = h.take(port)
        self.assertEqual((error.code, port.closed, h.server.transfers), (0, True, set()))  # type: ignore[union-attr]

    def test_internal_error_contained(self) -> None:
        """An unexpected exception in a transfer is logged, answered with ERROR 0, and contained."""
        h = Harness(self)
        port = h.request(p.WriteRequest(b"w", "octet"))
        assert port is not None
        h.take(port)
        upload = next(iter(h.server.transfers)).upload  # type: ignore[attr-defined]

        def explode() -> Any:
            raise RuntimeError("boom")

        upload.finish = explode
        h.send(port, p.Data(1, b"short"))
        (error,) = h.take(port)
        self.assertEqual((error.code, port.closed), (0, True))  # type: ignore[union-attr]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.temp_files(), [])

    def test_bad_caps_rejected(self) -> None:
        """max_blksize and max_windowsize outside the RFC ranges are refused."""
        storage = DirectoryStorage(self.mktemp())
        self.assertRaises(
            ValueError, TFTPServerProtocol, storage=storage, reactor=Clock(), max_blksize=70000
        )
        self.assertRaises(
            ValueError, TFTPServerProtocol, storage=storage, reactor=Clock(), max_windowsize=0
        )


class DrainWhileDallyingTests(unittest.TestCase):
    """An upload stored during a drain, lingering for the dally, does not hold the drain."""

    def test_lingering_upload_counts_as_finished(self) -> None:
        from filexfer._drain import Drain, TFTPIntake

        h = Harness(self, timeout=1.0, retries=2)
        port = h.request(p.WriteRequest(b"up", "octet"))
        assert port is not None
        self.assertEqual(h.server.in_progress(), 1)
        drain = Drain(h.reactor, 30.0, [TFTPIntake(h.server)])
        done = drain.start()
        h.send(port, p.Data(1, b"end"))  # the last block: stored, then the dally
        self.assertEqual(h.take(port)[-1], p.Ack(1))
        self.assertFalse(port.closed)  # lingering
        self.assertEqual(h.server.in_progress(), 0)
        h.reactor.advance(0.1)  # the drain's next look
        self.assertIsNotNone(drain.report)
        assert drain.report is not None
        self.assertEqual((drain.report.finished, drain.report.cut), (1, 0))
        self.assertLess(drain.report.seconds, 1.0)
        self.assertEqual(self.successResultOf(done), drain.report)
        self.assertEqual(h.stored("up"), b"end")
