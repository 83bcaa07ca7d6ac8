"""Integrity at the edges (docs/protocol.md, I1-I4): a final name holds the sender's bytes.

Each test is one input from the integrity issue, or another input of the
same kind: a resumed prefix or an "already stored" answer that is not the
sender's file as it is now, a digest handed to a client that never
presented it, duplicate copies of one content, and limits that trusted
what the client announced.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer.storage import DirectoryStorage, Receipt
from filexfer.tcp import _wire
from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol
from filexfer.tcp.sender import send_file
from filexfer.testing import InMemoryEndpoint

from .helpers import sha256_bytes, state_files, visible_files, write_file
from .test_receiver import HalfClosingTransport

MTIME_NS = 1_700_000_000_123_456_789
A = b"A" * 100_000
B = b"B" * 100_000


class IntegrityTestCase(unittest.TestCase):
    """A receiver on a DirectoryStorage, reached in memory by send_file or by hand."""

    on_conflict = "rename"

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.local = os.path.abspath(self.mktemp())
        os.makedirs(self.local)
        self.clock = Clock()
        self.storage = DirectoryStorage(self.root, self.on_conflict)  # type: ignore[arg-type]
        self.factory = ReceiverFactory(self.storage, clock=self.clock)
        self.endpoint = InMemoryEndpoint(self.factory, self.clock)

    def local_file(self, name: str, data: bytes, mtime_ns: int = MTIME_NS) -> str:
        """Write C{data} to a local file whose mtime is C{mtime_ns} (as C{cp -p} leaves it)."""
        path = write_file(os.path.join(self.local, name), data)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        return path

    def send(self, path: str, name: str | None = None) -> Any:
        """send_file in memory, run to the end; the Deferred's result."""
        result = send_file(self.clock, self.endpoint, path, name=name)
        for _ in range(5):  # a fresh attempt after a refused resume is another connection
            for pump in self.endpoint.pumps:
                pump.flush()
            if result.called:
                break
        return result

    def stored(self, path: str) -> bytes:
        with open(os.path.join(self.root, path), "rb") as handle:
            return handle.read()

    def connect(self) -> tuple[ReceiverProtocol, StringTransport]:
        """A raw connection to the receiver, for clients written by hand."""
        from twisted.internet.address import IPv4Address

        protocol = self.factory.buildProtocol(None)
        transport = HalfClosingTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 4000))
        protocol.makeConnection(transport)
        return protocol, transport

    def cut_upload(self, name: str, data: bytes, cut: int, **headers: Any) -> None:
        """An FX/1 upload of C{data} reset after C{cut} bytes."""
        protocol, transport = self.connect()
        request = _wire.PutRequest(name, len(data), None, MTIME_NS, **headers)
        protocol.dataReceived(_wire.encode_put(request))
        protocol.dataReceived(data[:cut])
        protocol.connectionLost(Failure(ConnectionLost("reset")))


