"""Small helpers for stores on a local file system: hashing, errors, inline work."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from filexfer._errors import TransferError

_T = TypeVar("_T")
_HASH_CHUNK = 1 << 20


def run_here(work: Callable[[], _T]) -> Deferred[_T]:
    """Run C{work} now, in this thread; its result or failure as a Deferred."""
    return maybeDeferred(work)


def hash_file(handle: BinaryIO, limit: int | None = None) -> Any:
    """The SHA-256 state after C{limit} bytes (all, when None) read from C{handle}."""
    digest = hashlib.sha256()
    remaining = limit
    while remaining is None or remaining > 0:
        chunk = handle.read(_HASH_CHUNK if remaining is None else min(_HASH_CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return digest


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
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return TransferError(403, f"cannot {action}: the path crosses a symlink or a file")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TransferError(403, f"cannot {action}: permission denied")
    return TransferError(500, f"cannot {action}: {exc.strerror}")
