"""ReceiverProtocol against a StringTransport and a Clock: deterministic."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer._guard import AccessPolicy, ConnectionLimits
from filexfer._receipt import Receipt
from filexfer.storage import DirectoryStorage
from filexfer.tcp import _wire, receiver
from filexfer.tcp.receiver import PREFIX_WAIT, ReceiverFactory, ReceiverProtocol
from filexfer.testing import ManualRunner

from .helpers import payload, sha256_bytes, state_files, visible_files

MTIME_NS = 1_650_000_000_000_000_000


def put(path: str, **headers: Any) -> bytes:
    """An FX/1 handshake."""
    return _wire.encode_put(_wire.PutRequest(path, **headers))


class HalfClosingTransport(StringTransport):
    """A StringTransport that, like TCP, can close its write side alone."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class ReceiverTestCase(unittest.TestCase):
    factory_options: dict[str, Any] = {}

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.runner: ManualRunner | None = None
        self.storage = DirectoryStorage(self.root)
        self.clock = Clock()
        self.factory = self.make_factory()
        self.events: list[str] = []
        observer = lambda event: self.events.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def make_factory(self, **options: Any) -> ReceiverFactory:
        merged = {"handshake_timeout": 30.0, "idle_timeout": 300.0, **self.factory_options}
        merged.update(options)
        return ReceiverFactory(self.storage, clock=self.clock, **merged)

    def use_manual_runner(self) -> ManualRunner:
        self.runner = ManualRunner()
        self.storage.run_blocking = self.runner
        return self.runner

    def connect(
        self,
        host: str = "192.0.2.10",
        factory: ReceiverFactory | None = None,
        transport_class: type[StringTransport] = StringTransport,
    ) -> tuple[ReceiverProtocol, StringTransport]:
        factory = factory or self.factory
        protocol = factory.buildProtocol(None)
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        transport = transport_class(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def feed(self, protocol: ReceiverProtocol, data: bytes, bytewise: bool = True) -> None:
        if bytewise:
            for index in range(len(data)):
                protocol.dataReceived(data[index : index + 1])
        else:
            protocol.dataReceived(data)

    def close(self, protocol: ReceiverProtocol, clean: bool = True) -> None:
        """The peer closes: a FIN (half-close, then the connection goes) or a reset."""
        if clean:
            protocol.readConnectionLost()
            protocol.connectionLost(Failure(ConnectionDone()))
        else:
            protocol.connectionLost(Failure(ConnectionLost()))

    def read(self, path: str) -> bytes:
        with open(os.path.join(self.root, path), "rb") as handle:
            return handle.read()

    def assertRefusedWith(self, transport: StringTransport, code: int) -> None:
        value = transport.value()
        self.assertTrue(value.startswith(b"error %d " % code), value)
        self.assertTrue(value.endswith(b"\n"), value)
        self.assertEqual(value.count(b"\n"), 1, value)

    def done_line(self, data: bytes, path: str) -> bytes:
        return _wire.encode_done(len(data), sha256_bytes(data), path)


class SeedFormTests(ReceiverTestCase):
    def test_half_closeable(self) -> None:
        """The protocol provides IHalfCloseableProtocol (a FIN ends the stream)."""
        self.assertTrue(IHalfCloseableProtocol.providedBy(self.factory.buildProtocol(None)))

    def test_first_chunk_is_the_whole_name(self) -> None:
        """The first chunk is the name: C{ok} goes out at once (2 bytes, nothing else)."""
        protocol, transport = self.connect()
        self.feed(protocol, b"report.pdf", bytewise=False)
        self.assertEqual(transport.value(), b"ok")

    def test_later_chunks_are_data(self) -> None:
        """Bytes after the first chunk are file content (a name cannot span chunks by design)."""
        protocol, transport = self.connect()
        self.feed(protocol, b"rep", bytewise=False)
        self.feed(protocol, b"ort.pdf")
        self.close(protocol)
        self.assertEqual(self.read("rep"), b"ort.pdf")

    def test_stream_and_clean_close(self) -> None:
        """Name, C{ok}, bytes one at a time, FIN: the file is stored and nothing more is said."""
        data = payload(3000)
        protocol, transport = self.connect()
        self.feed(protocol, b"a.bin", bytewise=False)
        self.feed(protocol, data)
        self.assertEqual(visible_files(self.root), [])
        protocol.readConnectionLost()
        self.assertEqual(self.read("a.bin"), data)
        self.assertEqual(transport.value(), b"ok")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_newline_stripped(self) -> None:
        """One trailing newline (C{echo name | nc}) is not part of the name."""
        protocol, transport = self.connect()
        self.feed(protocol, b"n.txt\n", bytewise=False)
        self.feed(protocol, b"data")
        self.close(protocol)
        self.assertEqual(self.read("n.txt"), b"data")

    def test_reset_stores_nothing(self) -> None:
        """A reset mid-stream stores nothing and leaves no temporary file."""
        protocol, transport = self.connect()
        self.feed(protocol, b"a.bin", bytewise=False)
        self.feed(protocol, b"partial data")
        self.close(protocol, clean=False)
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_empty_file(self) -> None:
        """Name, C{ok}, then an immediate FIN stores an empty file."""
        protocol, transport = self.connect()
        self.feed(protocol, b"empty", bytewise=False)
        self.close(protocol)
        self.assertEqual(self.read("empty"), b"")

    def test_bad_name_refused(self) -> None:
        """A bad classic name gets C{error 400 ...} and the connection closes; nothing stored."""
        for name in [b"../x", b"a/b", b"..", b"\xff\xfe", b".filexfer"]:
            protocol, transport = self.connect()
            self.feed(protocol, name, bytewise=False)
            self.assertTrue(transport.value().startswith(b"error 40"), (name, transport.value()))
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(visible_files(self.root), [])

    def test_state_dir_name_forbidden(self) -> None:
        """The state directory's name as a classic name is refused with 403."""
        protocol, transport = self.connect()
        self.feed(protocol, b".filexfer", bytewise=False)
        self.assertRefusedWith(transport, 403)

    def test_rename_on_conflict(self) -> None:
        """A second classic upload of a name is stored under a new name."""
        for content in (b"one", b"two"):
            protocol, transport = self.connect()
            self.feed(protocol, b"same.txt", bytewise=False)
            self.feed(protocol, content)
            self.close(protocol)
        self.assertEqual(self.read("same.txt"), b"one")
        self.assertEqual(self.read("same (1).txt"), b"two")


class PrefixWaitTests(ReceiverTestCase):
    def test_f_waits_then_is_a_name(self) -> None:
        """A first chunk C{F} waits 0.5 s for more, then is taken as the classic name C{F}."""
        for name in (b"F", b"FX"):
            protocol, transport = self.connect()
            self.feed(protocol, name, bytewise=False)
            self.assertEqual(transport.value(), b"")
            self.clock.advance(PREFIX_WAIT - 0.01)
            self.assertEqual(transport.value(), b"")
            self.clock.advance(0.01)
            self.assertEqual(transport.value(), b"ok")
            self.feed(protocol, b"content")
            self.close(protocol)
            self.assertEqual(self.read(name.decode()), b"content")

    def test_prefix_then_more_is_extended(self) -> None:
        """C{F}, C{X} and the rest of an FX/1 handshake within the wait are one FX/1 request."""
        protocol, transport = self.connect()
        self.feed(protocol, put("x.txt", size=2))
        self.assertEqual(transport.value(), b"ok 0\n")
        self.clock.advance(PREFIX_WAIT * 4)
        self.feed(protocol, b"hi")
        self.assertEqual(transport.value(), b"ok 0\n" + self.done_line(b"hi", "x.txt"))

    def test_prefix_then_other_bytes_is_seed(self) -> None:
        """C{F} then C{oo} within the wait is the classic name C{Foo}."""
        protocol, transport = self.connect()
        self.feed(protocol, b"F", bytewise=False)
        self.feed(protocol, b"oo", bytewise=False)
        self.assertEqual(transport.value(), b"ok")
        self.clock.advance(PREFIX_WAIT)
        self.assertEqual(transport.value(), b"ok")
        self.feed(protocol, b"z")
        self.close(protocol)
        self.assertEqual(self.read("Foo"), b"z")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ExtendedFormTests(ReceiverTestCase):
    def test_header_byte_by_byte(self) -> None:
        """The FX/1 header block fed one byte at a time: silence, then exactly C{ok 0\\n}."""
        block = put("dir/a b.txt", size=3, mtime_ns=MTIME_NS)
        protocol, transport = self.connect()
        self.feed(protocol, block[:-1])
        self.assertEqual(transport.value(), b"")
        self.feed(protocol, block[-1:])
        self.assertEqual(transport.value(), b"ok 0\n")

    def test_crlf_header(self) -> None:
        """A header block with CRLF line ends is accepted."""
        protocol, transport = self.connect()
        self.feed(protocol, b"FX/1 PUT c.txt\r\nSize: 1\r\n\r\n")
        self.assertEqual(transport.value(), b"ok 0\n")

    def test_finalises_at_size_without_eof(self) -> None:
        """With Size the file is stored and C{done} sent at exactly Size bytes, no FIN needed."""
        data = payload(1000)
        protocol, transport = self.connect()
        self.feed(protocol, put("sized.bin", size=len(data)))
        self.feed(protocol, data[:-1])
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(transport.value(), b"ok 0\n")
        self.feed(protocol, data[-1:])
        self.assertEqual(transport.value(), b"ok 0\n" + self.done_line(data, "sized.bin"))
        self.assertEqual(self.read("sized.bin"), data)
        self.assertTrue(transport.disconnecting)

    def test_without_size_until_half_close(self) -> None:
        """Without Size the stream ends at the half-close; C{done} carries size, digest, path."""
        data = payload(5000, seed=3)
        protocol, transport = self.connect()
        self.feed(protocol, put("d/no size.bin"))
        self.feed(protocol, data, bytewise=False)
        self.assertEqual(transport.value(), b"ok 0\n")
        protocol.readConnectionLost()
        self.assertEqual(transport.value(), b"ok 0\n" + self.done_line(data, "d/no size.bin"))
        reply = _wire.parse_reply(transport.value().split(b"\n")[1])
        self.assertEqual(reply, Receipt(len(data), sha256_bytes(data), "d/no size.bin"))

    def test_done_only_after_durable(self) -> None:
        """C{done} is sent only once the file is in place (fsync and rename done)."""
        runner = self.use_manual_runner()
        protocol, transport = self.connect()
        self.feed(protocol, put("slow.bin", size=3))
        runner.run_all()  # begin() runs through the storage's runner too
        self.feed(protocol, b"abc")
        self.assertEqual(transport.value(), b"ok 0\n")
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(transport.producerState, "paused")
        runner.run_all()
        self.assertEqual(transport.value(), b"ok 0\n" + self.done_line(b"abc", "slow.bin"))
        self.assertEqual(self.read("slow.bin"), b"abc")

    def test_lost_while_finishing(self) -> None:
        """If the peer vanishes during the final fsync the file is still stored, once."""
        runner = self.use_manual_runner()
        protocol, transport = self.connect()
        self.feed(protocol, put("f.bin", size=3))
        runner.run_all()
        self.feed(protocol, b"abc")
        protocol.connectionLost(Failure(ConnectionLost()))
        runner.run_all()
        self.assertEqual(visible_files(self.root), ["f.bin"])
        self.assertEqual(self.factory.limits.open, 0)

    def test_empty_file(self) -> None:
        """Size 0: C{ok 0} and C{done} at once."""
        protocol, transport = self.connect()
        self.feed(protocol, put("zero", size=0))
        self.assertEqual(transport.value(), b"ok 0\n" + self.done_line(b"", "zero"))
        self.assertEqual(self.read("zero"), b"")

    def test_sha256_verified(self) -> None:
        """With SHA256 the bytes are verified: a match is stored, a mismatch is a 422."""
        protocol, transport = self.connect()
        self.feed(protocol, put("good", size=3, sha256=sha256_bytes(b"abc")))
        self.feed(protocol, b"abc")
        self.assertTrue(transport.value().endswith(self.done_line(b"abc", "good")))
        protocol, transport = self.connect()
        self.feed(protocol, put("bad", size=3, sha256=sha256_bytes(b"xyz")))
        self.feed(protocol, b"abc")
        self.assertTrue(transport.value().startswith(b"ok 0\nerror 422 "), transport.value())
        self.assertEqual(visible_files(self.root), ["good"])
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_data_before_ok(self) -> None:
        """Bytes right after the header block, before C{ok}, get C{error 400}; nothing stored."""
        protocol, transport = self.connect()
        self.feed(protocol, put("early", size=4) + b"data", bytewise=False)
        self.assertRefusedWith(transport, 400)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_more_than_size(self) -> None:
        """More bytes than Size: C{error 422}, nothing stored and nothing kept."""
        protocol, transport = self.connect()
        self.feed(protocol, put("over", size=3, mtime_ns=MTIME_NS))
        self.feed(protocol, b"abcd", bytewise=False)
        self.assertTrue(transport.value().startswith(b"ok 0\nerror 422 "), transport.value())
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_store_unavailable_mid_stream_keeps_partial(self) -> None:
        """Fresh-eyes finding on issue 11: a store that fails mid-upload (503: an object
        store answering InternalError, unreachable) is a passing trouble, so the bytes
        held so far stay resumable; nothing gets a final name."""
        protocol, transport = self.connect()
        self.feed(protocol, put("flaky", size=6, mtime_ns=MTIME_NS, trailer=True))
        self.feed(protocol, b"abc", bytewise=False)
        upload = protocol._accepted
        real_check = upload.check

        def unavailable(additional: int) -> None:
            real_check(additional)
            raise TransferError(503, "the object store is unreachable")

        upload.check = unavailable  # type: ignore[method-assign]
        self.feed(protocol, b"def", bytewise=False)
        self.assertIn(b"error 503 ", transport.value())
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(
            (state_files(self.root, "tmp"), len(state_files(self.root, "partial"))), ([], 1)
        )

    def test_refused_mid_stream_closes_after_linger(self) -> None:
        """After a mid-stream refusal: half-close, drain, and cut the peer off after LINGER."""
        protocol, transport = self.connect(transport_class=HalfClosingTransport)
        assert isinstance(transport, HalfClosingTransport)
        self.feed(protocol, put("over", size=1))
        self.feed(protocol, b"ab", bytewise=False)
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.disconnecting)
        self.feed(protocol, b"more bytes the peer had in flight")
        self.clock.advance(receiver.LINGER)
        self.assertTrue(transport.disconnecting)

    def test_eof_during_handshake_closes(self) -> None:
        """A peer that half-closes before finishing its handshake is closed at once."""
        protocol, transport = self.connect()
        self.feed(protocol, b"FX/1 PUT a.txt\nSize: 3\n", bytewise=False)
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(visible_files(self.root), [])

    def test_short_upload_after_eof_closes_at_once(self) -> None:
        """422 after the peer's FIN needs no drain: the connection closes without waiting."""
        protocol, transport = self.connect(transport_class=HalfClosingTransport)
        self.feed(protocol, put("short.bin", size=10))
        self.feed(protocol, b"abc", bytewise=False)
        protocol.readConnectionLost()
        self.assertIn(b"error 422 ", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_refused_then_peer_closes(self) -> None:
        """After a refusal and half-close, the peer's FIN closes the connection at once."""
        protocol, transport = self.connect(transport_class=HalfClosingTransport)
        assert isinstance(transport, HalfClosingTransport)
        self.feed(protocol, b"FX/1 PUT ../x\n\n", bytewise=False)
        self.assertTrue(transport.value().startswith(b"error 400 "))
        self.assertFalse(transport.disconnecting)
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_short_then_eof(self) -> None:
        """FIN before Size bytes: C{error 422}, the partial is kept and a retry resumes from it."""
        data = payload(100)
        protocol, transport = self.connect()
        self.feed(protocol, put("short.bin", size=100, mtime_ns=MTIME_NS, trailer=True))
        self.feed(protocol, data[:40], bytewise=False)
        protocol.readConnectionLost()
        ok = b"ok 0 %s\n" % sha256_bytes(b"").encode()
        self.assertTrue(transport.value().startswith(ok + b"error 422 "), transport.value())
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(
            (state_files(self.root, "tmp"), len(state_files(self.root, "partial"))), ([], 1)
        )
        protocol.connectionLost(Failure(ConnectionDone()))

        protocol, transport = self.connect()
        self.feed(protocol, put("short.bin", size=100, mtime_ns=MTIME_NS, trailer=True))
        ok = b"ok 40 %s\n" % sha256_bytes(data[:40]).encode()
        self.assertEqual(transport.value(), ok)
        self.feed(protocol, data[40:] + _wire.encode_trailer(sha256_bytes(data)), bytewise=False)
        self.assertEqual(transport.value(), ok + self.done_line(data, "short.bin"))
        self.assertEqual(self.read("short.bin"), data)

    def test_connection_lost_mid_stream(self) -> None:
        """A lost connection leaves nothing under the final name (a resumable partial is kept)."""
        protocol, transport = self.connect()
        self.feed(protocol, put("lost.bin", size=10, sha256=sha256_bytes(b"0123456789")))
        self.feed(protocol, b"01234")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(
            (state_files(self.root, "tmp"), len(state_files(self.root, "partial"))), ([], 1)
        )

        protocol, transport = self.connect()
        self.feed(protocol, put("plain.bin"))
        self.feed(protocol, b"01234")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_already_stored(self) -> None:
        """The exact file already stored: C{ok <size>} then C{done} at once, and close."""
        data = b"0123456789"
        digest = sha256_bytes(data)
        protocol, transport = self.connect()
        self.feed(protocol, put("same", size=10, sha256=digest))
        self.feed(protocol, data, bytewise=False)
        protocol.connectionLost(Failure(ConnectionDone()))
        protocol, transport = self.connect()
        self.feed(protocol, put("same", size=10, sha256=digest))
        self.assertEqual(transport.value(), b"ok 10\n" + self.done_line(data, "same"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(visible_files(self.root), ["same"])

    def test_storage_refusal(self) -> None:
        """A storage refusal is sent as C{error <code> <reason>} and the connection closes."""
        factory = ReceiverFactory(
            DirectoryStorage(self.root, "refuse", max_size=5), clock=self.clock
        )
        protocol, transport = self.connect(factory=factory)
        self.feed(protocol, put("big", size=6))
        self.assertRefusedWith(transport, 413)
        self.assertTrue(transport.disconnecting)

    def test_bad_handshakes(self) -> None:
        """Garbage handshakes get a 400 line and a close; the next client is served."""
        for garbage in [
            b"FX/2 PUT a\n\n",
            b"FX/1 GET a\n\n",
            b"FX/1 PUT ../x\n\n",
            b"FX/1 PUT a\nSize: x\n\n",
            b"FX/1 PUT a\nSize: 1\nSize: 1\n\n",
            b"FX/" + b"A" * 9000,
        ]:
            protocol, transport = self.connect()
            self.feed(protocol, garbage, bytewise=False)
            self.assertRefusedWith(transport, 400)
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(Failure(ConnectionDone()))
        protocol, transport = self.connect()
        self.feed(protocol, put("after", size=1) + b"")
        self.feed(protocol, b"!")
        self.assertEqual(self.read("after"), b"!")
        self.assertEqual(self.factory.limits.open, 1)

    def test_unexpected_storage_failure(self) -> None:
        """A storage bug becomes a 500 for that peer and is logged; the factory goes on."""

        class Broken:
            def begin(self, *args: object, **kwargs: object) -> None:
                raise RuntimeError("disk on fire")

        factory = ReceiverFactory(Broken(), clock=self.clock)  # type: ignore[arg-type]
        protocol, transport = self.connect(factory=factory)
        self.feed(protocol, put("a", size=1))
        self.assertRefusedWith(transport, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_log_line_per_transfer(self) -> None:
        """Each transfer logs one line with peer, path, bytes, seconds, rate and outcome."""
        protocol, transport = self.connect()
        self.feed(protocol, put("logged.txt", size=4))
        self.clock.advance(2)
        self.feed(protocol, b"abcd", bytewise=False)
        lines = [line for line in self.events if "logged.txt" in line]
        self.assertEqual(len(lines), 1, self.events)
        self.assertIn("fx/1 192.0.2.10:40000 'logged.txt' 4 bytes in 2.000s", lines[0])
        self.assertIn("MB/s", lines[0])
        self.assertIn("stored as 'logged.txt'", lines[0])


class HeaderNumberTests(ReceiverTestCase):
    """FX/1 header numbers are bounded and judged at the handshake (docs/protocol.md, "Numbers")."""

    def assertRefusedAtHandshake(self, block: bytes, bytewise: bool = False) -> None:
        protocol, transport = self.connect()
        self.feed(protocol, block, bytewise=bytewise)
        self.assertRefusedWith(transport, 400)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([e for e in self.events if "Traceback" in e or "Unhandled" in e], [])
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "partial") + state_files(self.root, "tmp"), [])

    def test_5000_digit_size(self) -> None:
        """A Size of 5,000 digits gets C{error 400}, and nothing is logged as a crash."""
        self.assertRefusedAtHandshake(b"FX/1 PUT a\nSize: " + b"9" * 5000 + b"\n\n")

    def test_5000_digit_mtime(self) -> None:
        """An Mtime of 5,000 digits gets C{error 400}, and nothing is logged as a crash."""
        for value in [b"9" * 5000, b"-" + b"9" * 5000, b"1." + b"9" * 5000]:
            self.assertRefusedAtHandshake(b"FX/1 PUT a\nSize: 1\nMtime: " + value + b"\n\n")

    def test_5000_digit_headers_byte_by_byte(self) -> None:
        """Fed a byte at a time, a 5,000-digit Size still ends in one C{error 400}."""
        self.assertRefusedAtHandshake(b"FX/1 PUT a\nSize: " + b"1" * 5000 + b"\n\n", True)

    def test_mtime_beyond_what_a_file_can_have(self) -> None:
        """Mtime 10**29 s (or year 5138) is refused with 400 before any of the body is taken."""
        for value in [b"1" + b"0" * 29, b"-1" + b"0" * 29, b"99999999999"]:
            self.assertRefusedAtHandshake(b"FX/1 PUT a\nSize: 3\nMtime: " + value + b"\n\n")

    def test_mtime_before_1970_applied(self) -> None:
        """Mtimes from 1965 and of -1 ns are accepted and set on the stored file."""
        for name, mtime_ns in [("1965", -157_766_399_750_000_000), ("minus-1ns", -1)]:
            protocol, transport = self.connect()
            self.feed(protocol, put(name, size=3, mtime_ns=mtime_ns))
            self.assertEqual(transport.value(), b"ok 0\n")
            self.feed(protocol, b"abc", bytewise=False)
            self.assertEqual(os.stat(os.path.join(self.root, name)).st_mtime_ns, mtime_ns)
            protocol.connectionLost(Failure(ConnectionDone()))


class TimeoutTests(ReceiverTestCase):
    factory_options = {"handshake_timeout": 10.0, "idle_timeout": 60.0}

    def test_handshake_timeout(self) -> None:
        """No complete handshake within the timeout: C{error 408} and close."""
        protocol, transport = self.connect()
        self.feed(protocol, b"FX/1 PUT slow")
        self.clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertRefusedWith(transport, 408)
        self.assertTrue(transport.disconnecting)

    def test_silent_peer_times_out(self) -> None:
        """A peer that sends nothing at all is dropped after the handshake timeout."""
        protocol, transport = self.connect()
        self.clock.advance(10)
        self.assertRefusedWith(transport, 408)

    def test_idle_timeout(self) -> None:
        """A stream that stalls for the idle timeout gets C{error 408}; the partial is kept."""
        protocol, transport = self.connect()
        self.feed(protocol, put("idle.bin", size=10, mtime_ns=MTIME_NS, trailer=True))
        self.feed(protocol, b"0123")
        self.clock.advance(59)
        self.feed(protocol, b"4")  # activity restarts the timer
        self.clock.advance(59)
        ok = b"ok 0 %s\n" % sha256_bytes(b"").encode()
        self.assertEqual(transport.value(), ok)
        self.clock.advance(1)
        self.assertTrue(transport.value().startswith(ok + b"error 408 "), transport.value())
        self.clock.advance(receiver.LINGER)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(visible_files(self.root), [])
        upload = self.successResultOf(
            self.storage.begin("idle.bin", 10, None, MTIME_NS, trailer=True)
        )
        self.assertEqual(upload.offset, 5)
        upload.abort(keep_partial=True)

    def test_classic_idle_timeout(self) -> None:
        """A stalled classic upload is dropped without a reply (it already had C{ok})."""
        protocol, transport = self.connect()
        self.feed(protocol, b"c.bin", bytewise=False)
        self.feed(protocol, b"abc")
        self.clock.advance(60)
        self.assertEqual(transport.value(), b"ok")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(visible_files(self.root), [])

    def test_no_timers_left(self) -> None:
        """A finished transfer leaves no delayed calls behind."""
        protocol, transport = self.connect()
        self.feed(protocol, put("t", size=1))
        self.feed(protocol, b"x")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TokenTests(ReceiverTestCase):
    factory_options = {"token": "s3cret"}

    def test_missing_token(self) -> None:
        """FX/1 without a token is refused with 401."""
        protocol, transport = self.connect()
        self.feed(protocol, put("a", size=1))
        self.assertRefusedWith(transport, 401)

    def test_bad_token(self) -> None:
        """A wrong token is refused with 401."""
        protocol, transport = self.connect()
        self.feed(protocol, put("a", size=1, token="guess"))
        self.assertRefusedWith(transport, 401)

    def test_classic_refused(self) -> None:
        """The classic form cannot carry a token: 401."""
        protocol, transport = self.connect()
        self.feed(protocol, b"a.txt", bytewise=False)
        self.assertRefusedWith(transport, 401)
        self.assertEqual(visible_files(self.root), [])

    def test_good_token(self) -> None:
        """The right token gets C{ok 0} and the file is stored."""
        protocol, transport = self.connect()
        self.feed(protocol, put("a", size=1, token="s3cret"))
        self.feed(protocol, b"x")
        self.assertTrue(transport.value().startswith(b"ok 0\ndone 1 "))
        self.assertEqual(self.read("a"), b"x")


class AdmissionTests(ReceiverTestCase):
    def test_access_policy(self) -> None:
        """A peer outside the allowed networks gets C{error 403} at once, before any byte."""
        factory = self.make_factory(access=AccessPolicy(["10.0.0.0/8", "::1/128"]))
        protocol, transport = self.connect("192.0.2.1", factory=factory)
        self.assertRefusedWith(transport, 403)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        for host in ("10.1.1.1", "::1", "::ffff:10.2.3.4"):
            protocol, transport = self.connect(host, factory=factory)
            self.feed(protocol, b"name", bytewise=False)
            self.assertEqual(transport.value(), b"ok", host)

    def test_connection_limits(self) -> None:
        """Past the limits peers get C{error 503}; counts return to zero after close."""
        limits = ConnectionLimits(max_connections=3, max_per_ip=2)
        factory = self.make_factory(limits=limits)
        first = self.connect("10.0.0.1", factory=factory)
        second = self.connect("10.0.0.1", factory=factory)
        third = self.connect("10.0.0.1", factory=factory)
        self.assertRefusedWith(third[1], 503)
        fourth = self.connect("10.0.0.2", factory=factory)
        fifth = self.connect("10.0.0.3", factory=factory)
        self.assertRefusedWith(fifth[1], 503)
        self.assertEqual(limits.open, 3)
        for protocol, _transport in (first, second, third, fourth, fifth):
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(limits.open, 0)
        protocol, transport = self.connect("10.0.0.1", factory=factory)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_many_transfers_from_one_address(self) -> None:
        """After 50 idle connections close, 100 concurrent uploads from that address all run."""
        limits = ConnectionLimits(max_connections=1000, max_per_ip=64)  # the server's defaults
        factory = self.make_factory(limits=limits)
        for _ in range(50):
            idle, _transport = self.connect("10.0.0.1", factory=factory)
            self.close(idle)
        self.assertEqual((limits.open, limits.handshaking("10.0.0.1")), (0, 0))
        uploads = []
        for index in range(100):
            protocol, transport = self.connect("10.0.0.1", factory=factory)
            self.feed(protocol, put(f"job-{index}.bin", size=4), bytewise=False)
            self.assertEqual(transport.value(), b"ok 0\n", index)
            uploads.append((protocol, transport))
        self.assertEqual((limits.open, limits.handshaking("10.0.0.1")), (100, 0))
        for index, (protocol, transport) in enumerate(uploads):
            self.feed(protocol, b"%04d" % index, bytewise=False)
            self.assertEqual(
                transport.value(), b"ok 0\n" + self.done_line(b"%04d" % index, f"job-{index}.bin")
            )
            self.close(protocol)
        self.assertEqual(len(visible_files(self.root)), 100)
        self.assertEqual((limits.open, limits.handshaking("10.0.0.1")), (0, 0))

    def test_slow_handshakes_still_capped(self) -> None:
        """Handshakes dripped a byte at a time from one address are capped, with a retry hint."""
        limits = ConnectionLimits(max_per_ip=3, retry_after=2)
        factory = self.make_factory(limits=limits)
        drips = [self.connect("10.0.0.1", factory=factory) for _ in range(3)]
        handshake = put("slow.bin", size=1)
        for protocol, _transport in drips:
            self.feed(protocol, handshake[:5])
        protocol, transport = self.connect("10.0.0.1", factory=factory)
        self.assertEqual(
            transport.value(), b"error 503 too many connections from your address; retry in 2 s\n"
        )
        self.close(protocol)
        other, other_transport = self.connect("10.0.0.2", factory=factory)
        self.feed(other, b"n.txt", bytewise=False)
        self.assertEqual(other_transport.value(), b"ok")
        # one dripper finishes its handshake: its address has a slot again
        self.feed(drips[0][0], handshake[5:])
        self.assertEqual(drips[0][1].value(), b"ok 0\n")
        protocol, transport = self.connect("10.0.0.1", factory=factory)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(limits.handshaking("10.0.0.1"), 3)
        self.assertEqual(limits.open, 5)

    def test_refused_and_finished_connections_count_out(self) -> None:
        """Every way a connection ends leaves the total and per-address counts at zero."""
        limits = ConnectionLimits(max_connections=100, max_per_ip=1)
        factory = self.make_factory(limits=limits, handshake_timeout=10.0, idle_timeout=60.0)
        host = "10.0.0.1"

        def ends(*steps: Any) -> None:
            protocol, transport = self.connect(host, factory=factory)
            for step in steps:
                if isinstance(step, bytes):
                    self.feed(protocol, step, bytewise=False)
                elif isinstance(step, float):
                    self.clock.advance(step)
                else:
                    step(protocol)
            self.close(protocol, clean=False)
            self.assertEqual((limits.open, limits.handshaking(host)), (0, 0), steps)

        ends()  # vanishes at once
        ends(b"FX/1 PUT half")  # vanishes mid-handshake
        ends(10.0)  # handshake timeout (408)
        ends(b"FX/1 PUT ../x\n\n")  # bad handshake (400)
        ends(put("t.bin", size=4), b"ab", 60.0)  # idle timeout after the handshake
        ends(put("t.bin", size=4), b"ab")  # vanishes mid-stream
        ends(put("s.bin", size=1), b"x")  # stored
        ends(put("s.bin", size=1, sha256=sha256_bytes(b"x")))  # already stored
        ends(b"c.bin", b"abc")  # classic, reset mid-stream
        blocker, _ = self.connect(host, factory=factory)
        refused, transport = self.connect(host, factory=factory)
        self.assertRefusedWith(transport, 503)
        self.close(refused, clean=False)
        self.assertEqual((limits.open, limits.handshaking(host)), (1, 1))
        self.close(blocker)
        self.assertEqual((limits.open, limits.handshaking(host)), (0, 0))
        denied = self.make_factory(limits=limits, access=AccessPolicy(["192.0.2.0/24"]))
        protocol, transport = self.connect(host, factory=denied)
        self.assertRefusedWith(transport, 403)
        self.close(protocol)
        self.assertEqual(limits.open, 0)

    def test_serves_others_after_bad_client(self) -> None:
        """A client that sends garbage and vanishes does not disturb one running alongside."""
        good, good_transport = self.connect("10.0.0.1")
        self.feed(good, put("good.bin", size=6))
        bad, bad_transport = self.connect("10.0.0.2")
        self.feed(bad, b"\x00\xff garbage\n", bytewise=False)
        bad.connectionLost(Failure(ConnectionLost()))
        self.feed(good, b"abcdef")
        self.assertEqual(self.read("good.bin"), b"abcdef")
        self.assertEqual(self.factory.limits.open, 1)

    def test_error_reason_is_one_line(self) -> None:
        """Refusal lines are single lines even when the reason had newlines."""
        self.assertEqual(
            _wire.encode_error(TransferError(400, "two\nlines")), b"error 400 two lines\n"
        )


class ClientEndingTests(ReceiverTestCase):
    """An upload the client ends early is logged in the client's terms, not as
    "refused: 4xx"; the reply on the wire stays what the protocol requires."""

    def outcome(self, name: str) -> str:
        lines = [line for line in self.events if repr(name) in line]
        self.assertEqual(len(lines), 1, self.events)
        return lines[0].rpartition("): ")[2]

    def fx1(self, name: str, data: bytes) -> tuple[ReceiverProtocol, StringTransport]:
        protocol, transport = self.connect(transport_class=HalfClosingTransport)
        self.feed(protocol, put(name, size=len(data), mtime_ns=MTIME_NS, trailer=True))
        return protocol, transport

    def test_half_close_before_size(self) -> None:
        """FIN after 40 of 100 bytes: C{error 422} on the wire, "client closed" in the log."""
        protocol, transport = self.fx1("short.bin", payload(100))
        self.feed(protocol, payload(100)[:40], bytewise=False)
        protocol.readConnectionLost()
        self.assertIn(b"error 422 short upload: 40 of 100 bytes arrived\n", transport.value())
        self.assertEqual(
            self.outcome("short.bin"), "client closed after 40 of 100 bytes (kept for resume)"
        )
        self.assertEqual(
            (state_files(self.root, "tmp"), len(state_files(self.root, "partial"))), ([], 1)
        )

    def test_half_close_before_the_trailer(self) -> None:
        """FIN after Size bytes but before the SHA256 line: C{error 422}, "client closed"."""
        data = payload(100)
        protocol, transport = self.fx1("notrailer.bin", data)
        self.feed(protocol, data, bytewise=False)
        protocol.readConnectionLost()
        self.assertIn(b"error 422 ", transport.value())
        self.assertEqual(
            self.outcome("notrailer.bin"),
            "client closed before the SHA256 trailer (kept for resume)",
        )

    def test_half_close_before_a_blake3_trailer(self) -> None:
        """Fresh-eyes finding on issue 16: with BLAKE3 negotiated the messages named
        the SHA256 trailer; they name the trailer the client owes."""
        data = payload(100)
        protocol, transport = self.connect(transport_class=HalfClosingTransport)
        self.feed(
            protocol,
            put("b3.bin", size=len(data), mtime_ns=MTIME_NS, trailer=True, digest="blake3"),
        )
        self.feed(protocol, data, bytewise=False)
        protocol.readConnectionLost()
        self.assertIn(
            b"error 422 the connection ended before the BLAKE3 trailer\n", transport.value()
        )
        self.assertEqual(
            self.outcome("b3.bin"), "client closed before the BLAKE3 trailer (kept for resume)"
        )

    def test_reset_mid_stream(self) -> None:
        """A reset after 40 bytes: "client aborted", the partial kept (FX/1) or not (classic)."""
        protocol, _ = self.fx1("reset.bin", payload(100))
        self.feed(protocol, payload(100)[:40], bytewise=False)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(
            self.outcome("reset.bin"), "client aborted after 40 of 100 bytes (kept for resume)"
        )

        protocol, _ = self.connect()
        self.feed(protocol, b"classic.bin\n", bytewise=False)
        self.feed(protocol, b"x" * 30, bytewise=False)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.outcome("classic.bin"), "client aborted after 30 bytes (discarded)")
        self.assertEqual(visible_files(self.root), [])

    def test_reset_before_the_trailer(self) -> None:
        data = payload(100)
        protocol, _ = self.fx1("gone.bin", data)
        self.feed(protocol, data, bytewise=False)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(
            self.outcome("gone.bin"), "client aborted before the SHA256 trailer (kept for resume)"
        )

    def test_server_refusals_still_say_refused(self) -> None:
        """Bytes beyond Size are the server refusing: "refused: 422" as before."""
        protocol, transport = self.connect(transport_class=HalfClosingTransport)
        self.feed(protocol, put("long.bin", size=10), bytewise=False)
        self.feed(protocol, b"y" * 11, bytewise=False)
        self.assertIn(b"error 422 ", transport.value())
        self.assertTrue(self.outcome("long.bin").startswith("refused: 422 "))


class ShutdownTests(ReceiverTestCase):
    def test_streaming_upload_cut(self) -> None:
        """The service stops mid-upload: one line, the partial kept, the connection dropped."""
        protocol, transport = self.connect()
        self.feed(protocol, put("cut.bin", size=100, mtime_ns=MTIME_NS, trailer=True))
        self.feed(protocol, payload(100)[:40], bytewise=False)
        idle, idle_transport = self.connect()  # in its handshake: nothing to say
        self.factory.shut_down()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(idle_transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        lines = [line for line in self.events if "'cut.bin'" in line]
        self.assertEqual(len(lines), 1, self.events)
        self.assertTrue(
            lines[0].endswith(": cut by shutdown after 40 of 100 bytes (kept for resume)"), lines
        )
        self.assertEqual(
            (state_files(self.root, "tmp"), len(state_files(self.root, "partial"))), ([], 1)
        )
        self.assertEqual(self.factory.live, {idle})
