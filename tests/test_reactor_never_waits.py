"""The reactor never waits on the disk: reading or hashing stored bytes runs off its thread.

The storage's C{run_blocking} is a L{ManualRunner} here: work it is given is
queued, not run, so a test can hold back the hashing of a large partial (or
of a stored file whose cached digest is missing) and show that another
connection is served from start to C{done} meanwhile.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import pytest
from twisted.application import internet
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from filexfer.service import HashingPool, Options, make_service
from filexfer.storage import DirectoryStorage
from filexfer.tcp import _wire
from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol
from filexfer.testing import ManualRunner

from .helpers import (
    LOOPBACK,
    payload,
    read_line,
    recv_all,
    reset_socket,
    sha256_bytes,
    start_twistd,
    state_files,
)

MTIME_NS = 1_650_000_000_000_000_000
BIG = 1 << 30
"""The announced size of the large file (the test partial holds only a few KiB of it)."""
HELD = 4096
OK_FRESH = _wire.encode_ok(0, sha256_bytes(b""), trailer=True)
"""The go-ahead for an upload with nothing held (the prefix digest of no bytes)."""


def put(path: str, size: int) -> bytes:
    """The handshake C{filexfer send} makes: Size, Mtime and a SHA-256 trailer."""
    return _wire.encode_put(_wire.PutRequest(path, size, None, MTIME_NS, trailer=True))


class HeldBackTests(unittest.TestCase):
    """One connection's disk work is held back; another connection is served meanwhile."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.storage = DirectoryStorage(self.root)
        self.factory = ReceiverFactory(self.storage, clock=Clock())

    def connect(self) -> tuple[ReceiverProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def queue(self) -> ManualRunner:
        runner = ManualRunner()
        self.storage.run_blocking = runner
        return runner

    def small_upload_completes(self, runner: ManualRunner) -> None:
        """A 5-byte FX/1 upload runs to C{done}, running only its own queued work."""
        protocol, transport = self.connect()
        held = list(runner.pending)
        protocol.dataReceived(put("small.txt", 5))
        runner.pending = [job for job in runner.pending if job not in held]
        runner.run_all()  # its begin
        self.assertEqual(transport.value(), OK_FRESH)
        protocol.dataReceived(b"hello" + _wire.encode_trailer(sha256_bytes(b"hello")))
        runner.run_all()  # its fsync and rename
        runner.pending = held + runner.pending
        done = _wire.encode_done(5, sha256_bytes(b"hello"), "small.txt")
        self.assertEqual(transport.value(), OK_FRESH + done)

    def test_resume_hashing_is_queued(self) -> None:
        """A large partial is hashed off the reactor; a 5-byte upload is done meanwhile."""
        held = payload(HELD)
        upload = self.successResultOf(
            self.storage.begin("big.bin", BIG, None, MTIME_NS, trailer=True)
        )
        upload.write(held)
        upload.abort(keep_partial=True)
        runner = self.queue()
        big, big_transport = self.connect()
        big.dataReceived(put("big.bin", BIG))
        self.assertEqual(len(runner.pending), 1)  # looking up and hashing the partial
        self.assertEqual(big_transport.value(), b"")

        self.small_upload_completes(runner)

        self.assertEqual(big_transport.value(), b"")
        runner.run_all()
        ok = _wire.encode_ok(HELD, sha256_bytes(held), trailer=True)
        self.assertEqual(big_transport.value(), ok)

    def test_stored_file_digest_is_queued(self) -> None:
        """A stored file whose cached digest is gone is hashed off the reactor."""
        data = payload(HELD, seed=1)
        upload = self.successResultOf(self.storage.begin("kept.bin", len(data), None, MTIME_NS))
        upload.write(data)
        self.successResultOf(upload.finish())
        for name in state_files(self.root, "digests"):
            os.unlink(os.path.join(self.root, ".filexfer", "digests", name))
        runner = self.queue()
        again, again_transport = self.connect()
        again.dataReceived(put("kept.bin", len(data)))
        self.assertEqual(len(runner.pending), 1)

        self.small_upload_completes(runner)

        self.assertEqual(again_transport.value(), b"")
        runner.run_all()
        self.assertEqual(again_transport.value(), _wire.encode_ok(len(data), None, trailer=True))
        again.dataReceived(_wire.encode_trailer(sha256_bytes(data)))
        done = _wire.encode_done(len(data), sha256_bytes(data), "kept.bin")
        self.assertTrue(again_transport.value().endswith(done), again_transport.value())

    def test_discarded_file_closes_off_the_reactor(self) -> None:
        """A refused upload's name goes at once; closing it (freeing its blocks) is queued."""
        upload = self.successResultOf(self.storage.begin("gone.bin", 10))
        upload.write(b"abc")
        runner = self.queue()
        upload.abort(keep_partial=False)
        self.assertEqual(state_files(self.root, "tmp"), [])
        self.assertEqual(len(runner.pending), 1)
        again = self.storage.begin("gone.bin", 10)
        runner.run_all()
        self.assertEqual(self.successResultOf(again).offset, 0)

    def test_discarded_while_a_write_is_in_flight(self) -> None:
        """A refused upload's name goes at once even while a worker still writes to it."""
        writes = ManualRunner()
        self.storage.run_writes = writes
        upload = self.successResultOf(self.storage.begin("busy.bin", None))
        upload.write(b"abc")  # a batch in flight in the write pool
        upload.abort(keep_partial=False)
        self.assertEqual(state_files(self.root, "tmp"), [])  # before the batch ends
        writes.run_all()
        self.assertEqual(state_files(self.root, "tmp"), [])


class ServiceTests(unittest.TestCase):
    """The service built for twistd gives the storage a thread pool."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        options = Options()
        options.parseOptions(["--listen", "tcp:0", "--no-tftp", "--root", self.root])
        self.top = make_service(options, reactor)
        for child in self.top:
            if isinstance(child, HashingPool):
                self.addCleanup(child.stopService)  # its threads, if a test started them

    def storage(self) -> Any:
        (listener,) = [c for c in self.top if isinstance(c, internet.StreamServerEndpointService)]
        return listener.factory.storage

    @inlineCallbacks
    def test_storage_work_runs_in_a_thread(self) -> Deferred[None]:  # type: ignore[misc]
        """begin's look-ups and hashing, and the writes, run in other threads (two pools)."""
        storage = self.storage()
        self.assertIsNot(storage.run_hashing, storage.run_blocking)
        for run in (storage.run_blocking, storage.run_writes, storage.run_hashing):
            ran_in = yield run(threading.get_ident)
            self.assertNotEqual(ran_in, threading.get_ident())

    @inlineCallbacks
    def test_stale_files_removed_in_a_thread(self) -> Deferred[None]:  # type: ignore[misc]
        """The hourly clean-up scans and unlinks in the thread pool, not on the reactor."""
        old = os.path.join(self.root, ".filexfer", "partial", "old")
        with open(old, "wb") as handle:
            handle.write(b"x")
        os.utime(old, (0, 0))
        (timer,) = [c for c in self.top if isinstance(c, internet.TimerService)]
        function, args, kwargs = timer.call
        removing = function(*args, **kwargs)
        self.assertNoResult(removing)
        self.assertTrue(os.path.exists(old))
        removed = yield removing
        self.assertEqual(removed, 1)
        self.assertFalse(os.path.exists(old))


@pytest.mark.integration
class TwistdResumeTests(unittest.TestCase):
    """A real C{twistd filexfer}: a 1 GiB resume does not hold up a small upload."""

    def test_small_upload_while_a_large_resume_starts(self) -> None:
        """The 5-byte upload's C{done} arrives before the 1 GiB resume's C{ok}."""
        root = os.path.abspath(self.mktemp())
        server = start_twistd(self, root)
        address = (LOOPBACK, server.port)
        size = BIG + (1 << 20)
        with socket.create_connection(address, timeout=30) as first:
            first.sendall(put("big.bin", size))
            self.assertEqual(read_line(first), OK_FRESH)
            first.sendall(payload(HELD))
            reset_socket(first)  # the partial is kept, with whatever arrived of these bytes
        server.log.wait_for(r"'big\.bin' \d+ bytes in .*: client aborted after ")
        (partial,) = state_files(root, "partial")
        os.truncate(os.path.join(root, ".filexfer", "partial", partial), BIG)  # sparse: fast

        with socket.create_connection(address, timeout=30) as big:
            big.sendall(put("big.bin", size))  # the server now hashes 1 GiB
            began = time.monotonic()
            with socket.create_connection(address, timeout=30) as small:
                small.sendall(put("small.txt", 5))
                self.assertEqual(read_line(small), OK_FRESH)
                small.sendall(b"hello" + _wire.encode_trailer(sha256_bytes(b"hello")))
                done = recv_all(small)
            small_took = time.monotonic() - began
            self.assertEqual(done, _wire.encode_done(5, sha256_bytes(b"hello"), "small.txt"))
            big.setblocking(False)
            try:
                early = big.recv(1)
            except BlockingIOError:
                early = None
            self.assertIsNone(early, f"the resume was answered first ({small_took:.3f} s)")
            big.setblocking(True)
            reply = read_line(big)
        self.assertTrue(reply.startswith(b"ok %d " % BIG), reply)
