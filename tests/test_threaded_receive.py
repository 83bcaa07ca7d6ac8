"""Receiving in a thread of its own: the direct sink of an upload, and ThreadedReceive.

The sink is driven by hand (its limits, abort and finish while a thread
holds it); ThreadedReceive reads a real socket pair, reporting through a
reactor stand-in whose C{callFromThread} queues the calls for the test.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer.storage import DirectoryStorage, IDirectUpload
from filexfer.tcp import _wire
from filexfer.tcp._threaded import RECEIVE_BUFFER, ThreadedReceive

from .helpers import (
    LOOPBACK,
    blake3_bytes,
    payload,
    read_line,
    reset_socket,
    sha256_bytes,
    start_twistd,
    state_files,
)

DATA = payload(3 << 20, seed=4)


class SinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.storage = DirectoryStorage(self.root, max_size=len(DATA) + 10)

    def begin(self, size: int | None = len(DATA), **options: Any) -> Any:
        upload = self.successResultOf(
            self.storage.begin("f.bin", size, None, 10**18, trailer=True, **options)
        )
        self.assertTrue(IDirectUpload.providedBy(upload))
        return upload

    def test_written_and_hashed(self) -> None:
        """Chunks through the sink (from a reused buffer) are stored and hashed as sent."""
        upload = self.begin(digest="blake3")
        sink = upload.direct()
        buffer = bytearray(1 << 20)
        for start in range(0, len(DATA), len(buffer)):
            piece = DATA[start : start + len(buffer)]
            buffer[: len(piece)] = piece
            sink(memoryview(buffer)[: len(piece)])
        upload.direct_done()
        receipt = self.successResultOf(upload.finish(blake3_bytes(DATA)))
        with open(os.path.join(self.root, receipt.path), "rb") as handle:
            self.assertEqual(handle.read(), DATA)

    def test_aligned_chunks_bypass_the_page_cache(self) -> None:
        """Resumed at byte 1000: whole aligned chunks go direct, the odd first and last do not."""
        import mmap

        from filexfer.storage import _upload

        taken: list[tuple[int, int, int]] = []

        class Recording(_upload.DirectWriter):
            def write(self, data: memoryview, offset: int) -> int:
                written = super().write(data, offset)
                taken.append((offset, len(data), written))
                return written

        self.patch(_upload, "DirectWriter", Recording)
        first = self.begin()
        first.direct()(memoryview(DATA[:1000]))
        first.direct_done()
        first.abort(keep_partial=True)
        upload = self.begin()
        self.assertEqual(upload.offset, 1000)
        sink = upload.direct()
        buffer = mmap.mmap(-1, RECEIVE_BUFFER)  # page-aligned, as the receiving thread's
        whole = RECEIVE_BUFFER
        for start, end in [(1000, whole), (whole, 2 * whole), (2 * whole, 3 * whole)]:
            buffer[: end - start] = DATA[start:end]
            sink(memoryview(buffer)[: end - start])
        upload.direct_done()
        receipt = self.successResultOf(upload.finish(sha256_bytes(DATA)))
        with open(os.path.join(self.root, receipt.path), "rb") as handle:
            self.assertEqual(handle.read(), DATA)
        self.assertEqual(
            taken,
            [
                (0, 1000, 0),
                (1000, whole - 1000, 0),
                (whole, whole, whole),
                (2 * whole, whole, whole),
            ],
        )

    def test_writeback_started_a_window_at_a_time(self) -> None:
        """Every 16 MiB written, the disk is asked to start on them (not all at the fsync)."""
        from filexfer.storage import _upload

        started: list[tuple[int, int]] = []
        self.patch(_upload, "start_writeback", lambda fd, offset, n: started.append((offset, n)))
        window = _upload.WRITEBACK_WINDOW
        self.storage.max_size = None
        upload = self.begin(size=3 * window + 5)
        sink = upload.direct()
        chunk = memoryview(bytes(1 << 20))
        for _ in range(3 * window // len(chunk)):
            sink(chunk)
        self.assertEqual(started, [(0, window), (window, window), (2 * window, window)])

    def test_more_than_size(self) -> None:
        """A chunk past the announced Size is refused with 422 and not written."""
        upload = self.begin(size=10)
        sink = upload.direct()
        sink(memoryview(b"0123456789"))
        with self.assertRaises(TransferError) as caught:
            sink(memoryview(b"x"))
        self.assertEqual((caught.exception.code, upload.received), (422, 10))

    def test_max_size_without_size(self) -> None:
        """Without Size, the arriving bytes meet --max-size (413), as I4 asks."""
        upload = self.begin(size=None)
        sink = upload.direct()
        sink(memoryview(DATA))
        with self.assertRaises(TransferError) as caught:
            sink(memoryview(b"x" * 11))
        self.assertEqual(caught.exception.code, 413)

    def test_free_space_checked_ahead(self) -> None:
        """The reserve is checked for the window ahead: a chunk that would eat it is 507."""
        upload = self.begin()
        sink = upload.direct()
        asked: list[int] = []

        def check_space(incoming: int, where: str | None = None) -> None:
            asked.append(incoming)
            if sum(asked) > len(DATA) // 2:
                raise TransferError(507, "not enough free space on the server")

        self.storage.check_space = check_space  # type: ignore[method-assign]
        with self.assertRaises(TransferError) as caught:
            for start in range(0, len(DATA), 1 << 20):
                sink(memoryview(DATA[start : start + (1 << 20)]))
        self.assertEqual(caught.exception.code, 507)
        self.assertEqual(asked, [len(DATA)])  # one check, for every byte still to come

    def test_abort_waits_for_the_thread(self) -> None:
        """Aborted while a thread holds the sink: the sink refuses, the file closes after."""
        upload = self.begin()
        sink = upload.direct()
        sink(memoryview(DATA[:100]))
        upload.abort(keep_partial=True)
        self.assertFalse(upload._handle.closed)  # the thread may still be writing
        with self.assertRaises(TransferError):
            sink(memoryview(DATA[100:200]))
        upload.direct_done()
        self.assertTrue(upload._handle.closed)
        self.assertEqual(len(state_files(self.root, "partial")), 1)

    def test_finish_waits_for_the_thread(self) -> None:
        """finish() called before direct_done() fires only once the thread is out."""
        upload = self.begin(size=5)
        sink = upload.direct()
        sink(memoryview(b"hello"))
        finishing = upload.finish(sha256_bytes(b"hello"))
        self.assertNoResult(finishing)
        upload.direct_done()
        self.assertEqual(self.successResultOf(finishing).path, "f.bin")


class _Calls:
    """A reactor stand-in: C{callFromThread} queues the calls; the test runs them."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.calls.put((f, args))


class ThreadedReceiveTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)  # as a reactor's socket is
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.got = bytearray()
        self.finished: list[tuple[int, Any, Any]] = []
        self.calls = _Calls()

    def receive(self, count: int, sink: Callable[[memoryview], None] | None = None) -> Any:
        def keep(view: memoryview) -> None:
            self.got += view

        receiver = ThreadedReceive(
            self.calls,  # type: ignore[arg-type]
            self.ours.fileno(),
            count,
            sink or keep,
            lambda received: None,
            lambda *result: self.finished.append(result),
        )
        self.addCleanup(receiver.stop)
        return receiver

    def run_until_finished(self) -> tuple[int, Any, Any]:
        while not self.finished:
            f, args = self.calls.calls.get(timeout=30)
            f(*args)
        return self.finished[0]

    def test_stops_at_count(self) -> None:
        """Exactly C{count} bytes are taken; the trailer after them stays in the socket."""
        trailer = _wire.encode_trailer(sha256_bytes(DATA))
        sender = threading.Thread(target=self.peer.sendall, args=(DATA + trailer,))
        sender.start()
        self.receive(len(DATA))
        self.assertEqual(self.run_until_finished(), (len(DATA), None, None))
        sender.join(30)
        self.assertEqual(bytes(self.got), DATA)
        self.ours.setblocking(True)
        self.assertEqual(self.ours.recv(1000), trailer)

    def test_end_of_stream_left_for_the_reactor(self) -> None:
        """A peer that closes early: the thread stops, and the end is still there to read."""
        self.peer.sendall(DATA[:1000])
        self.peer.shutdown(socket.SHUT_WR)
        self.receive(len(DATA))
        self.assertEqual(self.run_until_finished(), (1000, None, None))
        self.ours.setblocking(True)
        self.assertEqual(self.ours.recv(10), b"")

    def test_sink_refusal_reported(self) -> None:
        """What the sink raises ends the thread and is reported, with what it took."""

        def refuse(view: memoryview) -> None:
            raise TransferError(507, "not enough free space on the server")

        self.peer.sendall(DATA[:10])
        self.receive(len(DATA), refuse)
        received, error, lost = self.run_until_finished()
        self.assertEqual((received, error.code, lost), (0, 507, None))

    def test_stop(self) -> None:
        """L{stop} ends a thread that waits for bytes that never come."""
        receiver = self.receive(len(DATA))
        receiver.stop()
        self.assertEqual(self.run_until_finished(), (0, None, None))


