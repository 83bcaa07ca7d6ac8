"""Small helpers for stores on a local file system: errors, inline work."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from filexfer._errors import TransferError

_T = TypeVar("_T")


def run_here(work: Callable[[], _T]) -> Deferred[_T]:
    """Run C{work} now, in this thread; its result or failure as a Deferred."""
    return maybeDeferred(work)


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
