"""Where received bytes touch the disk.

L{IStorage} is what the TCP receiver and the TFTP server store through;
L{DirectoryStorage} keeps files under one root directory:

 - every path is validated (L{filexfer._names}) and every directory is
   opened relative to its parent with C{O_NOFOLLOW}, so nothing is created,
   opened for writing or followed outside the root;
 - bytes go to a temporary file in a hidden state directory on the
   target's file system (the root's, or one at the top of a mount point
   inside the root) and are linked into place only when complete, fsynced
   and verified;
 - an interrupted FX/1 upload keeps its partial for a later resume;
 - an existing file is never silently destroyed (policy C{rename},
   C{overwrite} or C{refuse}).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, Literal, TypeVar, cast

import attrs
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from filexfer._conflicts import name_limit, numbered_name  # numbered_name: re-exported
from filexfer._errors import TransferError
from filexfer._mtime import check_mtime, probe_mtime_range
from filexfer._names import STATE_DIR, validate_path

ConflictPolicy = Literal["rename", "overwrite", "refuse"]
CONFLICT_POLICIES: tuple[ConflictPolicy, ...] = ("rename", "overwrite", "refuse")

_T = TypeVar("_T")
BlockingRunner = Callable[[Callable[[], _T]], "Deferred[_T]"]

_HASH_CHUNK = 1 << 20
_MAX_RENAME_TRIES = 10_000
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_QUEUE_HIGH = 4 << 20
"""Queued bytes of one upload above which its producer (the socket) is paused."""
_QUEUE_LOW = 1 << 20
"""Queued bytes below which a paused producer is resumed."""
_PARALLEL_BATCH = 1 << 20
"""Batches this large are written and hashed in two threads at once."""


@attrs.frozen
class Receipt:
    """What a finished upload stored: the server's C{done} line."""

    size: int
    sha256: str
    path: str


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
        "The hex SHA-256 of the bytes [0, offset) held from an interrupted upload,"
        " for the sender to check against its own file; None when the held bytes"
        " are a stored file that the sender must prove with its digest instead."
    )

    def write(data: bytes) -> None:
        """Append C{data}; raise L{TransferError} (413, 422, 507) to stop."""

    def finish(sha256: str | None = None) -> Deferred[Receipt]:
        """Verify, fsync and move the file into place; fire with its receipt.

        @param sha256: the sender's SHA-256 of its whole file, sent after the
            data (the FX/1 trailer); the stored bytes must hash to it.
        Fails with L{TransferError} (422 short or mismatched, 409 exists).
        """

    def abort(keep_partial: bool) -> None:
        """Stop: discard the bytes, or keep them for a later resume."""


class IStorage(Interface):
    """A place that stores uploads and serves downloads by relative path."""

    def begin(
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        *,
        trailer: bool = False,
        fresh: bool = False,
    ) -> Deferred[IUpload]:
        """Start receiving C{path}; fire with the upload, or fail with L{TransferError}.

        @param size: the announced size in bytes, or None (then limits apply
            as bytes arrive).
        @param sha256: the announced hex SHA-256 of the whole file, or None.
        @param mtime_ns: the announced modification time, ns since the epoch.
        @param trailer: the sender will present its SHA-256 after the data
            (C{finish(sha256)}): resume by Size and Mtime and the stored-file
            check become safe (PROTOCOL.md 1.2.0, I1 and I2).
        @param fresh: ignore any held bytes and stored candidates; start at 0.
        """

    def open_read(path: str) -> tuple[BinaryIO, int]:
        """Open a stored file for reading: (file, size); L{TransferError} 404/403."""


def _run_here(work: Callable[[], _T]) -> Deferred[_T]:
    return maybeDeferred(work)


def _hash_file(handle: BinaryIO, limit: int | None = None) -> Any:
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


def _write_error(failure: Failure) -> TransferError:
    """The refusal for a background write that failed."""
    error = failure.value
    if isinstance(error, TransferError):
        return error
    if isinstance(error, OSError):
        return _os_error(error, "write")
    return TransferError(500, f"cannot write: {failure.getErrorMessage()}")


