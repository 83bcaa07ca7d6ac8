"""One file being received: its temporary file, its background writer, its checks.

L{Upload} writes and hashes the received bytes (in a thread pool when its
store says so, pausing the producer while too much waits), verifies them
against any announced or trailing SHA-256, and asks its L{UploadSite} to
place the file.  L{AlreadyStored} and L{StoredCandidate} are the uploads
that receive nothing: the file is there (by the announced SHA-256), or may
be (by Size and Mtime, proved by the sender's trailer).
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any, BinaryIO, Protocol

from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._hashing import DEFAULT_DIGEST, DigestName, hash_prefix
from filexfer._log import log
from filexfer.storage._backlog import Backlog
from filexfer.storage._disk import (
    WRITEBACK_WINDOW,
    DirectWriter,
    os_error,
    start_writeback,
    write_error,
)
from filexfer.storage._interfaces import BlockingRunner, IDirectUpload, IUpload, Receipt
from filexfer.storage._rules import check_finished

_QUEUE_HIGH = 4 << 20
"""Queued bytes of one upload above which its producer (the socket) is paused."""
_QUEUE_LOW = 1 << 20
"""Queued bytes below which a paused producer is resumed."""
_PARALLEL_BATCH = 1 << 20
"""Batches this large are written and hashed in two threads at once."""
_SPACE_WINDOW = 16 << 20
"""A direct writer checks the free space once per this many bytes, for the
bytes up to the window's end (statvfs per chunk cost more than the write)."""


class UploadSite(Protocol):
    """What an L{Upload} needs from the store it belongs to."""

    run_blocking: BlockingRunner[Any]

    def check_size(self, size: int) -> None:
        """Refuse (413) a file of C{size} bytes."""

    def check_space(self, incoming: int, where: str | None = None) -> None:
        """Refuse (507) C{incoming} more bytes on the file system of C{where}."""

    def place(
        self,
        temp_name: str,
        path: str,
        size: int,
        digest: str,
        mtime_ns: int | None,
        exact_name: bool = False,
        algorithm: DigestName = DEFAULT_DIGEST,
    ) -> str:
        """Give the finished temporary file its final name; return the relative path.

        With C{exact_name} that name is C{path} or none (L{policy_for}); the
        digest is by C{algorithm}.
        """

    def discard(self, temp_name: str) -> None:
        """Remove a temporary or partial file."""


