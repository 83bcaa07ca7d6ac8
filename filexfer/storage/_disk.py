"""Small helpers for stores on a local file system: errors, inline work, early
writeback, direct I/O."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from filexfer._errors import TransferError

_T = TypeVar("_T")


def run_here(work: Callable[[], _T]) -> Deferred[_T]:
    """Run C{work} now, in this thread; its result or failure as a Deferred."""
    return maybeDeferred(work)


WRITEBACK_WINDOW = 16 << 20
"""Bytes of a file written since its last L{start_writeback} that start the next one."""

_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's C{sync_file_range(2)} from the C library (Python's os lacks it), or None."""
    try:
        function: Any = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing C{length} bytes at C{offset} of C{fd} to disk, now.

    Without it a received file stays dirty in the page cache until the
    final fsync, which then writes all of it while the sender waits; started
    a window at a time, the disk works while the bytes arrive and the fsync
    finds little left (1 GiB here: 0.59 s written + fsynced, 0.37 s with
    it).  C{SYNC_FILE_RANGE_WRITE} does not wait; where it is missing,
    C{POSIX_FADV_DONTNEED} starts the same writeback (and drops the pages
    once clean).  An optimisation only: errors are left to the fsync.
    """
    if _SYNC_RANGE is not None:
        _SYNC_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
        return
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):
        pass


DIRECT_ALIGN = 4096
"""Offsets, lengths and buffer addresses of direct writes are multiples of
this: the logical block size of nearly every disk (O_DIRECT's rule, open(2),
"O_DIRECT"); on a disk with larger blocks the first direct write fails with
EINVAL and the file goes through the page cache instead."""


class DirectWriter:
    """Writes the aligned blocks of a file being received past the page cache.

    A received file is written once, hashed from the receive buffer and
    fsynced; copying it into the page cache first was 77 % of the receiving
    thread's time here (``perf record`` on twistd during ``bench/tcp.py``:
    ``copy_folio_from_iter_atomic``), and the fsync then writes it all out
    again.  With C{O_DIRECT} the disk reads the bytes from the buffer:
    1 GiB cost 0.07 CPU-seconds instead of 0.57-3.0 (docs/performance.md).
    The descriptor is a second open of the same file (through
    C{/proc/self/fd}, so a rename cannot swap the file under it), made at
    the first aligned write, in the writing thread.

    Where direct I/O is refused (a file system without it, a buffer or disk
    with other alignment: C{EINVAL}), L{write} answers 0 from then on and the
    caller writes through the page cache as before.  The final fsync is
    still needed: direct writes may sit in the disk's own cache, and the
    file's size and blocks are metadata.
    """

    def __init__(self, fd: int) -> None:
        self._source = fd
        self._fd: int | None = None
        self._usable = hasattr(os, "O_DIRECT")

    def write(self, data: memoryview, offset: int) -> int:
        """Write a prefix of C{data} at byte C{offset} of the file; return its length.

        Writes only whole L{DIRECT_ALIGN} blocks at aligned offsets: 0 when
        C{offset} or C{len(data)} is not aligned, or direct I/O is refused;
        less than all of C{data} when the disk took less (the caller writes
        the rest through the page cache).

        @raise OSError: the disk's refusal (C{ENOSPC}, C{EIO}, ...) of a write.
        """
        if not self._usable or offset % DIRECT_ALIGN or len(data) % DIRECT_ALIGN:
            return 0
        if self._fd is None:
            try:
                self._fd = os.open(f"/proc/self/fd/{self._source}", os.O_WRONLY | os.O_DIRECT)
            except OSError:  # no /proc, no O_DIRECT here, a sandbox's refusal: nothing lost
                self._usable = False
                return 0
        written = 0
        try:
            while written < len(data) and written % DIRECT_ALIGN == 0:
                written += os.pwrite(self._fd, data[written:], offset + written)
        except OSError as exc:
            if written or exc.errno not in _NO_DIRECT_IO:
                raise
            self._usable = False
        return written  # short only when the disk took less; the caller writes the rest

    def close(self) -> None:
        """Close the second descriptor (the file stays open through the first)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_NO_DIRECT_IO = frozenset({errno.EINVAL, errno.EOPNOTSUPP})
"""What write(2) answers where a direct write cannot be made (a buffer or
disk with other alignment, a file system without it)."""


def write_error(failure: Failure) -> TransferError:
    """The refusal for a background write that failed."""
    error = failure.value
    if isinstance(error, TransferError):
        return error
    if isinstance(error, OSError):
        return os_error(error, "write")
    return TransferError(500, f"cannot write: {failure.getErrorMessage()}")


def os_error(exc: OSError, action: str) -> TransferError:
    """The refusal (507, 400, 403 or 500) for an C{OSError} while trying to C{action}."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferError(507, "no space left on the server")
    if exc.errno == errno.ENAMETOOLONG:
        return TransferError(400, "a name is too long for the server's file system")
    if exc.errno == errno.ENOTDIR:
        return TransferError(
            403,
            f"cannot {action}: a directory on the path is a file on the server; "
            "choose another remote directory",
        )
    if exc.errno == errno.ELOOP:
        return TransferError(
            403,
            f"cannot {action}: the path goes through a symlink on the server, "
            "which it does not follow; choose another remote directory",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TransferError(403, f"cannot {action}: permission denied")
    return TransferError(500, f"cannot {action}: {exc.strerror}")
