"""SenderProtocol and send_file: against a StringTransport, and end to end in memory."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer

from filexfer.storage import DirectoryStorage, Receipt
from filexfer.tcp import _wire
from filexfer.tcp.receiver import ReceiverFactory
from filexfer.tcp.sender import CHUNK_SIZE, SenderProtocol, SendError, ServerRefused, send_file
from filexfer.testing import HalfCloseFakeTransport, InMemoryEndpoint

from .helpers import (
    payload,
    sha256_bytes,
    state_files,
    visible_files,
    write_file,
)

IDLE = 60.0


class SenderHarness:
    """A SenderProtocol over a StringTransport, with a record of its progress."""

    def __init__(self, data: bytes, request: _wire.ClassicRequest | _wire.PutRequest) -> None:
        self.data = data
        self.clock = Clock()
        self.progress: list[tuple[int, int]] = []
        self.protocol = SenderProtocol(
            io.BytesIO(data),
            len(data),
            request,
            lambda done, total: self.progress.append((done, total)),
            self.clock,
            IDLE,
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.results: list[Any] = []
        self.protocol.result.addBoth(self.results.append)

    def take(self) -> bytes:
        """What the sender wrote since the last call."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def reply(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def pull_all(self, drain: bool = True) -> list[int]:
        """Pull chunks as a consumer would until the producer unregisters."""
        sizes = []
        for _ in range(10_000):
            producer = self.transport.producer
            if producer is None:
                break
            before = len(self.transport.value())
            producer.resumeProducing()
            sizes.append(len(self.transport.value()) - before)
            if drain:
                self.sent.append(self.take())
        return sizes

    sent: list[bytes]


class _EagerPullTransport(StringTransport):
    """Like a real TCP transport: registering a pull producer pulls once at once."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        if not streaming:
            producer.resumeProducing()


def harness(data: bytes, plain: bool = False, **headers: Any) -> SenderHarness:
    request: _wire.ClassicRequest | _wire.PutRequest
    if plain:
        request = _wire.ClassicRequest("file.bin")
    else:
        request = _wire.PutRequest("file.bin", len(data), **headers)
    result = SenderHarness(data, request)
    result.sent = []
    return result


class HandshakeTests(unittest.TestCase):
    def test_fx1_handshake_bytes(self) -> None:
        """The FX/1 handshake is exactly the encoded PUT, and nothing else before C{ok}."""
        h = harness(b"abc", mtime_ns=1_500_000_000, token="t")
        self.assertEqual(h.take(), b"FX/1 PUT file.bin\nSize: 3\nMtime: 1.5\nToken: t\n\n")
        self.assertIsNone(h.transport.producer)

    def test_nagle_off(self) -> None:
        """Fresh-eyes finding on issue 16: the trailer waited ~40 ms for the server's
        delayed ACK (Nagle), so each small file took ~50 ms; TCP_NODELAY is set."""
        calls: list[bool] = []
        transport = StringTransport()
        transport.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
        protocol = SenderProtocol(
            io.BytesIO(b"abc"), 3, _wire.PutRequest("f", 3), None, Clock(), IDLE
        )
        protocol.makeConnection(transport)
        self.assertEqual(calls, [True])
        harness(b"abc")  # a transport without TCP options (UNIX, in memory) is left as it is

    def test_plain_handshake_bytes(self) -> None:
        """The classic handshake is the bare name: no terminator."""
        h = harness(b"abc", plain=True)
        self.assertEqual(h.take(), b"file.bin")

    def test_nothing_sent_before_ok(self) -> None:
        """No file bytes leave before the server's C{ok}."""
        h = harness(b"abc")
        h.take()
        h.reply(b"o")
        self.assertEqual(h.take(), b"")
        self.assertIsNone(h.transport.producer)


