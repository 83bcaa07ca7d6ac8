"""filexfer.testing and filexfer.pytest_plugin: the doubles and fixtures users test with.

The fixtures are tested in pytest-twisted's style (plain functions, in
tests/pytest_twisted_style.py, run by a pytest of their own), the doubles as
trial test cases: both styles users write are shown working.
"""

from __future__ import annotations

import doctest
import hashlib
import os
import subprocess
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest
from zope.interface.verify import verifyObject

import filexfer.testing
from filexfer import IStorage, IUpload, Receipt, TransferError
from filexfer.tcp.sender import ServerRefused
from filexfer.testing import (
    FakeUDPNetwork,
    InMemoryReceiver,
    ManualRunner,
    MemoryStorage,
)
from filexfer.tftp import TFTPServerProtocol, download
from filexfer.tftp.transfer import Receiver, Transfer

from .helpers import ROOT, child_env, payload, sha256_bytes, write_file

STYLE_FILE = os.path.join("tests", "pytest_twisted_style.py")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# -- the pytest fixtures, in their own pytest run -------------------------------------


class FixtureTests(unittest.TestCase):
    """The fixtures' tests (tests/pytest_twisted_style.py) pass in a pytest of their own.

    They are written in pytest-twisted's style; run in this session, they would
    start the reactor in pytest-twisted's greenlet, after which the trial test
    cases that use the real reactor fail with ReactorAlreadyRunning: the two
    styles do not mix in one session (pytest-dev/pytest-twisted#147).
    """

    def test_fixture_tests_pass(self) -> None:
        """pytest (-p twisted, the plugin from tests/conftest.py) runs them all green."""
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", STYLE_FILE],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_env(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertRegex(output, r"\b9 passed\b")


