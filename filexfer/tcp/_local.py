"""The local side of a send: what may be sent, opened without blocking, and its prefix hashed."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from filexfer._errors import TransferError
from filexfer._hashing import DEFAULT_DIGEST, DigestName, Hasher, ShortFile
from filexfer._hashing import hash_prefix as _hash_prefix
from filexfer._names import validate_name, validate_path
from filexfer._text import escape
from filexfer.tcp._errors import SendError


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for reading, never blocking (a FIFO, a device).

    The file is opened with C{O_NONBLOCK} and checked with C{fstat}, so
    that what is opened is what is checked.

    @raise SendError: it cannot be opened, or it is not a regular file.
    """
    text = os.fspath(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(text, flags)
    except OSError as exc:
        raise SendError(f"cannot read {text}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SendError(f"cannot send {text}: {describe_mode(mode)}, not a regular file")
    return os.fdopen(fd, "rb")


def describe_mode(mode: int) -> str:
    """What kind of file C{mode} (an C{st_mode}) is, in a few words."""
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISREG, "a regular file"),
    ]
    return next((words for test, words in kinds if test(mode)), "a special file")


def check_remote_name(remote: str, classic: bool) -> None:
    """Apply the server's rules (filexfer._names) to the name a file is sent under.

    @raise SendError: the server would refuse it, or store it differently.
    """
    try:
        if classic:
            validate_name(remote)
        else:
            validate_path(remote)
    except TransferError as error:
        raise SendError(
            f"cannot be sent under the name {escape(repr(remote))}: {error.reason}"
        ) from None


def hash_prefix(handle: BinaryIO, length: int, name: DigestName = DEFAULT_DIGEST) -> Hasher:
    """The hash state (digest C{name}) after the first C{length} bytes of C{handle}.

    @raise SendError: the file is shorter than C{length}.
    """
    handle.seek(0)
    try:
        return _hash_prefix(handle, length, exact=True, name=name)
    except ShortFile as short:
        raise SendError(str(short)) from None