class ResumeOfChangedFileTests(IntegrityTestCase):
    def test_rewritten_with_restored_mtime(self) -> None:
        """Cut after 40,000 bytes of As, file rewritten as Bs with its mtime restored: all Bs."""
        self.cut_upload("data.bin", A, 40_000, trailer=True)
        self.assertEqual(len(state_files(self.root, "partial")), 1)
        path = self.local_file("data.bin", B)
        for _ in range(2):
            receipt = self.successResultOf(self.send(path))
            self.assertEqual(receipt, Receipt(len(B), sha256_bytes(B), "data.bin"))
            self.assertEqual(self.stored("data.bin"), B)
        self.assertEqual(visible_files(self.root), ["data.bin"])
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_stale_prefix_offered_with_its_digest(self) -> None:
        """The server's C{ok} carries the SHA-256 of the held prefix, for the client to check."""
        self.cut_upload("data.bin", A, 40_000, trailer=True)
        protocol, transport = self.connect()
        protocol.dataReceived(
            _wire.encode_put(_wire.PutRequest("data.bin", len(B), None, MTIME_NS, trailer=True))
        )
        self.assertEqual(transport.value(), b"ok 40000 %s\n" % sha256_bytes(A[:40_000]).encode())
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_stale_prefix_never_placed_by_trailer(self) -> None:
        """A client that ignores the prefix digest: its trailer refuses the mixed file (422)."""
        self.cut_upload("data.bin", A, 40_000, trailer=True)
        protocol, transport = self.connect()
        protocol.dataReceived(
            _wire.encode_put(_wire.PutRequest("data.bin", len(B), None, MTIME_NS, trailer=True))
        )
        protocol.dataReceived(B[40_000:] + _wire.encode_trailer(sha256_bytes(B)))
        self.assertIn(b"\nerror 422 ", transport.value())
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "partial"), [])  # never offered again

    def test_older_client_not_resumed_by_mtime(self) -> None:
        """An older FX/1 client (Size and Mtime, no trailer) starts at 0, stored intact (I3)."""
        self.cut_upload("data.bin", A, 40_000)
        protocol, transport = self.connect()
        protocol.dataReceived(
            _wire.encode_put(_wire.PutRequest("data.bin", len(B), None, MTIME_NS))
        )
        protocol.dataReceived(B)
        self.assertEqual(
            transport.value(), b"ok 0\n" + _wire.encode_done(len(B), sha256_bytes(B), "data.bin")
        )
        self.assertEqual(self.stored("data.bin"), B)

    def test_full_partial_still_proved(self) -> None:
        """A partial that holds every byte is finished only by a matching trailer."""
        protocol, transport = self.connect()
        request = _wire.PutRequest("whole.bin", len(A), None, MTIME_NS, trailer=True)
        protocol.dataReceived(_wire.encode_put(request))
        protocol.dataReceived(A)
        protocol.connectionLost(Failure(ConnectionLost("reset")))  # before the trailer
        path = self.local_file("whole.bin", B)
        receipt = self.successResultOf(self.send(path))
        self.assertEqual((receipt.sha256, self.stored(receipt.path)), (sha256_bytes(B), B))


class SameSizeSameSecondTests(IntegrityTestCase):
    def test_rewritten_within_the_second(self) -> None:
        """4 bytes, rewritten with 4 others in the same second: the new bytes are stored."""
        path = self.local_file("f.txt", b"1234")
        self.assertEqual(self.successResultOf(self.send(path)).path, "f.txt")
        path = self.local_file("f.txt", b"abcd", MTIME_NS + 1)
        receipt = self.successResultOf(self.send(path))
        self.assertEqual(receipt, Receipt(4, sha256_bytes(b"abcd"), "f (1).txt"))
        self.assertEqual((self.stored("f.txt"), self.stored("f (1).txt")), (b"1234", b"abcd"))
        again = self.successResultOf(self.send(path))
        self.assertEqual(again.path, "f (1).txt")
        self.assertEqual(visible_files(self.root), ["f (1).txt", "f.txt"])

    def test_rewritten_within_the_second_overwrite(self) -> None:
        """Under the overwrite policy the same rewrite replaces the file."""
        self.storage.on_conflict = "overwrite"
        path = self.local_file("f.txt", b"1234")
        self.successResultOf(self.send(path))
        path = self.local_file("f.txt", b"abcd")
        self.assertEqual(self.successResultOf(self.send(path)).sha256, sha256_bytes(b"abcd"))
        self.assertEqual(self.stored("f.txt"), b"abcd")


