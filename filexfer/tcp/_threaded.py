"""Plain TCP off the reactor thread: sending (sendfile in one thread, the digest in
another) and receiving (recv_into one reused page-aligned buffer, handed to the
upload's sink)."""

from __future__ import annotations

import mmap
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads

from filexfer._hashing import HASH_READ
from filexfer._types import ISendingReactor

_SENDFILE_MAX = 8 << 20
"""Bytes per C{sendfile} call (the kernel sends what the socket takes)."""
_REPORT_EVERY = 4 << 20
"""Progress reports from the sending thread, in bytes."""
_POLL_MS = 100
"""How long a blocked sending thread waits before it checks whether to stop."""


class ThreadedSend:
    """Streams a byte range of a file to a TCP socket without TLS off the reactor thread.

    One thread pushes bytes [start, end) with C{os.sendfile} (no copy through
    Python), another hashes [0, end), so that a resumed upload's prefix is
    hashed off the reactor thread too (hashlib releases the GIL); each works on its own
    duplicates of the descriptors, so closing the file or the connection on
    the reactor thread never pulls a descriptor from under a thread.  The
    threads report back with C{callFromThread}; L{stop} makes them quit
    within L{_POLL_MS}.
    """

    def __init__(
        self,
        reactor: ISendingReactor,
        sock_fd: int,
        file_fd: int,
        start: int,
        end: int,
        digest: Any,
        progress: Callable[[int], None],
        finished: Callable[[int, int, BaseException | None], None],
        hash_from: int = 0,
    ) -> None:
        self._reactor = reactor
        self._start = start
        self._hash_from = hash_from
        self._end = end
        self._digest = digest
        self._progress = progress
        self._finished = finished
        self._stopped = threading.Event()
        self._results: dict[str, int] = {}
        self._error: BaseException | None = None
        sock, send_file, hash_file = os.dup(sock_fd), os.dup(file_fd), os.dup(file_fd)
        reactor.callInThread(self._send, sock, send_file)
        reactor.callInThread(self._hash, hash_file)

    def stop(self) -> None:
        """Ask both threads to quit (they close their descriptors as they go)."""
        self._stopped.set()

    def _send(self, sock: int, handle: int) -> None:
        position = self._start
        reported = position
        error: BaseException | None = None
        try:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while position < self._end and not self._stopped.is_set():
                try:
                    sent = os.sendfile(
                        sock, handle, position, min(_SENDFILE_MAX, self._end - position)
                    )
                except BlockingIOError:
                    poller.poll(_POLL_MS)
                    continue
                if sent == 0:
                    break  # the file is shorter than it was
                position += sent
                if position - reported >= _REPORT_EVERY or position == self._end:
                    reported = position
                    self._reactor.callFromThread(self._progress, position)
        except BaseException as exc:  # reported on the reactor thread
            error = exc
        finally:
            os.close(sock)
            os.close(handle)
        self._reactor.callFromThread(self._one_done, "sent", position, error)

    def _hash(self, handle: int) -> None:
        position = self._hash_from  # from 0, a resumed prefix too, unless it is hashed already
        error: BaseException | None = None
        buffer = bytearray(HASH_READ)  # one buffer, reused: no allocation per chunk
        view = memoryview(buffer)
        try:
            while position < self._end and not self._stopped.is_set():
                want = min(HASH_READ, self._end - position)
                got = os.preadv(handle, [view[:want]], position)
                if not got:
                    break
                self._digest.update(view[:got])
                position += got
        except BaseException as exc:  # reported on the reactor thread
            error = exc
        finally:
            os.close(handle)
        self._reactor.callFromThread(self._one_done, "hashed", position, error)

    def _one_done(self, what: str, position: int, error: BaseException | None) -> None:
        self._results[what] = position
        self._error = self._error or error
        if len(self._results) == 2:
            self._finished(self._results["sent"], self._results["hashed"], self._error)


RECEIVE_BUFFER = 1 << 20
"""Bytes a receiving thread hands to its sink at a time, from one page-aligned
buffer it reuses; the chunks end on multiples of this in the file."""
_PROGRESS_BYTES = 4 << 20
_PROGRESS_SECONDS = 1.0
"""A receiving thread reports after this many bytes, or seconds with bytes;
a chunk still filling after that many seconds goes to the sink unfilled."""