# -- MemoryStorage, as a trial test case ---------------------------------------------


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MemoryStorageTests(unittest.TestCase):
    """MemoryStorage keeps the protocol's storage rules, in memory."""

    def store(
        self, storage: MemoryStorage, path: str, data: bytes, **kwargs: Any
    ) -> Deferred[Receipt]:
        upload = self.successResultOf(storage.begin(path, len(data), **kwargs))
        upload.write(data)
        return upload.finish()

    def test_provides_interfaces(self) -> None:
        """MemoryStorage provides IStorage and its uploads IUpload (verifyObject)."""
        storage = MemoryStorage()
        self.assertTrue(verifyObject(IStorage, storage))
        upload = self.successResultOf(storage.begin("a", 1, None, None))
        self.assertTrue(verifyObject(IUpload, upload))
        self.assertEqual((upload.offset, upload.received, upload.expected_size), (0, 0, 1))
        self.assertEqual(upload.prefix_sha256, _digest(b""))
        self.assertIsNone(upload.stored)

    def test_store_and_read(self) -> None:
        """A finished upload is in files; open_read returns it; an absent path is 404."""
        storage = MemoryStorage()
        receipt = self.successResultOf(self.store(storage, "a/b.txt", b"hello", mtime_ns=7))
        self.assertEqual(receipt, Receipt(5, _digest(b"hello"), "a/b.txt"))
        self.assertEqual(storage.files, {"a/b.txt": b"hello"})
        self.assertEqual(storage.mtimes, {"a/b.txt": 7})
        source = self.successResultOf(storage.open_read("a/b.txt"))
        self.assertEqual((self.successResultOf(source.read(100)), source.size), (b"hello", 5))
        for path, code in (("missing", 404), ("a", 403), ("../x", 400)):
            failure = self.failureResultOf(storage.open_read(path), TransferError)
            self.assertEqual(failure.value.code, code, path)

    def test_path_validation(self) -> None:
        """Bad paths are refused at begin: 400, 403 for the state directory or under a file."""
        storage = MemoryStorage()
        self.successResultOf(self.store(storage, "file", b"x"))
        for path, code in (("/abs", 400), ("a/../b", 400), ("x/.filexfer/y", 403), ("file/y", 403)):
            failure = self.failureResultOf(storage.begin(path, 1, None, None), TransferError)
            self.assertEqual(failure.value.code, code, path)
        self.assertEqual(storage.files, {"file": b"x"})

    def test_exact_name(self) -> None:
        """exact_name: rename acts as refuse (409 at begin, or at finish if it appeared)."""
        storage = MemoryStorage()
        self.successResultOf(self.store(storage, "fw.bin", b"one"))
        failure = self.failureResultOf(storage.begin("fw.bin", 3, exact_name=True))
        self.assertEqual(failure.value.code, 409)
        upload = self.successResultOf(storage.begin("late", 2, exact_name=True))
        upload.write(b"me")
        storage.files["late"] = b"them"
        self.assertEqual(self.failureResultOf(upload.finish()).value.code, 409)
        self.assertEqual(storage.files, {"fw.bin": b"one", "late": b"them"})

    def test_exact_name_numbered_copy_never_answers(self) -> None:
        """exact_name: bytes equal to a numbered copy are stored under the name asked for."""
        storage = MemoryStorage()
        storage.files["fw (1).bin"] = b"new"
        receipt = self.successResultOf(self.store(storage, "fw.bin", b"new", exact_name=True))
        self.assertEqual((receipt.path, storage.files.get("fw.bin")), ("fw.bin", b"new"))

    def test_exact_name_overwrite(self) -> None:
        """exact_name under overwrite replaces the file under its name."""
        storage = MemoryStorage("overwrite")
        storage.files["fw.bin"] = b"old"
        receipt = self.successResultOf(self.store(storage, "fw.bin", b"new", exact_name=True))
        self.assertEqual((receipt.path, storage.files), ("fw.bin", {"fw.bin": b"new"}))

    def test_conflict_rename(self) -> None:
        """rename keeps both, as name (1).ext; the same bytes again name the existing copy."""
        storage = MemoryStorage()
        self.successResultOf(self.store(storage, "r.tar.gz", b"one"))
        second = self.successResultOf(self.store(storage, "r.tar.gz", b"two"))
        self.assertEqual(second.path, "r (1).tar.gz")
        again = self.successResultOf(self.store(storage, "r.tar.gz", b"two"))
        self.assertEqual(again.path, "r (1).tar.gz")
        self.assertEqual(storage.files, {"r.tar.gz": b"one", "r (1).tar.gz": b"two"})

    def test_conflict_overwrite_and_refuse(self) -> None:
        """overwrite replaces the file; refuse answers 409 at begin and leaves it."""
        storage = MemoryStorage("overwrite")
        self.successResultOf(self.store(storage, "f", b"old"))
        self.successResultOf(self.store(storage, "f", b"new"))
        self.assertEqual(storage.files, {"f": b"new"})
        refusing = MemoryStorage("refuse")
        self.successResultOf(self.store(refusing, "f", b"old"))
        failure = self.failureResultOf(refusing.begin("f", 3, None, None), TransferError)
        self.assertEqual(failure.value.code, 409)
        self.assertEqual(refusing.files, {"f": b"old"})

    def test_refuse_checked_again_at_placing(self) -> None:
        """Under refuse, a file stored while an upload ran makes that upload fail with 409."""
        storage = MemoryStorage("refuse")
        late = self.successResultOf(storage.begin("f", 1, None, None))
        self.successResultOf(self.store(storage, "f", b"a"))
        late.write(b"b")
        self.assertEqual(self.failureResultOf(late.finish(), TransferError).value.code, 409)
        self.assertEqual(storage.files, {"f": b"a"})

    def test_size_rules(self) -> None:
        """max_size: 413 announced and arriving; more than Size or fewer: 422, nothing stored."""
        storage = MemoryStorage(max_size=4)
        failure = self.failureResultOf(storage.begin("big", 5, None, None), TransferError)
        self.assertEqual(failure.value.code, 413)
        unsized = self.successResultOf(storage.begin("u", None, None, None))
        unsized.write(b"1234")
        self.assertEqual(self.assertRaises(TransferError, unsized.write, b"5").code, 413)
        over = self.successResultOf(storage.begin("o", 2, None, None))
        self.assertEqual(self.assertRaises(TransferError, over.write, b"abc").code, 422)
        short = self.successResultOf(storage.begin("s", 3, None, None))
        short.write(b"ab")
        self.assertEqual(self.failureResultOf(short.finish(), TransferError).value.code, 422)
        self.assertEqual(storage.files, {})

    def test_sha256_rules(self) -> None:
        """An announced or a trailing SHA256 that the bytes do not match: 422, nothing stored."""
        storage = MemoryStorage()
        wrong = self.store(storage, "a", b"data", sha256=_digest(b"other"))
        self.assertEqual(self.failureResultOf(wrong, TransferError).value.code, 422)
        upload = self.successResultOf(storage.begin("b", 4, None, None, trailer=True))
        upload.write(b"data")
        failure = self.failureResultOf(upload.finish(_digest(b"other")), TransferError)
        self.assertEqual(failure.value.code, 422)
        self.assertEqual(storage.files, {})
        right = self.successResultOf(storage.begin("c", 4, None, None, trailer=True))
        right.write(b"data")
        self.assertEqual(self.successResultOf(right.finish(_digest(b"data"))).path, "c")

    def test_already_stored_by_announced_sha256(self) -> None:
        """An announced SHA256 that a stored copy has: the upload expects no bytes."""
        storage = MemoryStorage()
        self.successResultOf(self.store(storage, "a", b"same"))
        upload = self.successResultOf(storage.begin("a", 4, _digest(b"same"), None))
        self.assertEqual(upload.stored, Receipt(4, _digest(b"same"), "a"))
        self.assertEqual(upload.offset, 4)
        self.assertRaises(TransferError, upload.write, b"x")
        self.assertEqual(self.successResultOf(upload.finish()).path, "a")

    def test_manual_runner_holds_work(self) -> None:
        """With a ManualRunner, begin fires only when the test runs the queued work."""
        runner = ManualRunner()
        storage = MemoryStorage(run_blocking=runner)
        started = storage.begin("a", 1, None, None)
        self.assertNoResult(started)
        runner.run_all()
        self.successResultOf(started)

    def test_abort_keeps_nothing(self) -> None:
        """abort(keep_partial=True) keeps nothing: the next upload starts at 0."""
        storage = MemoryStorage()
        upload = self.successResultOf(storage.begin("a", 4, _digest(b"data"), None))
        upload.write(b"da")
        upload.abort(keep_partial=True)
        again = self.successResultOf(storage.begin("a", 4, _digest(b"data"), None))
        self.assertEqual(again.offset, 0)
        self.assertEqual(storage.files, {})