class NoDigestDisclosedTests(IntegrityTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.secret = b"secret contents"
        self.successResultOf(self.send(self.local_file("s.txt", self.secret)))
        self.digest = sha256_bytes(self.secret).encode()

    def test_size_and_mtime_guess(self) -> None:
        """A client guessing Size and Mtime (older form) gets no digest: it must send the bytes."""
        protocol, transport = self.connect()
        request = _wire.PutRequest("s.txt", len(self.secret), None, MTIME_NS)
        protocol.dataReceived(_wire.encode_put(request))
        self.assertEqual(transport.value(), b"ok 0\n")
        protocol.readConnectionLost()
        self.assertNotIn(self.digest, transport.value())

    def test_size_and_mtime_guess_with_trailer(self) -> None:
        """With a trailer, a guess is answered C{ok <size> -}; a wrong digest learns nothing."""
        protocol, transport = self.connect()
        request = _wire.PutRequest("s.txt", len(self.secret), None, MTIME_NS, trailer=True)
        protocol.dataReceived(_wire.encode_put(request))
        self.assertEqual(transport.value(), b"ok %d -\n" % len(self.secret))
        protocol.dataReceived(_wire.encode_trailer(sha256_bytes(b"a guess")))
        self.assertTrue(transport.value().startswith(b"ok 15 -\nerror 422 "), transport.value())
        self.assertNotIn(self.digest, transport.value())

    def test_candidate_proved_by_trailer(self) -> None:
        """The right digest in the trailer gets C{done} at once, with no bytes sent."""
        protocol, transport = self.connect()
        request = _wire.PutRequest("s.txt", len(self.secret), None, MTIME_NS, trailer=True)
        protocol.dataReceived(_wire.encode_put(request))
        protocol.dataReceived(_wire.encode_trailer(self.digest.decode()))
        done = _wire.encode_done(len(self.secret), self.digest.decode(), "s.txt")
        self.assertEqual(transport.value(), b"ok 15 -\n" + done)


class RenamedCopyTests(IntegrityTestCase):
    def test_new_client_three_sends(self) -> None:
        """v1 stored; v2 sent three times: one copy, C{n (1).txt}, named in every receipt."""
        self.successResultOf(self.send(self.local_file("n.txt", b"version 1")))
        path = self.local_file("n.txt", b"version 2", MTIME_NS + 7 * 10**9)
        paths = [self.successResultOf(self.send(path)).path for _ in range(3)]
        self.assertEqual(paths, ["n (1).txt"] * 3)
        self.assertEqual(visible_files(self.root), ["n (1).txt", "n.txt"])

    def test_older_client_three_sends(self) -> None:
        """An older FX/1 client (no trailer): the copy is found by digest once the bytes are in."""
        self.successResultOf(self.send(self.local_file("n.txt", b"version 1")))
        v2 = b"version 2"
        for _ in range(3):
            protocol, transport = self.connect()
            protocol.dataReceived(_wire.encode_put(_wire.PutRequest("n.txt", len(v2))))
            protocol.dataReceived(v2)
            self.assertEqual(
                transport.value(),
                b"ok 0\n" + _wire.encode_done(len(v2), sha256_bytes(v2), "n (1).txt"),
            )
        self.assertEqual(visible_files(self.root), ["n (1).txt", "n.txt"])

    def test_classic_client_three_sends(self) -> None:
        """The classic form re-sending the same bytes makes no new copy either."""
        self.successResultOf(self.send(self.local_file("n.txt", b"version 1")))
        for _ in range(3):
            protocol, transport = self.connect()
            protocol.dataReceived(b"n.txt")
            protocol.dataReceived(b"version 2")
            protocol.readConnectionLost()
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(visible_files(self.root), ["n (1).txt", "n.txt"])
        self.assertEqual(self.stored("n (1).txt"), b"version 2")

    def test_sha256_matches_renamed_copy(self) -> None:
        """A client announcing SHA256 is answered with the renamed copy holding those bytes."""
        self.successResultOf(self.send(self.local_file("n.txt", b"version 1")))
        self.successResultOf(self.send(self.local_file("n.txt", b"version 2", MTIME_NS + 1)))
        protocol, transport = self.connect()
        digest = sha256_bytes(b"version 2")
        protocol.dataReceived(_wire.encode_put(_wire.PutRequest("n.txt", 9, digest)))
        self.assertEqual(transport.value(), b"ok 9\n" + _wire.encode_done(9, digest, "n (1).txt"))


class ChangedWhileSendingTests(IntegrityTestCase):
    def test_trailer_mismatch(self) -> None:
        """Bytes that do not hash to the client's trailer never get a final name (422)."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            _wire.encode_put(_wire.PutRequest("c.bin", 4, None, MTIME_NS, trailer=True))
        )
        protocol.dataReceived(b"abcd" + _wire.encode_trailer(sha256_bytes(b"abcX")))
        self.assertTrue(transport.value().startswith(b"ok 0 "), transport.value())
        self.assertIn(b"error 422 ", transport.value())
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_trailer_byte_by_byte(self) -> None:
        """Data and trailer fed one byte at a time are told apart at Size."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            _wire.encode_put(_wire.PutRequest("c.bin", 4, None, MTIME_NS, trailer=True))
        )
        for byte in b"abcd" + _wire.encode_trailer(sha256_bytes(b"abcd")):
            protocol.dataReceived(bytes([byte]))
        self.assertTrue(
            transport.value().endswith(_wire.encode_done(4, sha256_bytes(b"abcd"), "c.bin"))
        )

    def test_bytes_after_trailer(self) -> None:
        """Anything after the trailer line is refused (422) and nothing is stored."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            _wire.encode_put(_wire.PutRequest("c.bin", 4, None, MTIME_NS, trailer=True))
        )
        protocol.dataReceived(b"abcd" + _wire.encode_trailer(sha256_bytes(b"abcd")) + b"x")
        self.assertIn(b"error 422 ", transport.value())
        self.assertEqual(visible_files(self.root), [])

    def test_eof_before_trailer_keeps_partial(self) -> None:
        """A half-close after Size bytes but before the trailer: 422, the bytes kept for resume."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            _wire.encode_put(_wire.PutRequest("c.bin", 4, None, MTIME_NS, trailer=True))
        )
        protocol.dataReceived(b"abcd")
        protocol.readConnectionLost()
        self.assertIn(b"error 422 ", transport.value())
        self.assertEqual(len(state_files(self.root, "partial")), 1)
        self.assertEqual(visible_files(self.root), [])