class ThreadedReceive:
    """Receives C{count} bytes of a plain TCP connection off the reactor thread.

    The reactor stops reading the connection (the caller pauses it) while a
    thread of its own reads with C{recv_into} into one reused buffer and
    hands each chunk to C{sink} (blocking: the upload checks, writes and
    hashes it there), so neither a Python object per chunk nor a hand-off
    per chunk between the reactor and a thread pool remains.  It never
    reads past C{count}: what follows (a trailer) stays in the socket for
    the reactor.  The thread stops at C{count} bytes, at the end of the
    stream (left for the reactor to find when it reads again), at a socket
    error (reported: a reset is read only once), when C{sink} raises, or
    within L{_POLL_MS} of L{stop}; the bytes it has read go to C{sink}
    first, except when C{sink} raised.

    The buffer is page-aligned and filled before it is handed over, so that
    chunks end at multiples of L{RECEIVE_BUFFER} bytes from the file's
    start (C{start} is the file offset of the first byte) and the sink can
    write them past the page cache (L{filexfer.storage._disk.DirectWriter});
    a chunk still filling after L{_PROGRESS_SECONDS} (a slow sender) is
    handed over as it is, and the next one ends on the boundary again.

    @param progress: called on the reactor thread with the bytes received
        so far, every few MiB or second.
    @param finished: called once on the reactor thread as
        C{finished(received, error, lost)}; C{error} is what C{sink} raised,
        C{lost} the socket error that ended the connection, else None.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        sock_fd: int,
        count: int,
        sink: Callable[[memoryview], None],
        progress: Callable[[int], None],
        finished: Callable[[int, BaseException | None, OSError | None], None],
        start: int = 0,
    ) -> None:
        self._reactor = reactor
        self._count = count
        self._start = start
        self._sink = sink
        self._progress = progress
        self._finished = finished
        self._stopped = threading.Event()
        sock = socket.socket(fileno=os.dup(sock_fd))
        self._thread = threading.Thread(
            target=self._receive, args=(sock,), name="filexfer-receive", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to quit (it reports through C{finished} all the same)."""
        self._stopped.set()

    def _chunk_size(self, received: int) -> int:
        """Bytes of the chunk starting at C{received}: up to the next boundary in the file."""
        to_boundary = RECEIVE_BUFFER - (self._start + received) % RECEIVE_BUFFER
        return min(to_boundary, self._count - received)

    def _receive(self, sock: socket.socket) -> None:
        received = filled = 0  # handed to the sink; read into the buffer since
        error: BaseException | None = None
        lost: OSError | None = None
        view = memoryview(mmap.mmap(-1, RECEIVE_BUFFER))  # anonymous: page-aligned
        reported = received
        last_report = last_handed = time.monotonic()
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            while received + filled < self._count and not self._stopped.is_set():
                chunk = self._chunk_size(received)
                if filled < chunk:
                    try:
                        got = sock.recv_into(view[filled:chunk])
                    except BlockingIOError:
                        poller.poll(_POLL_MS)
                        got = -1
                    except OSError as exc:
                        lost = exc  # a reset: the reactor would read only the end of the stream
                        break
                    if not got:
                        break  # the end of the stream: likewise
                    filled += max(got, 0)
                now = time.monotonic()
                if filled == chunk or (filled and now - last_handed >= _PROGRESS_SECONDS):
                    self._sink(view[:filled])
                    received, filled, last_handed = received + filled, 0, now
                if received - reported >= _PROGRESS_BYTES or (
                    received > reported and now - last_report >= _PROGRESS_SECONDS
                ):
                    reported, last_report = received, now
                    self._reactor.callFromThread(self._progress, received)
            if filled:
                self._sink(view[:filled])  # what was read before the end, a reset or stop
                received += filled
        except BaseException as exc:  # the sink's refusal, reported on the reactor thread
            error = exc
        finally:
            sock.close()  # the duplicate descriptor: the connection stays open
        self._reactor.callFromThread(self._finished, received, error, lost)


def socket_fd(transport: object) -> int | None:
    """The descriptor of a TCP connection without TLS, else None."""
    from twisted.internet import tcp  # here: importing it loads TLS, which a send may not need

    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        return transport.fileno()
    return None