class StreamingTests(unittest.TestCase):
    def test_fx1_stream_and_receipt(self) -> None:
        """After C{ok 0} the file is pulled chunk by chunk; a matching C{done} is the receipt."""
        data = payload(CHUNK_SIZE * 2 + 100)
        h = harness(data)
        h.take()
        h.reply(b"ok 0\n")
        self.assertEqual(h.take(), b"")  # a pull producer: nothing until pulled
        sizes = h.pull_all()
        self.assertEqual(b"".join(h.sent), data)
        self.assertEqual(sizes, [CHUNK_SIZE, CHUNK_SIZE, 100])
        self.assertEqual(h.results, [])
        h.reply(_wire.encode_done(len(data), sha256_bytes(data), "dir/file.bin"))
        self.assertEqual(h.results, [Receipt(len(data), sha256_bytes(data), "dir/file.bin")])
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.progress[0], (0, len(data)))
        self.assertEqual(h.progress[-1], (len(data), len(data)))

    def test_producer_released_after_first_pull(self) -> None:
        """A transport that pulls at registration (as TCP does) gets the producer unregistered."""
        h = harness(b"abc")
        transport = _EagerPullTransport()
        h.protocol.makeConnection(transport)
        h.transport = transport
        h.reply(b"ok 0\n")
        self.assertTrue(transport.value().endswith(b"\n\nabc"))
        self.assertIsNone(transport.producer)

    def test_memory_bounded(self) -> None:
        """One pull writes at most one chunk: the buffer never holds more than one chunk."""
        data = payload(CHUNK_SIZE * 5 + 1)
        h = harness(data)
        h.take()
        h.reply(b"ok 0\n")
        sizes = h.pull_all(drain=False)
        self.assertTrue(all(size <= CHUNK_SIZE for size in sizes), sizes)
        self.assertEqual(len(sizes), 6)
        self.assertEqual(h.transport.value(), data)

    def test_resume_from_offset(self) -> None:
        """From C{ok N} only bytes N.. are sent; the skipped prefix is hashed locally."""
        data = payload(10_000, seed=5)
        h = harness(data, mtime_ns=1)
        h.take()
        h.reply(b"ok 4000\n")
        h.pull_all()
        self.assertEqual(b"".join(h.sent), data[4000:])
        self.assertEqual(h.progress[0], (4000, len(data)))
        h.reply(_wire.encode_done(len(data), sha256_bytes(data), "file.bin"))
        self.assertEqual(h.results, [Receipt(len(data), sha256_bytes(data), "file.bin")])

    def test_already_stored(self) -> None:
        """C{ok <size>} then C{done} at once: nothing is sent, the receipt is verified."""
        data = b"0123456789"
        h = harness(data, mtime_ns=1)
        h.take()
        h.reply(b"ok 10\n" + _wire.encode_done(10, sha256_bytes(data), "file.bin"))
        self.assertEqual(h.results, [Receipt(10, sha256_bytes(data), "file.bin")])
        self.assertEqual(h.take(), b"")

    def test_empty_file(self) -> None:
        """A 0-byte file: C{ok 0}, no data, C{done} with the empty digest."""
        h = harness(b"")
        h.take()
        h.reply(b"ok 0\n")
        h.reply(_wire.encode_done(0, sha256_bytes(b""), "file.bin"))
        self.assertEqual(h.results, [Receipt(0, sha256_bytes(b""), "file.bin")])

    def test_digest_mismatch(self) -> None:
        """A C{done} whose digest or size differs from the file's is a SendError."""
        for done in [
            _wire.encode_done(3, sha256_bytes(b"xyz"), "file.bin"),
            _wire.encode_done(4, sha256_bytes(b"abc"), "file.bin"),
        ]:
            h = harness(b"abc")
            h.reply(b"ok 0\n")
            h.pull_all()
            h.reply(done)
            (failure,) = h.results
            self.assertIsInstance(failure, Failure)
            self.assertIs(type(failure.value), SendError)
            self.assertIn("hashing to", str(failure.value))

    def test_offset_beyond_file(self) -> None:
        """An offered offset past the end of the file is a SendError."""
        h = harness(b"abc")
        h.reply(b"ok 4\n")
        self.assertIs(type(h.results[0].value), SendError)

    def test_unexpected_reply(self) -> None:
        """A reply that is not part of the protocol is a SendError."""
        for reply in [b"hello\n", b"done 3 %s x\n" % sha256_bytes(b"abc").encode()]:
            h = harness(b"abc")
            h.reply(reply)
            self.assertIs(type(h.results[0].value), SendError, reply)
            self.assertTrue(h.transport.disconnecting)

    def test_overlong_reply(self) -> None:
        """A server that sends endless bytes without a newline is cut off."""
        h = harness(b"abc")
        h.reply(b"x" * (_wire.MAX_HEADER_BLOCK + 1))
        self.assertIs(type(h.results[0].value), SendError)


