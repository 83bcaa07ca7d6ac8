"""Small helpers for stores on a local file system: errors, inline work, early writeback."""

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