def _os_error(exc: OSError, action: str) -> TransferError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferError(507, "no space left on the server")
    if exc.errno == errno.ENAMETOOLONG:
        return TransferError(400, "a name is too long for the server's file system")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return TransferError(403, f"cannot {action}: the path crosses a symlink or a file")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TransferError(403, f"cannot {action}: permission denied")
    return TransferError(500, f"cannot {action}: {exc.strerror}")


@implementer(IUpload, IConsumer)
class _Upload:
    """A file being received into the state directory of a L{DirectoryStorage}."""

    def __init__(
        self,
        storage: DirectoryStorage,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        temp_name: str,
        handle: BinaryIO,
        resumable: bool,
        run_writes: BlockingRunner[Any] | None = None,
    ) -> None:
        self.path = path
        self.expected_size = size
        self._sha256 = sha256
        self._mtime_ns = mtime_ns
        self._storage = storage
        self._temp_name = temp_name
        self._handle = handle
        self._resumable = resumable
        handle.seek(0, os.SEEK_END)
        self.offset = handle.tell()
        if size is not None and self.offset > size:
            handle.truncate(0)
            self.offset = 0
        handle.seek(0)
        self._digest = _hash_file(handle, self.offset)  # begin() runs this off the reactor
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
        self._in_flight: Deferred[Any] | None = None
        self._in_flight_bytes = 0
        self._error: TransferError | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self._producer: IPushProducer | None = None
        self._paused = False

    # -- IConsumer: the transport is our producer ------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Pause C{producer} (a push producer) while too many bytes wait to be written."""
        self._producer = cast(IPushProducer, producer)  # a transport: it pauses and resumes

    def unregisterProducer(self) -> None:
        """Leave the producer alone from now on."""
        self._producer = None
        self._paused = False

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self.expected_size is not None and self.received + len(data) > self.expected_size:
            raise TransferError(422, f"more bytes than the announced Size {self.expected_size}")
        self._storage.check_size(self.received + len(data))
        # Bytes still queued or being written are not on the disk yet: they
        # count against the reserve too, or a fast sender outruns the check.
        unwritten = self._queued + self._in_flight_bytes
        self._storage.check_space(unwritten + len(data), os.path.dirname(self._temp_name))
        if self._run_writes is None:
            try:
                self._handle.write(data)
            except OSError as exc:
                raise _os_error(exc, "write") from exc
            self._digest.update(data)
            self.received += len(data)
            return
        self.received += len(data)
        self._queue.append(data)
        self._queued += len(data)
        if self._in_flight is None:
            self._start_batch()
        elif self._queued >= _QUEUE_HIGH and self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

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
            self._error = _write_error(result)
            self._queue, self._queued = [], 0
        elif self._queue and not self._closed:
            self._start_batch()
        if self._paused and (self._error is not None or self._queued < _QUEUE_LOW):
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()  # the next write() raises any error
        if self._in_flight is None:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _idle(self) -> Deferred[None]:
        """Fires once every queued byte is written and hashed (or failed)."""
        if self._in_flight is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def finish(self, sha256: str | None = None) -> Deferred[Receipt]:
        self.unregisterProducer()
        if self._run_writes is None:
            return self._finish_written(sha256)
        return self._idle().addCallback(lambda _: self._finish_written(sha256))

    def _finish_written(self, claimed: str | None) -> Deferred[Receipt]:
        if self._closed:
            return fail(TransferError(500, "the upload was aborted"))
        if self._error is not None:
            self.abort(keep_partial=False)
            return fail(self._error)
        if self.expected_size is not None and self.received < self.expected_size:
            self.abort(keep_partial=True)
            return fail(
                TransferError(
                    422, f"short upload: {self.received} of {self.expected_size} bytes arrived"
                )
            )
        digest = self._digest.hexdigest()
        if self._sha256 is not None and digest != self._sha256:
            self.abort(keep_partial=False)
            return fail(TransferError(422, f"SHA256 mismatch: received data hashes to {digest}"))
        if claimed is not None and digest != claimed:
            # I1: bytes that are not the sender's file as it is now never get a
            # final name, and a stale prefix is not offered again.
            self.abort(keep_partial=False)
            if self.offset:
                reason = (
                    f"the {self.offset} bytes held from an earlier upload differ from your"
                    " file; send it again from the start"
                )
            else:
                reason = "the file changed while it was sent (its SHA-256 differs)"
            return fail(TransferError(422, reason))
        return self._storage.run_blocking(lambda: self._make_durable(digest))

    def _make_durable(self, digest: str) -> Receipt:
        try:
            self._handle.flush()
            if self._mtime_ns is not None:
                os.utime(self._handle.fileno(), ns=(time.time_ns(), self._mtime_ns))
            os.fsync(self._handle.fileno())
            stored_path = self._storage.place(
                self._temp_name, self.path, self.received, digest, self._mtime_ns
            )
        except TransferError:
            self.abort(keep_partial=False)
            raise
        except OSError as exc:
            self.abort(keep_partial=False)
            raise _os_error(exc, "store the file") from exc
        self._close()
        return Receipt(self.received, digest, stored_path)

    def abort(self, keep_partial: bool) -> None:
        if self._closed:
            return
        self.unregisterProducer()
        self._queue, self._queued = [], 0
        if self._in_flight is not None:
            # a worker thread still writes to the handle: close it afterwards
            self._idle().addCallback(lambda _: self.abort(keep_partial))
            return
        if keep_partial and self._resumable:
            self._handle.flush()
        else:
            self._storage.discard(self._temp_name)
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._handle.close()  # also releases the resume lock