class RefusalTests(unittest.TestCase):
    def test_error_before_ok(self) -> None:
        """C{error <code> <reason>} instead of C{ok} is a ServerRefused with that code."""
        h = harness(b"abc")
        h.reply(b"error 409 file.bin already exists\n")
        (failure,) = h.results
        self.assertIsInstance(failure.value, ServerRefused)
        self.assertEqual(
            (failure.value.code, failure.value.reason), (409, "file.bin already exists")
        )
        self.assertEqual(str(failure.value), "server refused: 409 file.bin already exists")
        self.assertTrue(h.transport.disconnecting)

    def test_error_after_stream(self) -> None:
        """An C{error} after the bytes (e.g. 422) is a ServerRefused."""
        h = harness(b"abc")
        h.reply(b"ok 0\n")
        h.pull_all()
        h.reply(b"error 422 SHA256 mismatch\n")
        self.assertEqual(h.results[0].value.code, 422)

    def test_error_without_newline_then_close(self) -> None:
        """An C{error} line cut short by the close is still reported as ServerRefused."""
        h = harness(b"abc")
        h.reply(b"error 503 busy")
        h.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.results[0].value.code, 503)

    def test_plain_error(self) -> None:
        """A classic sender understands an C{error} line instead of C{ok}."""
        h = harness(b"abc", plain=True)
        h.reply(b"error 401 this server requires a token: use the FX/1 form\n")
        self.assertEqual(h.results[0].value.code, 401)


class ConnectionLossTests(unittest.TestCase):
    def test_lost_before_done(self) -> None:
        """The connection closing after the bytes but before C{done} is a SendError."""
        h = harness(b"abc")
        h.reply(b"ok 0\n")
        h.pull_all()
        h.protocol.connectionLost(Failure(ConnectionDone()))
        (failure,) = h.results
        self.assertIs(type(failure.value), SendError)
        self.assertIn(
            "the server closed the connection before confirming the upload", str(failure.value)
        )

    def test_lost_during_handshake(self) -> None:
        """The connection closing before C{ok} is a SendError."""
        h = harness(b"abc")
        h.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertIn("during the handshake", str(h.results[0].value))

    def test_plain_clean_close_is_success(self) -> None:
        """Classic form: C{ok}, all bytes, our own clean close: a receipt of what was sent."""
        data = payload(CHUNK_SIZE + 1)
        h = harness(data, plain=True)
        h.take()
        h.reply(b"o")
        h.reply(b"k")
        h.pull_all()
        self.assertEqual(b"".join(h.sent), data)
        self.assertTrue(h.transport.disconnecting)
        h.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.results, [Receipt(len(data), sha256_bytes(data), "file.bin")])

    def test_plain_empty_file(self) -> None:
        """Classic form with a 0-byte file: C{ok}, then a clean close."""
        h = harness(b"", plain=True)
        h.reply(b"ok")
        self.assertTrue(h.transport.disconnecting)
        h.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.results, [Receipt(0, sha256_bytes(b""), "file.bin")])

    def test_plain_reset_is_failure(self) -> None:
        """Classic form: a reset after the bytes is not a success."""
        h = harness(b"abc", plain=True)
        h.reply(b"ok")
        h.pull_all()
        h.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertIs(type(h.results[0].value), SendError)

    def test_idle_timeout(self) -> None:
        """No reply within the idle timeout: SendError and the connection is dropped."""
        h = harness(b"abc")
        h.clock.advance(IDLE - 1)
        self.assertEqual(h.results, [])
        h.reply(b"o")  # any byte from the server is progress
        h.clock.advance(IDLE - 1)
        self.assertEqual(h.results, [])
        h.clock.advance(1)
        self.assertIs(type(h.results[0].value), SendError)
        self.assertIn("no progress", str(h.results[0].value))
        self.assertTrue(h.transport.disconnecting)
        h.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(h.results), 1)

    def test_no_timer_left(self) -> None:
        """After the receipt and close no delayed call remains."""
        h = harness(b"abc")
        h.reply(b"ok 0\n")
        h.pull_all()
        h.reply(_wire.encode_done(3, sha256_bytes(b"abc"), "file.bin"))
        h.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.clock.getDelayedCalls(), [])


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """Connects the client protocol to a StringTransport, to read what it sends."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Protocol | None = None

    def connect(self, factory: Factory) -> Deferred[Protocol]:
        self.protocol = factory.buildProtocol(iosim.FakeAddress())
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class DigestArgumentTests(unittest.TestCase):
    def test_unknown_digest_is_a_value_error(self) -> None:
        """Fresh-eyes finding on issue 16: send_file(digest="md5") quietly got a SHA-256
        receipt and digest="BLAKE3" failed as a request that "would not read back";
        both are a ValueError naming the choices, before anything connects."""
        path = write_file(os.path.join(os.path.abspath(self.mktemp()), "f.bin"), b"abc")
        endpoint = StringEndpoint()
        for bad in ("md5", "BLAKE3", ""):
            error = self.assertRaises(
                ValueError,
                send_file,
                Clock(),
                endpoint,
                path,
                digest=bad,  # type: ignore[arg-type]
            )
            self.assertIn("'sha256', 'blake3'", str(error))
        self.assertIsNone(endpoint.protocol)


class MtimeHeaderTests(unittest.TestCase):
    """send_file announces the file's own modification time, before 1970 too."""

    def handshake_for(self, mtime_ns: int) -> bytes:
        path = write_file(os.path.join(os.path.abspath(self.mktemp()), "f.bin"), b"abc")
        os.utime(path, ns=(mtime_ns, mtime_ns))
        endpoint = StringEndpoint()
        result = send_file(Clock(), endpoint, path)
        handshake = endpoint.transport.value()
        assert endpoint.protocol is not None
        endpoint.protocol.dataReceived(b"error 400 enough\n")
        endpoint.protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(result, ServerRefused)
        return handshake

    def test_mtime_in_1965(self) -> None:
        """A file dated 1965-01-01T00:00:00.25Z is announced as C{Mtime: -157766399.75}."""
        handshake = self.handshake_for(-157_766_399_750_000_000)
        self.assertIn(b"\nMtime: -157766399.75\n", handshake)

    def test_mtime_one_nanosecond_before_the_epoch(self) -> None:
        """A file dated 1969-12-31T23:59:59.999999999Z is announced as C{Mtime: -0.000000001}."""
        self.assertIn(b"\nMtime: -0.000000001\n", self.handshake_for(-1))

    def test_mtime_no_server_accepts_left_out(self) -> None:
        """A file dated after 2262-04-11 (beyond int64 ns) is sent without an Mtime header."""
        beyond = 2**63 - 1 + 10**9
        probe = write_file(os.path.join(os.path.abspath(self.mktemp()), "probe"), b"")
        os.utime(probe, ns=(beyond, beyond))
        if os.stat(probe).st_mtime_ns != beyond:
            raise unittest.SkipTest("this file system cannot hold a time after 2262")
        handshake = self.handshake_for(beyond)
        self.assertNotIn(b"Mtime", handshake)
        self.assertTrue(handshake.startswith(b"FX/1 PUT f.bin\nSize: 3\n"))


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    def connect(self, factory: Factory) -> Deferred[Protocol]:
        return fail(ConnectionRefusedError())