class ArrivingBytesLimitTests(IntegrityTestCase):
    """I4: --max-size holds for what arrives, in every form."""

    def setUp(self) -> None:
        super().setUp()
        self.storage.max_size = 1000

    def test_classic_over_max_size(self) -> None:
        """Classic form, 5,000 bytes against max 1,000: reset, nothing stored or left in temp."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"big.bin")
        protocol.dataReceived(b"x" * 5000)
        self.assertEqual(transport.value(), b"ok")  # no words after ok in the classic form...
        self.assertTrue(transport.disconnected)  # ...so the connection is reset
        protocol.readConnectionLost()  # a clean close would have completed the file
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_fx1_without_size_over_max_size(self) -> None:
        """FX/1 without Size: C{error 413} once the limit is passed; nothing kept."""
        protocol, transport = self.connect()
        protocol.dataReceived(_wire.encode_put(_wire.PutRequest("big.bin")))
        for _ in range(5):
            protocol.dataReceived(b"x" * 1000)
        self.assertTrue(transport.value().startswith(b"ok 0\nerror 413 "), transport.value())
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_exactly_max_size_stored(self) -> None:
        """Exactly max_size bytes without Size is still stored."""
        protocol, transport = self.connect()
        protocol.dataReceived(_wire.encode_put(_wire.PutRequest("edge.bin")))
        protocol.dataReceived(b"x" * 1000)
        protocol.readConnectionLost()
        self.assertEqual(self.stored("edge.bin"), b"x" * 1000)


class MtimeTheFileSystemKeepsTests(IntegrityTestCase):
    def test_outside_the_file_systems_range_refused_at_handshake(self) -> None:
        """An Mtime the root's file system cannot keep (before its earliest) is 400 up front."""
        low, high = self.storage.mtime_range
        self.storage.mtime_range = (max(low, -(2**31) * 10**9), high)  # as ext4 keeps it
        protocol, transport = self.connect()
        year_1800 = -5_364_662_400 * 10**9
        request = _wire.PutRequest("old.txt", 3, None, year_1800, trailer=True)
        protocol.dataReceived(_wire.encode_put(request))
        self.assertTrue(transport.value().startswith(b"error 400 "), transport.value())
        self.assertEqual(visible_files(self.root), [])

    def test_before_1970_kept(self) -> None:
        """A file dated 1965, and one a nanosecond before 1970, keep their times when stored."""
        for name, mtime_ns in (("1965.txt", -157_766_400 * 10**9), ("edge.txt", -1)):
            receipt = self.successResultOf(self.send(self.local_file(name, b"old", mtime_ns)))
            kept = os.stat(os.path.join(self.root, receipt.path)).st_mtime_ns
            self.assertEqual(kept, mtime_ns)

    def test_time_rounded_by_the_file_system(self) -> None:
        """A file system that keeps a rounded time (FAT: 2 s) still matches the re-send."""
        real_utime = os.utime

        def two_second_utime(target: Any, *args: Any, ns: tuple[int, int], **kwargs: Any) -> None:
            real_utime(target, *args, ns=(ns[0], ns[1] - ns[1] % (2 * 10**9)), **kwargs)

        path = self.local_file("r.txt", b"rounded", MTIME_NS + 10**9)  # an odd second
        self.patch(os, "utime", two_second_utime)  # the server's file system from now on
        for _ in range(3):
            self.assertEqual(self.successResultOf(self.send(path)).path, "r.txt")
        self.assertEqual(visible_files(self.root), ["r.txt"])