@implementer(IUpload)
class _AlreadyStored:
    """The exact file is already in place (the sender's SHA256 says so): nothing to receive."""

    prefix_sha256 = None

    def __init__(self, receipt: Receipt) -> None:
        self.path = receipt.path
        self.expected_size = receipt.size
        self.offset = self.received = receipt.size
        self.stored: Receipt | None = receipt

    def write(self, data: bytes) -> None:
        raise TransferError(422, "the file is already stored; no bytes expected")

    def finish(self, sha256: str | None = None) -> Deferred[Receipt]:
        assert self.stored is not None
        if sha256 is not None and sha256 != self.stored.sha256:
            return fail(TransferError(422, "SHA256 mismatch with the announced SHA256"))
        return succeed(self.stored)

    def abort(self, keep_partial: bool) -> None:
        pass


@implementer(IUpload)
class _StoredCandidate:
    """Stored files with the sender's Size and Mtime: the sender proves its digest.

    The server tells nothing about these files (I2): the sender hashes its own
    file and presents the digest (the trailer) to C{finish}, which answers with
    the copy holding exactly those bytes, or 422 when none does (the sender
    then sends the file with C{fresh}).
    """

    prefix_sha256 = None
    stored = None

    def __init__(self, path: str, size: int, digests: dict[str, str]) -> None:
        self.path = path
        self.expected_size = size
        self.offset = self.received = size
        self._digests = digests

    def write(self, data: bytes) -> None:
        raise TransferError(422, "only the SHA-256 trailer is expected")

    def finish(self, sha256: str | None = None) -> Deferred[Receipt]:
        for stored_path, digest in self._digests.items():
            if sha256 is not None and hmac.compare_digest(digest, sha256):
                return succeed(Receipt(self.expected_size, digest, stored_path))
        return fail(
            TransferError(
                422, "the stored file with this Size and Mtime differs from yours; send it again"
            )
        )

    def abort(self, keep_partial: bool) -> None:
        pass