class InMemoryReceiverTests(unittest.TestCase):
    """send_file to a ReceiverFactory over iosim, storing into MemoryStorage."""

    def setUp(self) -> None:
        self.local = os.path.abspath(self.mktemp())
        os.makedirs(self.local)

    def test_fx1_into_memory(self) -> None:
        """FX/1 (with trailer) stores the file in MemoryStorage; the receipt says so."""
        storage = MemoryStorage()
        receiver = InMemoryReceiver(storage)
        data = payload(200_000, seed=3)
        local = write_file(os.path.join(self.local, "f.bin"), data)
        receipt = self.successResultOf(receiver.send_file(local, name="dir/f.bin"))
        self.assertEqual(receipt, Receipt(len(data), sha256_bytes(data), "dir/f.bin"))
        self.assertEqual(storage.files, {"dir/f.bin": data})

    def test_classic_and_rename(self) -> None:
        """The classic form stores too; a second, different file is renamed."""
        receiver = InMemoryReceiver()
        first = write_file(os.path.join(self.local, "a", "n.txt"), b"v1")
        second = write_file(os.path.join(self.local, "b", "n.txt"), b"v2")
        self.successResultOf(receiver.send_file(first, plain=True))
        receipt = self.successResultOf(receiver.send_file(second))
        self.assertEqual(receipt.path, "n (1).txt")
        assert isinstance(receiver.storage, MemoryStorage)
        self.assertEqual(receiver.storage.files, {"n.txt": b"v1", "n (1).txt": b"v2"})

    def test_refusal_and_token(self) -> None:
        """Factory options pass through: a missing token is refused with 401."""
        receiver = InMemoryReceiver(token="secret")
        local = write_file(os.path.join(self.local, "t"), b"t")
        failure = self.failureResultOf(receiver.send_file(local), ServerRefused)
        self.assertEqual(failure.value.code, 401)
        self.successResultOf(receiver.send_file(local, token="secret"))

    def test_storage_held_by_manual_runner(self) -> None:
        """With a ManualRunner the transfer waits for the storage, then completes."""
        runner = ManualRunner()
        storage = MemoryStorage(run_blocking=runner)
        receiver = InMemoryReceiver(storage)
        local = write_file(os.path.join(self.local, "m"), b"held")
        result = receiver.send_file(local)
        self.assertNoResult(result)
        while runner.pending:
            runner.run_all()
            receiver.flush()
        self.assertEqual(self.successResultOf(result).path, "m")

    def test_module_docstring_example_runs(self) -> None:
        """The usage example in filexfer.testing's docstring runs as written."""
        failures, tried = doctest.testmod(filexfer.testing, report=False)
        self.assertGreater(tried, 0)
        self.assertEqual(failures, 0)

    def test_public_names(self) -> None:
        """Everything in filexfer.testing.__all__ exists and is documented."""
        for name in filexfer.testing.__all__:
            self.assertTrue(getattr(filexfer.testing, name).__doc__, name)


# -- FakeUDPNetwork ------------------------------------------------------------------


