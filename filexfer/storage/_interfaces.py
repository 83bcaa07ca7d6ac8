"""What a store is: L{IStorage}, L{IUpload}, L{IReadSource} and the L{Receipt} of a stored file.

A store keeps files by relative path (docs/protocol.md, "Paths and
storage"); the TCP receiver and the TFTP server talk to it only
through these interfaces, so a second store (an object store) sits beside
L{filexfer.storage.DirectoryStorage} without either knowing the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from filexfer._hashing import DigestName
from filexfer._receipt import Receipt  # re-exported: storage users import it from here

ConflictPolicy = Literal["rename", "overwrite", "refuse"]
CONFLICT_POLICIES: tuple[ConflictPolicy, ...] = ("rename", "overwrite", "refuse")


def policy_for(on_conflict: ConflictPolicy, exact_name: bool) -> ConflictPolicy:
    """The conflict policy an upload gets: C{rename} is C{refuse} for an exact name.

    A sender that cannot learn another name (TFTP: its WRQ is answered with
    ACKs, never with a name) must not have its file stored as C{name (1).ext}
    while it reports C{name.ext}: its upload replaces the file atomically
    (C{overwrite}) or is refused (409, TFTP ERROR 6).
    """
    return "refuse" if exact_name and on_conflict == "rename" else on_conflict


_T = TypeVar("_T")
BlockingRunner = Callable[[Callable[[], _T]], "Deferred[_T]"]
"""Runs blocking work somewhere (a thread pool, or inline) and fires with its result."""


class IUpload(Interface):
    """One file being received."""

    path = Attribute("The relative path that was asked for.")
    offset = Attribute("Bytes already held from an interrupted upload; data continues here.")
    received = Attribute("Bytes held so far, the offset included.")
    expected_size = Attribute("The announced size, or None.")
    stored = Attribute(
        "A Receipt when this exact file is already stored (established by the"
        " SHA256 the sender announced), else None."
    )
    prefix_sha256 = Attribute(
        "The hex digest (by C{digest}: SHA-256 unless begin() asked for another) of"
        " the bytes [0, offset) held from an interrupted upload, for the sender to"
        " check against its own file; None when the held bytes are a stored file"
        " that the sender must prove with its digest instead."
    )
    digest = Attribute(
        "The receipt digest this upload computes and checks: 'sha256' or 'blake3'"
        " (what begin() was given).  A store written before BLAKE3 may leave it"
        " out: readers take a missing one as 'sha256'."
    )

    def write(data: bytes) -> None:
        """Append C{data}; raise L{TransferError} (413, 422, 507) to stop."""

    def check(additional: int) -> None:
        """Raise L{TransferError} (413, 422, 507) if C{additional} more bytes would break a limit.

        Nothing is written: a receiver that gathers bytes before it writes
        them (TFTP) refuses the datagram that breaks a rule instead of
        acknowledging it.
        """

    def finish(sha256: str | None = None) -> Deferred[Receipt]:
        """Verify, fsync and move the file into place; fire with its receipt.

        Fails with L{TransferError} (422 short or mismatched, 409 exists).

        @param sha256: the sender's digest of its whole file (by the upload's
            C{digest}: SHA-256 unless begin() asked for another), sent after
            the data (the FX/1 trailer); the stored bytes must hash to it.
        """

    def abort(keep_partial: bool) -> None:
        """Stop: discard the bytes, or keep them for a later resume."""


class IReadSource(Interface):
    """A stored file opened for reading, in order, without blocking the reactor.

    A local file answers at once (its Deferreds have fired already); an
    object store fetches ranges meanwhile.  A later reader may chain
    several sources (one after another).
    """

    size = Attribute("The file's size in bytes.")

    def read(length: int) -> Deferred[bytes]:
        """Fire with the next bytes, at most C{length} (about that many), C{b""} at the end.

        Fails with L{TransferError} (503 when a store is unreachable).
        Call again only after the previous read has fired.
        """

    def close() -> None:
        """Release the file; further reads are not allowed."""


class IDirectUpload(IUpload):
    """An upload a thread can write into directly: the plain-TCP fast path (optional).

    A store that does not provide it is fed through L{IUpload.write} on the
    reactor thread, as before.
    """

    def direct() -> Callable[[memoryview], None]:
        """Hand the writing of the next bytes to one thread; return its sink.

        Called on the reactor thread while nothing waits to be written.  The
        sink checks the limits for, writes and hashes the chunk it is given,
        in the calling thread (blocking), and raises L{TransferError} (413,
        422, 500, 507) to stop; it keeps no reference to the chunk, so the
        caller may reuse its buffer.  Until L{direct_done}, C{finish} waits
        and C{abort} defers closing the file (the sink refuses once aborted).
        """

    def direct_done() -> None:
        """The thread will not call the sink again (called on the reactor thread)."""


class IStorage(Interface):
    """A place that stores uploads and serves downloads by relative path."""

    digests = Attribute(
        "The receipt digests begin() accepts, by name (a tuple: 'sha256' first,"
        " 'blake3' when the store can compute it).  A store without this attribute"
        " is taken to offer ('sha256',): receivers never ask it for another."
    )

    def begin(
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        *,
        trailer: bool = False,
        fresh: bool = False,
        exact_name: bool = False,
        digest: DigestName = "sha256",
    ) -> Deferred[IUpload]:
        """Start receiving C{path}; fire with the upload, or fail with L{TransferError}.

        @param size: the announced size in bytes, or None (then limits apply
            as bytes arrive).
        @param sha256: the announced hex SHA-256 of the whole file, or None.
        @param mtime_ns: the announced modification time, ns since the epoch.
        @param trailer: the sender will present its SHA-256 after the data
            (C{finish(sha256)}): resume by Size and Mtime and the stored-file
            check become safe (docs/protocol.md, I1 and I2).
        @param fresh: ignore any held bytes and stored candidates; start at 0.
        @param exact_name: the sender cannot learn another name (TFTP): the
            file is stored under C{path} or not at all.  The C{rename}
            policy acts as C{refuse} (L{policy_for}): an existing C{path} is
            refused with 409 now, and one that appears meanwhile with 409 at
            C{finish}; under C{overwrite} an existing entry that is not a
            regular file (a directory, a symlink) is refused with 409 now.
            No copy under another name (C{name (1).ext}) ever answers for it.
        @param digest: the receipt digest (one of C{digests}) the upload
            computes over the whole file, over a held prefix
            (C{prefix_sha256}), over stored candidates, and checks against the
            trailer given to C{finish}.  Anything but C{"sha256"} comes with
            C{sha256=None} (an announced SHA-256 makes the receiver choose
            SHA-256), so the receipt's C{algorithm} is C{digest}.  Receivers
            pass it only when it is not C{"sha256"}.
        """

    def open_read(path: str) -> Deferred[IReadSource]:
        """Open a stored file for reading; fail with L{TransferError} 400/403/404 (503)."""
