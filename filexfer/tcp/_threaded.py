"""Sending over plain TCP off the reactor thread: sendfile in one thread, SHA-256 in another."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from typing import Any

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
        try:
            while position < self._end and not self._stopped.is_set():
                chunk = os.pread(handle, min(HASH_READ, self._end - position), position)
                if not chunk:
                    break
                self._digest.update(chunk)
                position += len(chunk)
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


def socket_fd(transport: object) -> int | None:
    """The descriptor of a TCP connection without TLS, else None."""
    from twisted.internet import tcp  # here: importing it loads TLS, which a send may not need

    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        return transport.fileno()
    return None