class EndToEndTests(unittest.TestCase):
    """SenderProtocol against ReceiverProtocol, in memory (iosim)."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.storage = DirectoryStorage(self.root)
        self.factory = ReceiverFactory(self.storage, clock=self.clock)
        self.endpoint = InMemoryEndpoint(self.factory, self.clock)
        self.local = os.path.abspath(self.mktemp())
        os.makedirs(self.local)

    def send(self, data: bytes, name: str = "f.bin", **kwargs: Any) -> Any:
        path = write_file(os.path.join(self.local, "source.bin"), data)
        result = send_file(self.clock, self.endpoint, path, name=name, **kwargs)
        self.endpoint.pumps[-1].flush()
        return result

    def stored(self, path: str) -> bytes:
        with open(os.path.join(self.root, path), "rb") as handle:
            return handle.read()

    def test_sizes(self) -> None:
        """FX/1 and classic: 0-byte, 1-byte and multi-chunk files arrive intact."""
        for size in (0, 1, CHUNK_SIZE * 3 + 17):
            data = payload(size, seed=size)
            for plain in (False, True):
                name = f"{'plain' if plain else 'fx'}-{size}"
                receipt = self.successResultOf(self.send(data, name, plain=plain))
                self.assertEqual(receipt, Receipt(size, sha256_bytes(data), name))
                self.assertEqual(self.stored(name), data)
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_subdirectory_and_default_name(self) -> None:
        """The remote path may have directories; without a name the basename is used."""
        receipt = self.successResultOf(self.send(b"abc", "a/b/c.txt"))
        self.assertEqual(receipt.path, "a/b/c.txt")
        path = write_file(os.path.join(self.local, "own name.txt"), b"x")
        result = send_file(self.clock, self.endpoint, path)
        self.endpoint.pumps[-1].flush()
        self.assertEqual(self.successResultOf(result).path, "own name.txt")

    def test_idempotent_resend(self) -> None:
        """Re-sending the same file (same Size and Mtime) stores nothing new."""
        data = payload(1000)
        path = write_file(os.path.join(self.local, "same.bin"), data)
        progress: list[tuple[int, int]] = []
        for _ in range(2):
            result = send_file(
                self.clock, self.endpoint, path, progress=lambda d, t: progress.append((d, t))
            )
            self.endpoint.pumps[-1].flush()
            self.assertEqual(self.successResultOf(result).path, "same.bin")
        self.assertEqual(visible_files(self.root), ["same.bin"])
        self.assertEqual(progress[-1], (1000, 1000))

    def test_mtime_before_1970_kept(self) -> None:
        """Files dated 1965 and -1 ns arrive end to end, stored with their own times."""
        for name, mtime_ns in [("1965.bin", -157_766_399_750_000_000), ("minus.bin", -1)]:
            path = write_file(os.path.join(self.local, name), b"old")
            os.utime(path, ns=(mtime_ns, mtime_ns))
            result = send_file(self.clock, self.endpoint, path)
            self.endpoint.pumps[-1].flush()
            self.assertEqual(self.successResultOf(result).path, name)
            self.assertEqual(os.stat(os.path.join(self.root, name)).st_mtime_ns, mtime_ns)

    def test_rename_reported(self) -> None:
        """A different file under an existing name is stored renamed and the receipt says so."""
        self.successResultOf(self.send(b"first", "x.txt"))
        self.assertEqual(self.successResultOf(self.send(b"second", "x.txt")).path, "x (1).txt")

    def test_refusal(self) -> None:
        """A refusal reaches the caller as ServerRefused with the code."""
        self.storage = DirectoryStorage(self.root, on_conflict="refuse")
        self.factory = ReceiverFactory(self.storage, clock=self.clock)
        self.endpoint = InMemoryEndpoint(self.factory, self.clock)
        self.successResultOf(self.send(b"abc", "x"))
        failure = self.failureResultOf(self.send(b"abcd", "x"), ServerRefused)
        self.assertEqual(failure.value.code, 409)

    def test_token(self) -> None:
        """The token is carried to a server that requires it."""
        self.factory.token = "tok"
        self.assertEqual(self.failureResultOf(self.send(b"a", "t1"), ServerRefused).value.code, 401)
        self.assertEqual(self.successResultOf(self.send(b"a", "t2", token="tok")).path, "t2")

    def test_resume_after_interruption(self) -> None:
        """An upload cut off mid-stream resumes from a non-zero offset and ends intact."""
        data = payload(CHUNK_SIZE * 4 + 3, seed=9)
        path = write_file(os.path.join(self.local, "big.bin"), data)
        first = send_file(self.clock, self.endpoint, path)
        pump = self.endpoint.pumps[-1]
        partial_dir = os.path.join(self.root, ".filexfer", "partial")

        def partial_size() -> int:
            names = os.listdir(partial_dir)
            return os.path.getsize(os.path.join(partial_dir, names[0])) if names else 0

        for _ in range(20):
            pump.pump()
            if partial_size() >= CHUNK_SIZE:
                break
        self.assertGreaterEqual(partial_size(), CHUNK_SIZE)
        self.assertLess(partial_size(), len(data))
        client_transport: HalfCloseFakeTransport = pump.clientIO
        server_transport: HalfCloseFakeTransport = pump.serverIO
        client_transport.unregisterProducer()
        client_transport.stream = []  # bytes still in flight are lost with the connection
        client_transport.loseConnection()
        server_transport.disconnectReason = ConnectionLost("reset")
        pump.flush()
        self.failureResultOf(first, SendError)
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(len(state_files(self.root, "partial")), 1)

        progress: list[tuple[int, int]] = []
        second = send_file(
            self.clock, self.endpoint, path, progress=lambda d, t: progress.append((d, t))
        )
        self.endpoint.pumps[-1].flush()
        receipt = self.successResultOf(second)
        self.assertEqual(receipt, Receipt(len(data), hashlib.sha256(data).hexdigest(), "big.bin"))
        self.assertGreater(progress[0][0], 0)
        self.assertEqual(self.stored("big.bin"), data)
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_missing_file(self) -> None:
        """send_file of a missing path fails with a SendError naming it."""
        failure = self.failureResultOf(
            send_file(self.clock, self.endpoint, os.path.join(self.local, "nope")), SendError
        )
        self.assertIn("nope", str(failure.value))

    def test_connection_refused(self) -> None:
        """A refused connection fails the Deferred with the connection error."""
        path = write_file(os.path.join(self.local, "a"), b"a")
        self.failureResultOf(
            send_file(self.clock, RefusingEndpoint(), path), ConnectionRefusedError
        )
