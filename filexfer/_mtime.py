"""Modification times: the range a peer may announce and the range a disk keeps.

An FX/1 C{Mtime} becomes integer nanoseconds since the epoch, bounded by
L{NS_MIN} and L{NS_MAX}: the signed 64-bit nanoseconds that C{utimensat(2)}
takes (about 1677-09-21 to 2262-04-11).  Inside that range a file system may
keep less: ext4 clamps to 1901-12-13 (and 2446), FAT to 1980-2107, and
neither says so.  L{probe_mtime_range} asks the file system itself, once;
L{check_mtime} then refuses, with 400 at the handshake, a time it would not
keep as given.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta

from filexfer._errors import TransferError

NS_MIN = -(2**63)
"""The earliest modification time, in nanoseconds, a peer may announce."""

NS_MAX = 2**63 - 1
"""The latest modification time, in nanoseconds, a peer may announce."""

_TIME_T_32 = (-(2**31) * 10**9, (2**31 - 1) * 10**9)

_LOW_CANDIDATES = (NS_MIN, _TIME_T_32[0], 0)
_HIGH_CANDIDATES = (NS_MAX, _TIME_T_32[1], 0)
"""Extremes to try, most ambitious first; a file system that refuses one
(EINVAL, EOVERFLOW) instead of clamping it is asked the next."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def probe_mtime_range(directory: str) -> tuple[int, int]:
    """The earliest and latest modification times the file system under C{directory} keeps.

    Creates a temporary file in C{directory} (removed at once; only its
    descriptor is used), sets its times to extreme values and reads back
    what the kernel kept: file systems clamp silently.  Call it once per
    root, not per upload.

    @return: C{(min_ns, max_ns)}, nanoseconds since the epoch.
    @raise OSError: when no file can be created in C{directory}, or when
        the file system refuses even the epoch.
    """
    fd, path = tempfile.mkstemp(prefix=".mtime-probe-", dir=directory)
    try:
        os.unlink(path)
        return _kept(fd, _LOW_CANDIDATES), _kept(fd, _HIGH_CANDIDATES)
    finally:
        os.close(fd)


def _kept(fd: int, candidates: tuple[int, ...]) -> int:
    """Set each candidate in turn; the first one accepted, as the kernel kept it."""
    for candidate in candidates[:-1]:
        try:
            os.utime(fd, ns=(candidate, candidate))
        except (OSError, OverflowError):
            continue
        return os.fstat(fd).st_mtime_ns
    os.utime(fd, ns=(candidates[-1], candidates[-1]))
    return os.fstat(fd).st_mtime_ns


def check_mtime(mtime_ns: int, allowed: tuple[int, int]) -> None:
    """Refuse a modification time the file system would not keep as given.

    @param allowed: C{(min_ns, max_ns)}, as L{probe_mtime_range} found it.
    @raise TransferError: 400, with the time and the range in one line.
    """
    low, high = allowed
    if not low <= mtime_ns <= high:
        raise TransferError(
            400,
            f"Mtime {describe_ns(mtime_ns)} is outside what this server's file system "
            f"can store ({describe_ns(low)} to {describe_ns(high)})",
        )


def describe_ns(mtime_ns: int) -> str:
    """Nanoseconds since the epoch as a UTC date and time, for people.

    Times beyond what C{datetime} can show (before year 1 or after 9999)
    are given in seconds, and absurd ones only by their order of magnitude.
    """
    seconds = mtime_ns // 10**9
    if abs(seconds) >= 10**20:
        return f"more than 10**20 s {'before' if seconds < 0 else 'after'} the epoch"
    try:
        moment = _EPOCH + timedelta(microseconds=mtime_ns // 1000)
    except OverflowError:
        return f"{seconds} s since the epoch"
    return moment.isoformat(" ", "seconds").removesuffix("+00:00") + " UTC"