class TFTPArrivingBytesLimitTests(unittest.TestCase):
    """I4 over TFTP: a WRQ without tsize is stopped at max_size with ERROR 3."""

    def test_wrq_without_tsize_over_max_size(self) -> None:
        """Blocks past max_size (no tsize announced): ERROR 3, nothing stored, nothing in temp."""
        from filexfer.tftp import _packets as p

        from .test_tftp_server import Harness

        h = Harness(self, max_size=1000)
        port = h.request(p.WriteRequest(b"big.bin", "octet"))
        assert port is not None
        h.take(port)
        for block in range(1, 11):  # 5,120 bytes in 512-byte blocks
            h.send(port, p.Data(block, b"x" * 512))
            if port.closed:
                break
        packets = h.take(port)
        self.assertIsInstance(packets[-1], p.Error)
        self.assertEqual(packets[-1].code, p.DISK_FULL)  # type: ignore[union-attr]
        self.assertEqual((h.stored("big.bin"), h.temp_files(), port.closed), (None, [], True))


class StartingAnUploadTests(IntegrityTestCase):
    """What starting an upload needs from the disk: room for the rest, threads for the rest."""

    def test_resume_needs_room_only_for_the_rest(self) -> None:
        """A resume is refused (507) only when what is still to come does not fit."""
        self.cut_upload("six.bin", A, 60_000, trailer=True)
        free = {"bytes": 50_000}
        self.patch(
            type(self.storage),
            "check_space",
            lambda storage, incoming, where=None: _room(incoming, free["bytes"]),
        )
        protocol, transport = self.connect()
        request = _wire.PutRequest("six.bin", len(A), None, MTIME_NS, trailer=True)
        protocol.dataReceived(_wire.encode_put(request))
        self.assertTrue(transport.value().startswith(b"ok 60000 "), transport.value())
        protocol.connectionLost(Failure(ConnectionDone()))
        free["bytes"] = 30_000  # 40,000 still to come no longer fit
        protocol, transport = self.connect()
        protocol.dataReceived(_wire.encode_put(request))
        self.assertTrue(transport.value().startswith(b"error 507 "), transport.value())
        self.assertEqual(len(state_files(self.root, "partial")), 1)  # kept for later

    def test_fresh_start_counts_the_dropped_partial(self) -> None:
        """C{Resume: no} drops the held bytes before the room is judged."""
        self.cut_upload("six.bin", A, 60_000, trailer=True)
        seen: list[int] = []
        self.patch(
            type(self.storage),
            "check_space",
            lambda storage, incoming, where=None: seen.append(incoming),
        )
        protocol, transport = self.connect()
        request = _wire.PutRequest("six.bin", len(A), None, MTIME_NS, trailer=True, fresh=True)
        protocol.dataReceived(_wire.encode_put(request))
        self.assertEqual(transport.value(), b"ok 0 %s\n" % sha256_bytes(b"").encode())
        self.assertEqual(seen[0], len(A))

    def test_hashing_has_its_own_runner(self) -> None:
        """Hashing a held prefix goes through run_hashing; a small upload is served meanwhile."""
        from filexfer.testing import ManualRunner

        self.cut_upload("big.bin", A, 60_000, trailer=True)
        hashing = ManualRunner()
        self.storage.run_hashing = hashing
        big, big_transport = self.connect()
        request = _wire.PutRequest("big.bin", len(A), None, MTIME_NS, trailer=True)
        big.dataReceived(_wire.encode_put(request))
        self.assertEqual((big_transport.value(), len(hashing.pending)), (b"", 1))
        small, small_transport = self.connect()
        small.dataReceived(_wire.encode_put(_wire.PutRequest("small.txt", 5)))
        small.dataReceived(b"hello")
        self.assertTrue(small_transport.value().endswith(b" small.txt\n"), small_transport.value())
        hashing.run_all()
        self.assertTrue(big_transport.value().startswith(b"ok 60000 "), big_transport.value())

    def test_no_handshake_timeout_while_the_server_works(self) -> None:
        """The handshake timer stops once the handshake is complete: slow hashing is no 408."""
        from filexfer.testing import ManualRunner

        self.cut_upload("big.bin", A, 60_000, trailer=True)
        self.storage.run_hashing = hashing = ManualRunner()
        protocol, transport = self.connect()
        request = _wire.PutRequest("big.bin", len(A), None, MTIME_NS, trailer=True)
        protocol.dataReceived(_wire.encode_put(request))
        self.clock.advance(self.factory.handshake_timeout * 3)
        self.assertEqual(transport.value(), b"")
        hashing.run_all()
        self.assertTrue(transport.value().startswith(b"ok 60000 "), transport.value())

    def test_overwrite_refuses_symlink_at_handshake(self) -> None:
        """Under overwrite, a symlink at the final name is a 409 before any byte; it stays."""
        self.storage.on_conflict = "overwrite"
        os.makedirs(self.root, exist_ok=True)
        os.symlink("/etc/passwd", os.path.join(self.root, "s"))
        protocol, transport = self.connect()
        protocol.dataReceived(_wire.encode_put(_wire.PutRequest("s", 3)))
        self.assertTrue(transport.value().startswith(b"error 409 "), transport.value())
        self.assertTrue(os.path.islink(os.path.join(self.root, "s")))