@implementer(IStorage)
class DirectoryStorage:
    """Store files under C{root}, safely.

    @param on_conflict: what to do when the final name exists: C{"rename"}
        keeps both (C{name (1).ext}), C{"overwrite"} replaces it atomically,
        C{"refuse"} answers 409.
    @param run_blocking: runs fsync and rename, e.g. in a thread pool;
        by default inline.
    @param run_writes: runs the writing and hashing of received bytes, e.g.
        in a thread pool, one batch per upload at a time (in order); the
        upload then pauses the producer registered with it (L{IConsumer})
        while more than a few MiB wait.  By default inline, in C{write}.
    @param min_free: bytes of free space to keep; uploads that would eat
        into it are refused with 507.
    @param max_size: largest accepted file, or None.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        on_conflict: ConflictPolicy = "rename",
        *,
        run_blocking: BlockingRunner[Any] = _run_here,
        run_writes: BlockingRunner[Any] | None = None,
        min_free: int = 0,
        max_size: int | None = None,
    ) -> None:
        if on_conflict not in CONFLICT_POLICIES:
            raise ValueError(f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}")
        self.root = os.path.abspath(os.fspath(root))
        self.on_conflict = on_conflict
        self.run_blocking = run_blocking
        self.run_writes = run_writes
        self.min_free = min_free
        self.max_size = max_size
        os.makedirs(self.root, exist_ok=True)
        self._state = os.path.join(self.root, STATE_DIR)
        for sub in ("partial", "tmp", "digests"):
            os.makedirs(os.path.join(self._state, sub), exist_ok=True)
        self.mtime_range = probe_mtime_range(os.path.join(self._state, "tmp"))
        """The earliest and latest Mtime (ns) the root's file system keeps as given."""

    # -- receiving ---------------------------------------------------------

    def begin(
        self,
        path: str,
        size: int | None = None,
        sha256: str | None = None,
        mtime_ns: int | None = None,
        *,
        trailer: bool = False,
        fresh: bool = False,
    ) -> Deferred[IUpload]:
        """Start receiving C{path} (see L{IStorage.begin}).

        What can be judged from the request alone (the name, the announced
        Size against C{max_size} and the free space) is checked at once; the
        look-ups and any hashing of bytes already on disk run through
        C{run_blocking}, so that with a thread pool the reactor never waits
        on the disk.
        """
        try:
            path = validate_path(path)
            if size is not None:
                self.check_size(size)
            if mtime_ns is not None:
                check_mtime(mtime_ns, self.mtime_range)
        except TransferError:
            return fail()
        return self.run_blocking(
            lambda: self._begin_on_disk(path, size, sha256, mtime_ns, trailer, fresh)
        )

    def _begin_on_disk(
        self,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        trailer: bool,
        fresh: bool,
    ) -> IUpload:
        *parents, name = path.split("/")
        self._check_name_lengths(path)
        state = self._state_dir_for(parents)  # on the target's file system
        if size is not None:
            self.check_space(size, state)
        existing = self._lookup_entry(parents, name)
        if (
            existing is not None
            and stat.S_ISDIR(existing.st_mode)
            and self.on_conflict == "overwrite"
        ):
            raise TransferError(409, f"{path} exists and is a directory")
        copies = self._copies(path, size) if size is not None else {}
        if sha256 is not None:
            for stored_path, info in copies.items():
                if self._stored_digest(stored_path, info) == sha256:
                    return _AlreadyStored(Receipt(info.st_size, sha256, stored_path))
        elif trailer and not fresh and mtime_ns is not None and size is not None:
            same_mtime = {
                stored_path: self._stored_digest(stored_path, info)
                for stored_path, info in copies.items()
                if self._same_mtime(stored_path, info, mtime_ns)
            }
            if same_mtime:
                return _StoredCandidate(path, size, same_mtime)
        if existing is not None and self.on_conflict == "refuse":
            raise TransferError(409, f"{path} already exists")
        resumable = size is not None and (sha256 is not None or (trailer and mtime_ns is not None))
        if resumable:
            key = hashlib.sha256(
                f"{path}\0{size}\0{sha256 or ''}\0{'' if sha256 else mtime_ns}".encode()
            ).hexdigest()
            temp_name = os.path.join(state, "partial", key)
        else:
            temp_name = os.path.join(state, "tmp", secrets.token_hex(16))
        handle = self._open_temp(temp_name)
        if fresh:
            handle.truncate(0)
        try:
            return _Upload(
                self, path, size, sha256, mtime_ns, temp_name, handle, resumable, self.run_writes
            )
        except OSError as exc:
            handle.close()
            raise _os_error(exc, "read the partial file") from exc

    def _open_temp(self, temp_name: str) -> BinaryIO:
        full = os.path.join(self._state, temp_name)
        try:
            fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _os_error(exc, "create a temporary file") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TransferError(409, "an upload of this file is already in progress") from None
        return os.fdopen(fd, "r+b", buffering=0)

    def check_size(self, size: int) -> None:
        """Refuse with 413 a file of C{size} bytes (announced or arrived) above C{max_size}."""
        if self.max_size is not None and size > self.max_size:
            raise TransferError(
                413, f"file is larger than the server allows ({self.max_size} bytes)"
            )

    def check_space(self, incoming: int, where: str | None = None) -> None:
        """Refuse with 507 when C{incoming} more bytes would eat the reserve.

        @param where: a directory on the file system the bytes go to; by
            default the root's.
        """
        if incoming <= 0 or (self.min_free <= 0 and incoming < 1 << 20):
            return
        free = shutil.disk_usage(where or self._state).free
        if incoming > free - self.min_free:
            raise TransferError(507, "not enough free space on the server")

    def _copies(self, path: str, size: int) -> dict[str, os.stat_result]:
        """C{path} and the renamed copies stored for it (C{name (1).ext}...) that have C{size}.

        The numbered copies are looked up in order up to the first free number.
        """
        *parents, name = path.split("/")
        found: dict[str, os.stat_result] = {}
        try:
            with self._directory(parents, create=False) as parent_fd:
                limit = self._name_limit(parent_fd)
                for number in range(_MAX_RENAME_TRIES):
                    candidate = name if number == 0 else numbered_name(name, number, limit)
                    try:
                        info = os.stat(candidate, dir_fd=parent_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        if number > 0:
                            break
                        continue
                    if stat.S_ISREG(info.st_mode) and info.st_size == size:
                        found["/".join([*parents, candidate])] = info
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _os_error(exc, "look up the file") from exc
        return found

    def _same_mtime(self, path: str, existing: os.stat_result, mtime_ns: int) -> bool:
        """The stored file has the sender's Mtime: as the file system keeps it, or as announced.

        Whole seconds are compared, as rsync's quick check does; the sender's
        digest decides in the end.  A file system may clamp or round a time
        it cannot store: the announced time is remembered beside the digest.
        """
        if existing.st_mtime_ns // 10**9 == mtime_ns // 10**9:
            return True
        record = self._digest_record(path)
        return (
            record is not None
            and record.get("key") == _stat_key(existing)
            and record.get("mtime_ns") == mtime_ns
        )

    def _stored_digest(self, path: str, existing: os.stat_result) -> str:
        """The SHA-256 of a stored file: from the cache, or by reading it (blocking)."""
        cached = self._digest_record(path)
        if cached is not None and cached.get("key") == _stat_key(existing):
            return str(cached["sha256"])
        handle, _ = self.open_read(path)
        with handle:
            info = os.fstat(handle.fileno())
            digest: str = _hash_file(handle).hexdigest()
        if _stat_key(info) == _stat_key(existing):
            self._write_digest_record(path, existing, digest, None)
        return digest

    def _digest_file(self, path: str) -> str:
        name = hashlib.sha256(path.encode()).hexdigest()
        return os.path.join(self._state, "digests", name)

    def _digest_record(self, path: str) -> dict[str, Any] | None:
        try:
            with open(self._digest_file(path)) as handle:
                record: dict[str, Any] = json.load(handle)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("path") == path else None

    def _write_digest_record(
        self, path: str, existing: os.stat_result, digest: str, mtime_ns: int | None
    ) -> None:
        record = {"path": path, "key": _stat_key(existing), "sha256": digest, "mtime_ns": mtime_ns}
        target = self._digest_file(path)
        temp = f"{target}.{secrets.token_hex(4)}"
        try:
            with open(temp, "w") as handle:
                json.dump(record, handle)
            os.replace(temp, target)
        except OSError:
            pass  # the cache is an optimisation only

    def discard(self, temp_name: str) -> None:
        """Remove a temporary or partial file."""
        try:
            os.unlink(os.path.join(self._state, temp_name))
        except FileNotFoundError:
            pass

    def place(
        self,
        temp_name: str,
        path: str,
        size: int | None = None,
        digest: str | None = None,
        mtime_ns: int | None = None,
    ) -> str:
        """Link the finished temporary file into place by the conflict policy.

        When C{digest} is given and a file with exactly these bytes is already
        stored for C{path} (the path itself or, under C{rename}, one of its
        numbered copies), nothing new is made: that file's path is returned
        (PROTOCOL.md 1.2.1).  The digest of the placed file is cached, with
        the announced C{mtime_ns}.

        @return: the relative path it was stored under.
        """
        *parents, name = path.split("/")
        if digest is not None and size is not None:
            identical = self._identical_copy(path, size, digest)
            if identical is not None:
                self.discard(temp_name)
                return identical
        with self._directory(parents, create=True) as parent_fd, self._state_fd() as state_fd:
            stored_name = self._link_by_policy(state_fd, temp_name, parent_fd, name)
            try:
                os.unlink(temp_name, dir_fd=state_fd)
            except FileNotFoundError:
                pass  # "overwrite" renamed it rather than linking it
            os.fsync(parent_fd)
            placed = os.stat(stored_name, dir_fd=parent_fd, follow_symlinks=False)
        stored_path = "/".join([*parents, stored_name])
        if digest is not None:
            self._write_digest_record(stored_path, placed, digest, mtime_ns)
        return stored_path

    def _identical_copy(self, path: str, size: int, digest: str) -> str | None:
        copies = self._copies(path, size)
        if self.on_conflict != "rename":
            copies = {p: info for p, info in copies.items() if p == path}
        for stored_path, info in copies.items():
            if hmac.compare_digest(self._stored_digest(stored_path, info), digest):
                return stored_path
        return None

    def _link_by_policy(self, state_fd: int, temp_name: str, parent_fd: int, name: str) -> str:
        if self.on_conflict == "overwrite":
            try:
                if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                    raise TransferError(409, f"{name} exists and is a directory")
            except FileNotFoundError:
                pass
            os.rename(temp_name, name, src_dir_fd=state_fd, dst_dir_fd=parent_fd)
            return name
        limit = self._name_limit(parent_fd)
        for number in range(_MAX_RENAME_TRIES):
            candidate = name if number == 0 else numbered_name(name, number, limit)
            try:
                os.link(
                    temp_name,
                    candidate,
                    src_dir_fd=state_fd,
                    dst_dir_fd=parent_fd,
                    follow_symlinks=False,
                )
            except FileExistsError:
                if self.on_conflict == "refuse":
                    raise TransferError(409, f"{name} already exists") from None
                continue
            return candidate
        raise TransferError(409, f"no free name for {name}: {_MAX_RENAME_TRIES} are taken")

    # -- names and file systems ---------------------------------------------

    def _name_limit(self, dir_fd: int) -> int:
        """The longest name (bytes) that the directory C{dir_fd} can hold."""
        return name_limit(dir_fd)

    def _check_name_lengths(self, path: str) -> None:
        """Refuse (400) a component longer than the file system it goes to allows.

        Each existing directory is asked for its own limit (a mount point
        inside the root may be another file system); components that do not
        exist yet will be made on the last existing directory's file system.
        """
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in path.split("/"):
                limit = self._name_limit(fd)
                if len(part.encode()) > limit:
                    raise TransferError(
                        400,
                        f"a name is longer than the server's file system allows ({limit} bytes)",
                    )
                try:
                    child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # not a directory (yet): the rest is made where we are
                os.close(fd)
                fd = child
        finally:
            os.close(fd)

    def _state_dir_for(self, parents: list[str]) -> str:
        """The state directory for a file going into C{root/parents...}.

        A temporary file can only be linked into place on its own file
        system.  A target on the root's file system uses the root's state
        directory; one inside a mount point under the root uses (and makes)
        a state directory at the top of that mount, found by comparing
        C{st_dev} along the path.
        @return: its absolute path.
        """
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            root_device = os.fstat(fd).st_dev
            devices = []
            for part in parents:
                try:
                    child = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
                except OSError:
                    break  # made later, on the file system of the last existing one
                os.close(fd)
                fd = child
                devices.append(os.fstat(fd).st_dev)
        finally:
            os.close(fd)
        if not devices or devices[-1] == root_device:
            return self._state
        top = len(devices)
        while top > 1 and devices[top - 2] == devices[-1]:
            top -= 1
        relative = parents[:top]
        state = os.path.join(self.root, *relative, STATE_DIR)
        try:
            for sub in ("partial", "tmp"):
                os.makedirs(os.path.join(state, sub), exist_ok=True)
            self._record_state_dir("/".join(relative))
        except OSError as exc:
            raise _os_error(exc, "make a temporary directory there") from exc
        return state

    def _record_state_dir(self, relative: str) -> None:
        """Note a mount's state directory so that L{remove_stale} finds it after a restart."""
        folder = os.path.join(self._state, "mounts")
        os.makedirs(folder, exist_ok=True)
        record = os.path.join(folder, hashlib.sha256(relative.encode()).hexdigest())
        try:
            fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as handle:
            handle.write(relative)

    def _state_tops(self) -> list[list[str]]:
        """Where state directories are: the root (C{[]}) and recorded mount points."""
        tops: list[list[str]] = [[]]
        folder = os.path.join(self._state, "mounts")
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return tops
        for name in names:
            try:
                with open(os.path.join(folder, name)) as handle:
                    tops.append(validate_path(handle.read()).split("/"))
            except (OSError, ValueError, TransferError):
                continue
        return tops

    # -- reading -----------------------------------------------------------

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        path = validate_path(path)
        *parents, name = path.split("/")
        try:
            with self._directory(parents, create=False) as parent_fd:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except FileNotFoundError:
            raise TransferError(404, f"{path} not found") from None
        except OSError as exc:
            raise _os_error(exc, "open the file") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise TransferError(403, f"{path} is not a regular file")
        return os.fdopen(fd, "rb"), info.st_size

    def _lookup_entry(self, parents: list[str], name: str) -> os.stat_result | None:
        """lstat C{parents/name} without following links; None when it does not exist.

        @raise TransferError: 403 when a parent is a symlink or a file.
        """
        try:
            with self._directory(parents, create=False) as parent_fd:
                return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, "look up the file") from exc

    @contextmanager
    def _directory(self, parents: list[str], create: bool) -> Iterator[int]:
        """Open the directory C{root/parents...}, never following a symlink."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parents:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                child = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _state_fd(self) -> Iterator[int]:
        fd = os.open(self._state, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    # -- housekeeping ------------------------------------------------------

    def remove_stale(self, max_age: float, now: float | None = None) -> int:
        """Delete temporary and partial files untouched for C{max_age} seconds.

        In the root's state directory and in those at the top of mount
        points inside the root that uploads have used (L{_state_dir_for}
        records them).  Files another upload holds locked are left alone.
        @return: how many were removed.
        """
        now = time.time() if now is None else now
        removed = 0
        for top in self._state_tops():
            for sub in ("tmp", "partial"):
                try:
                    with self._directory([*top, STATE_DIR, sub], create=False) as folder_fd:
                        removed += _remove_old(folder_fd, now - max_age)
                except OSError:
                    continue  # e.g. a mount that is not mounted now
        return removed


def _remove_old(folder_fd: int, before: float) -> int:
    """Delete the files in C{folder_fd} last modified before C{before} and not locked."""
    removed = 0
    with os.scandir(folder_fd) as entries:
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime > before:
                    continue
                fd = os.open(
                    entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd
                )
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(entry.name, dir_fd=folder_fd)
                removed += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return removed


def _stat_key(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ino]