@pytest.mark.integration
class TwistdThreadedTests(unittest.TestCase):
    """A real C{twistd filexfer}: large uploads go through the thread, resets keep partials."""

    def test_reset_mid_stream_keeps_the_partial_then_resumes(self) -> None:
        """Reset after 5 MiB of 8: logged as aborted, kept; the resume finishes intact."""
        root = os.path.abspath(self.mktemp())
        server = start_twistd(self, root)
        data = payload(8 << 20, seed=9)
        put = _wire.PutRequest("big.bin", len(data), None, 1_700_000_000 * 10**9, trailer=True)
        with socket.create_connection((LOOPBACK, server.port), timeout=30) as first:
            first.sendall(_wire.encode_put(put))
            self.assertTrue(read_line(first).startswith(b"ok 0 "))
            first.sendall(data[: 5 << 20])
            reset_socket(first)
        server.log.wait_for(r"'big\.bin' \d+ bytes in .*: client aborted after ")
        self.assertEqual(len(state_files(root, "partial")), 1)
        with socket.create_connection((LOOPBACK, server.port), timeout=30) as second:
            second.sendall(_wire.encode_put(put))
            reply = read_line(second)
            offset = int(reply.split()[1])
            self.assertGreater(offset, 0)
            self.assertEqual(reply.split()[2].decode(), sha256_bytes(data[:offset]))
            second.sendall(data[offset:] + _wire.encode_trailer(sha256_bytes(data)))
            done = read_line(second)
        self.assertEqual(done, _wire.encode_done(len(data), sha256_bytes(data), "big.bin"))
        with open(os.path.join(root, "big.bin"), "rb") as handle:
            self.assertEqual(handle.read(), data)


class AlignedChunkTests(ThreadedReceiveTests):
    """The chunks a receiving thread hands over end on RECEIVE_BUFFER boundaries of the file."""

    def receive_from(self, start: int, count: int) -> list[int]:
        sizes: list[int] = []

        def keep(view: memoryview) -> None:
            sizes.append(len(view))
            self.got += view

        receiver = ThreadedReceive(
            self.calls,  # type: ignore[arg-type]
            self.ours.fileno(),
            count,
            keep,
            lambda received: None,
            lambda *result: self.finished.append(result),
            start=start,
        )
        self.addCleanup(receiver.stop)
        return sizes

    def test_resumed_at_an_odd_offset(self) -> None:
        """From file offset 1000: the first chunk reaches the boundary, then whole ones."""
        sender = threading.Thread(target=self.peer.sendall, args=(DATA,))
        sender.start()
        sizes = self.receive_from(1000, len(DATA))
        self.assertEqual(self.run_until_finished(), (len(DATA), None, None))
        sender.join(30)
        whole = RECEIVE_BUFFER
        self.assertEqual(sizes, [whole - 1000, whole, whole, 1000])
        self.assertEqual(bytes(self.got), DATA)

    def test_slow_sender_handed_over_unfilled(self) -> None:
        """Bytes that trickle in reach the sink within about a second, not at 1 MiB."""
        self.peer.sendall(DATA[:10])
        sizes = self.receive_from(0, len(DATA))
        self.calls.calls.get(timeout=30)  # the progress report after the hand-over
        self.assertEqual((sizes, bytes(self.got)), ([10], DATA[:10]))
        self.peer.sendall(DATA[10:])
        self.assertEqual(self.run_until_finished(), (len(DATA), None, None))
        self.assertEqual(sizes[:2], [10, RECEIVE_BUFFER - 10])  # back on the boundary