def _room(incoming: int, free: int) -> None:
    from filexfer._errors import TransferError

    if incoming > free:
        raise TransferError(507, "not enough free space on the server")


class ClientWaitsForHashingTests(unittest.TestCase):
    def test_first_reply_wait_grows_with_the_file(self) -> None:
        """The client's first-reply wait covers the server hashing up to Size held bytes."""
        from filexfer.tcp.sender import REPLY_TIMEOUT, _Timeouts, reply_wait

        timeouts = _Timeouts(300.0, 10.0, REPLY_TIMEOUT)
        small = _wire.PutRequest("s", 10, None, MTIME_NS, trailer=True)
        huge = _wire.PutRequest("h", 100 * 10**9, None, MTIME_NS, trailer=True)
        self.assertEqual(reply_wait(timeouts, small), REPLY_TIMEOUT)
        self.assertGreaterEqual(reply_wait(timeouts, huge), REPLY_TIMEOUT + 100 * 10**9 / 50e6)
        self.assertEqual(reply_wait(timeouts, _wire.ClassicRequest("c")), REPLY_TIMEOUT)


class TFTPExactNameTests(unittest.TestCase):
    def test_wrq_onto_a_directory_refused(self) -> None:
        """A WRQ whose name is an existing directory gets ERROR 6 at once, not a renamed copy."""
        from filexfer.tftp import _packets as p

        from .test_tftp_server import Harness

        h = Harness(self)
        os.makedirs(os.path.join(h.root, "v6t"))
        self.assertIsNone(h.request(p.WriteRequest(b"v6t", "octet")))
        (error,) = h.take(h.main)
        self.assertEqual(error.code, p.FILE_EXISTS)  # type: ignore[union-attr]
        self.assertEqual(sorted(os.listdir(h.root)), [".filexfer", "v6t"])