class _Recorder(DatagramProtocol):
    """A plain protocol: records what datagramReceived gets."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))


class _Reader(DatagramProtocol):
    """A protocol that reads its port itself, as a TFTP transfer does."""

    def __init__(self, per_call: int) -> None:
        self.per_call = per_call
        self.calls: list[list[bytes]] = []

    def readable(self, sock: Any, bufsize: int) -> None:
        burst = []
        for _ in range(self.per_call):
            try:
                datagram, _addr = sock.recvfrom(bufsize)
            except BlockingIOError:
                break
            burst.append(datagram)
        self.calls.append(burst)


class FakeUDPNetworkTests(unittest.TestCase):
    """FakeUDPNetwork carries datagrams between ports the way real ports deliver them."""

    def test_plain_protocol_gets_datagram_received(self) -> None:
        """A protocol without readable() gets datagramReceived, from the sender's address."""
        net = FakeUDPNetwork()
        recorder = _Recorder()
        net.listenUDP(69, recorder)
        sender = net.listenUDP(0, _Recorder())
        sender.write(b"hello", ("127.0.0.1", 69))
        sender.write(b"nobody", ("127.0.0.1", 70))
        self.assertEqual(recorder.received, [])
        net.flush()
        self.assertEqual(recorder.received, [(b"hello", ("127.0.0.1", sender.number))])
        self.assertEqual([d for d, _ in sender.sent], [b"hello", b"nobody"])

    def test_reader_reads_bursts_until_empty(self) -> None:
        """Datagrams arriving together are read in bursts; the port asks again while any wait."""
        net = FakeUDPNetwork(latency=0.01)
        reader = _Reader(per_call=2)
        port = net.listenUDP(69, reader, maxPacketSize=4)
        sender = net.listenUDP(0, _Recorder())
        for datagram in (b"one", b"two", b"three!"):
            sender.write(datagram, ("127.0.0.1", 69))
        net.advance(0.005)
        self.assertEqual((reader.calls, port.waiting), ([], 0))
        net.advance(0.005)
        self.assertEqual(reader.calls, [[b"one", b"two"], [b"thre"]])

    def test_loss_duplication_and_drop_hook(self) -> None:
        """Seeded loss and duplication repeat exactly; drop() loses chosen datagrams."""

        def run(**options: Any) -> list[bytes]:
            net = FakeUDPNetwork(**options)
            recorder = _Recorder()
            net.listenUDP(69, recorder)
            sender = net.listenUDP(0, _Recorder())
            for number in range(200):
                sender.write(b"%d" % number, ("127.0.0.1", 69))
            net.flush()
            return [d for d, _ in recorder.received]

        lossy = run(loss=0.25, duplicate=0.25, seed=4)
        self.assertEqual(lossy, run(loss=0.25, duplicate=0.25, seed=4))
        self.assertLess(len(set(lossy)), 200)
        self.assertGreater(len(lossy), len(set(lossy)))
        net = FakeUDPNetwork()
        net.drop = lambda source, target, datagram: datagram == b"b"
        recorder = _Recorder()
        net.listenUDP(69, recorder)
        sender = net.listenUDP(0, _Recorder())
        for datagram in (b"a", b"b", b"c"):
            sender.write(datagram, ("127.0.0.1", 69))
        net.flush()
        self.assertEqual([d for d, _ in recorder.received], [b"a", b"c"])

    def test_tftp_transfer_takes_the_fast_path(self) -> None:
        """A TFTP download's DATA reaches the transfers' fast_packet, not datagramReceived."""
        fast: list[int] = []
        slow: list[bytes] = []
        fast_packet = Receiver.fast_packet
        datagram_received = Transfer.datagramReceived

        def counting_fast(self: Receiver, block: int, datagram: bytes) -> bool:
            fast.append(block)
            return fast_packet(self, block, datagram)

        def counting_slow(self: Transfer, datagram: bytes, addr: Any) -> None:
            slow.append(datagram[:2])
            datagram_received(self, datagram, addr)

        self.patch(Receiver, "fast_packet", counting_fast)
        self.patch(Transfer, "datagramReceived", counting_slow)
        net = FakeUDPNetwork()
        storage = MemoryStorage()
        storage.files["f"] = payload(512 * 20)
        net.listenUDP(69, TFTPServerProtocol(storage=storage, reactor=net))
        target = os.path.abspath(self.mktemp())
        result = download(net, "127.0.0.1", 69, "f", target, blksize=512, windowsize=4)
        self.assertTrue(net.run_until(result))
        self.assertEqual(self.successResultOf(result), 512 * 20)
        self.assertEqual(fast, list(range(1, 22)))  # 20 full blocks and an empty one
        self.assertEqual(slow, [b"\x00\x06"])  # only the OACK took the slow path

    def test_port_numbers_and_listen_errors(self) -> None:
        """Port 0 picks a free number; a taken number and listen_error raise."""
        net = FakeUDPNetwork()
        first = net.listenUDP(0, _Recorder(), interface="::")
        self.assertEqual((first.number, first.getHost().host), (40000, "::"))
        self.assertRaises(CannotListenError, net.listenUDP, 40000, _Recorder())
        first.stopListening()
        self.assertTrue(first.closed)
        self.assertEqual(net.listenUDP(40000, _Recorder()).number, 40000)
        net.listen_error = CannotListenError("", 0, OSError("no ports left"))
        self.assertRaises(CannotListenError, net.listenUDP, 0, _Recorder())
