"""L{FileSource}: an open local file as an L{IReadSource}, answering at once."""

from __future__ import annotations

from typing import BinaryIO

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from filexfer.storage._interfaces import IReadSource


@implementer(IReadSource)
class FileSource:
    """Reads C{handle} in order; every Deferred has fired when returned (the fast path).

    A local read of a few hundred KiB does not wait long enough to be worth a
    thread: a TFTP window is read and sent in the same turn of the reactor.
    """

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size

    def read(self, length: int) -> Deferred[bytes]:
        """The next C{length} bytes (fewer at the end); an C{OSError} as a failure."""
        try:
            return succeed(self.handle.read(length))
        except OSError:
            return fail()

    def close(self) -> None:
        """Close the file."""
        self.handle.close()