@implementer(IDirectUpload, IConsumer)
class Upload(Backlog):
    """A file being received into the state directory of a L{DirectoryStorage}."""

    def __init__(
        self,
        storage: UploadSite,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        temp_name: str,
        handle: BinaryIO,
        resumable: bool,
        run_writes: BlockingRunner[Any] | None = None,
        *,
        exact_name: bool = False,
        digest: DigestName = DEFAULT_DIGEST,
    ) -> None:
        super().__init__()
        self.path = path
        self.digest = digest
        self.expected_size = size
        self._sha256 = sha256
        self._mtime_ns = mtime_ns
        self._storage = storage
        self._temp_name = temp_name
        self._handle = handle
        self.resumable = resumable
        """Whether an aborted upload's bytes are kept (C{abort(keep_partial=True)})."""
        self.exact_name = exact_name
        """Stored under C{path} or not at all (L{IStorage.begin}'s C{exact_name})."""
        handle.seek(0, os.SEEK_END)
        self.offset = handle.tell()
        if size is not None and self.offset > size:
            handle.truncate(0)
            self.offset = 0
        handle.seek(0)
        self._digest = hash_prefix(
            handle, self.offset, name=digest
        )  # begin() runs this off the reactor
        self.prefix_sha256: str | None = self._digest.hexdigest()
        self.received = self.offset
        self.stored: Receipt | None = None
        self._closed = False
        # Writing and hashing in the background (run_writes): chunks wait in
        # _queue while one batch is in flight; above _QUEUE_HIGH bytes the
        # registered producer is paused, so memory stays bounded.
        self._run_writes = run_writes
        self._queue: list[bytes] = []
        self._queued = 0
        self._in_flight_bytes = 0
        self._aborted = False
        self._error: TransferError | None = None
        self._space_checked = 0
        """A direct writer has checked the free space for bytes up to here."""
        self._writeback_from = self.offset
        """Bytes before this offset have had their writeback started (L{start_writeback})."""
        self._direct_writer: DirectWriter | None = None
        """Writes the direct sink's aligned blocks past the page cache (L{direct})."""

    def check(self, additional: int) -> None:
        total = self.received + additional
        if self.expected_size is not None and total > self.expected_size:
            raise TransferError(422, f"more bytes than the announced Size {self.expected_size}")
        self._storage.check_size(total)
        # Bytes still queued or being written are not on the disk yet: they
        # count against the reserve too, or a fast sender outruns the check.
        unwritten = self._queued + self._in_flight_bytes
        self._storage.check_space(unwritten + additional, os.path.dirname(self._temp_name))

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self.check(len(data))
        if self._run_writes is None:
            try:
                self._handle.write(data)
            except OSError as exc:
                raise os_error(exc, "write") from exc
            self._digest.update(data)
            self.received += len(data)
            return
        self.received += len(data)
        self._queue.append(data)
        self._queued += len(data)
        if self._in_flight is None:
            self._start_batch()
        elif self._queued >= _QUEUE_HIGH:
            self._pause()

    # -- IDirectUpload: one thread writes ---------------------------------------

    def direct(self) -> Any:
        assert self._in_flight is None and not self._queue, "bytes still wait to be written"
        self._in_flight = Deferred()  # finish() and abort() wait for direct_done()
        self._space_checked = self.received
        self._direct_writer = DirectWriter(self._handle.fileno())
        return self._take

    def _take(self, data: memoryview) -> None:
        """The direct sink: check, write and hash C{data} in the calling thread."""
        if self._aborted or self._closed:
            raise TransferError(500, "the upload was stopped")
        size = len(data)
        total = self.received + size
        if self.expected_size is not None and total > self.expected_size:
            raise TransferError(422, f"more bytes than the announced Size {self.expected_size}")
        self._storage.check_size(total)
        if total > self._space_checked:
            window = max(size, _SPACE_WINDOW)
            if self.expected_size is not None:
                window = max(size, min(window, self.expected_size - self.received))
            self._storage.check_space(window, os.path.dirname(self._temp_name))
            self._space_checked = self.received + window
        try:
            # aligned blocks past the page cache; the rest (a resumed file's
            # first bytes, the last ones) through it
            written = self._direct_writer.write(data, self.received) if self._direct_writer else 0
            while written < size:  # a raw file may write less than asked
                written += os.pwrite(self._handle.fileno(), data[written:], self.received + written)
        except OSError as exc:
            raise os_error(exc, "write") from exc
        self._digest.update(data)
        self.received = total
        self._start_writeback(total)

    def _start_writeback(self, written: int) -> None:
        """Start the disk on the last window once a window's worth is written (writer thread)."""
        if written - self._writeback_from >= WRITEBACK_WINDOW:
            start_writeback(
                self._handle.fileno(), self._writeback_from, written - self._writeback_from
            )
            self._writeback_from = written

    def direct_done(self) -> None:
        if self._direct_writer is not None:
            self._direct_writer.close()
            self._direct_writer = None
        if not self._closed:
            self._handle.seek(self.received)  # the sink wrote with pwrite
        self._batch_done(None)

    def _start_batch(self) -> None:
        batch, self._queue, self._queued = self._queue, [], 0
        self._in_flight_bytes = sum(map(len, batch))
        run = self._run_writes
        assert run is not None
        if self._in_flight_bytes >= _PARALLEL_BATCH:
            # hashlib and write() both release the GIL: do them side by side
            both = [run(lambda: self._write_all(batch)), run(lambda: self._hash_all(batch))]
            done: Deferred[Any] = DeferredList(both, fireOnOneErrback=True, consumeErrors=True)
        else:
            done = run(lambda: self._write_and_hash(batch))
        self._in_flight = done
        done.addBoth(self._batch_done)

    def _write_all(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._handle.write(chunk)
        self._start_writeback(self._handle.tell())

    def _hash_all(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._digest.update(chunk)

    def _write_and_hash(self, batch: list[bytes]) -> None:
        self._write_all(batch)
        self._hash_all(batch)

    def _batch_done(self, result: Any) -> None:
        self._in_flight = None
        self._in_flight_bytes = 0
        if isinstance(result, Failure):
            if isinstance(result.value, FirstError):
                result = result.value.subFailure
            self._error = write_error(result)
            self._queue, self._queued = [], 0
        elif self._queue and not self._closed:
            self._start_batch()
        self._settled(self._error is not None or self._queued < _QUEUE_LOW)

    def finish(self, sha256: str | None = None) -> Deferred[Receipt]:
        self.unregisterProducer()
        if self._in_flight is None:
            return self._finish_written(sha256)
        return self._idle().addCallback(lambda _: self._finish_written(sha256))

    def _finish_written(self, claimed: str | None) -> Deferred[Receipt]:
        if self._closed or self._aborted:
            return fail(TransferError(500, "the upload was aborted"))
        if self._error is not None:
            self.abort(keep_partial=False)
            return fail(self._error)
        digest = self._digest.hexdigest()
        refused = check_finished(
            self.received,
            self.expected_size,
            self.offset,
            digest,
            self._sha256,
            claimed,
            self.digest,
        )
        if refused is not None:
            error, keep = refused
            self.abort(keep_partial=keep)
            return fail(error)
        return self._storage.run_blocking(lambda: self._make_durable(digest))

    def _make_durable(self, digest: str) -> Receipt:
        try:
            self._handle.flush()
            if self._mtime_ns is not None:
                os.utime(self._handle.fileno(), ns=(time.time_ns(), self._mtime_ns))
            os.fsync(self._handle.fileno())
            stored_path = self._storage.place(
                self._temp_name,
                self.path,
                self.received,
                digest,
                self._mtime_ns,
                self.exact_name,
                self.digest,
            )
        except TransferError:
            self._discard_here()
            raise
        except OSError as exc:
            self._discard_here()
            raise os_error(exc, "store the file") from exc
        self._close()
        return Receipt(self.received, digest, stored_path, self.digest)

    def _discard_here(self) -> None:
        """Remove the file and close it in this thread (a worker of C{run_blocking})."""
        if not self._closed:
            self._storage.discard(self._temp_name)
            self._close()

    def abort(self, keep_partial: bool) -> None:
        if self._closed or self._aborted:
            return  # the first abort decides
        self._aborted = True
        self.unregisterProducer()
        self._queue, self._queued = [], 0
        keep = keep_partial and self.resumable
        if not keep:
            # Unlinking an open file only removes its name, at once (a new
            # upload of the same file starts a new one, and nothing is left to
            # see); a worker thread may still write to the descriptor, and the
            # blocks are freed when it is closed, which for a large file can
            # take long: that close runs through run_blocking.
            self._storage.discard(self._temp_name)
        if self._in_flight is not None:
            # a worker thread still writes to the handle: close it afterwards
            self._idle().addCallback(lambda _: self._close_aborted(keep))
        else:
            self._close_aborted(keep)

    def _close_aborted(self, keep: bool) -> None:
        if keep:
            self._close()  # closing a kept file is cheap
            return
        self._closed = True
        closing = self._storage.run_blocking(self._handle.close)
        closing.addErrback(lambda failure: log.failure("closing a discarded upload", failure))

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._handle.close()  # also releases the resume lock


@implementer(IUpload)
class AlreadyStored:
    """The exact file is already in place (the sender's SHA256 says so): nothing to receive."""

    prefix_sha256 = None

    def __init__(self, receipt: Receipt) -> None:
        self.digest = receipt.algorithm
        self.path = receipt.path
        self.expected_size = receipt.size
        self.offset = self.received = receipt.size
        self.stored: Receipt | None = receipt

    def write(self, data: bytes) -> None:
        self.check(len(data))

    def check(self, additional: int) -> None:
        if additional:
            raise TransferError(422, "the file is already stored; no bytes expected")

    def finish(self, sha256: str | None = None) -> Deferred[Receipt]:
        assert self.stored is not None
        if sha256 is not None and sha256 != self.stored.digest:
            return fail(TransferError(422, "SHA256 mismatch with the announced SHA256"))
        return succeed(self.stored)

    def abort(self, keep_partial: bool) -> None:
        pass


@implementer(IUpload)
class StoredCandidate:
    """Stored files with the sender's Size and Mtime: the sender proves its digest.

    The server tells nothing about these files (I2): the sender hashes its own
    file and presents the digest (the trailer) to C{finish}, which answers with
    the copy holding exactly those bytes, or 422 when none does (the sender
    then sends the file with C{fresh}).
    """

    prefix_sha256 = None
    stored = None

    def __init__(
        self, path: str, size: int, digests: dict[str, str], digest: DigestName = DEFAULT_DIGEST
    ) -> None:
        self.digest = digest
        """Which digest C{digests} (stored path -> hex) are, and the trailer is."""
        self.path = path
        self.expected_size = size
        self.offset = self.received = size
        self._digests = digests

    def write(self, data: bytes) -> None:
        self.check(len(data))

    def check(self, additional: int) -> None:
        if additional:
            raise TransferError(422, "only the SHA-256 trailer is expected")

    def finish(self, sha256: str | None = None) -> Deferred[Receipt]:
        for stored_path, digest in self._digests.items():
            if sha256 is not None and hmac.compare_digest(digest, sha256):
                return succeed(Receipt(self.expected_size, digest, stored_path, self.digest))
        return fail(
            TransferError(
                422, "the stored file with this Size and Mtime differs from yours; send it again"
            )
        )

    def abort(self, keep_partial: bool) -> None:
        pass
