"""L{DirectoryStorage}: files under one root directory on a local file system.

It keeps them safely:

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

import fcntl
import hashlib
import hmac
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._hashing import DEFAULT_DIGEST, DIGESTS, DigestName, hash_prefix
from filexfer._mtime import check_mtime, probe_mtime_range
from filexfer._names import STATE_DIR, validate_path
from filexfer.storage._conflicts import name_limit
from filexfer.storage._digests import DigestCache, stat_key
from filexfer.storage._disk import os_error, run_here
from filexfer.storage._interfaces import (
    CONFLICT_POLICIES,
    BlockingRunner,
    ConflictPolicy,
    IReadSource,
    IStorage,
    IUpload,
    policy_for,
)
from filexfer.storage._rules import (
    MAX_RENAME_TRIES,
    candidate_names,
    check_max_size,
    judge_stored,
    resume_identity,
    wanted_copies,
)
from filexfer.storage._sources import FileSource
from filexfer.storage._upload import Upload

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    @param run_hashing: runs the hashing of bytes already on disk that
        starting an upload may need (a resumed prefix, a stored file whose
        digest is not cached), e.g. in a small pool of its own so that large
        files do not hold up the threads every other upload needs; by
        default C{run_blocking}.
    @param min_free: bytes of free space to keep; uploads that would eat
        into it are refused with 507.
    @param max_size: largest accepted file, or None.
    """

    digests: tuple[DigestName, ...] = DIGESTS
    """SHA-256 and BLAKE3: both are computed here (L{filexfer._hashing})."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        on_conflict: ConflictPolicy = "rename",
        *,
        run_blocking: BlockingRunner[Any] = run_here,
        run_writes: BlockingRunner[Any] | None = None,
        run_hashing: BlockingRunner[Any] | None = None,
        min_free: int = 0,
        max_size: int | None = None,
    ) -> None:
        if on_conflict not in CONFLICT_POLICIES:
            raise ValueError(f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}")
        self.root = os.path.abspath(os.fspath(root))
        self.on_conflict = on_conflict
        self.run_blocking = run_blocking
        self.run_writes = run_writes
        self._run_hashing = run_hashing
        self.min_free = min_free
        self.max_size = max_size
        os.makedirs(self.root, exist_ok=True)
        self._state = os.path.join(self.root, STATE_DIR)
        for sub in ("partial", "tmp", "digests"):
            os.makedirs(os.path.join(self._state, sub), exist_ok=True)
        self._digests = DigestCache(os.path.join(self._state, "digests"))
        self.mtime_range = probe_mtime_range(os.path.join(self._state, "tmp"))
        """The earliest and latest Mtime (ns) the root's file system keeps as given."""

    @property
    def run_hashing(self) -> BlockingRunner[Any]:
        """Runs the hashing that starting an upload may need; C{run_blocking} unless set."""
        return self._run_hashing if self._run_hashing is not None else self.run_blocking

    @run_hashing.setter
    def run_hashing(self, runner: BlockingRunner[Any] | None) -> None:
        self._run_hashing = runner

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
        exact_name: bool = False,
        digest: DigestName = DEFAULT_DIGEST,
    ) -> Deferred[IUpload]:
        """Start receiving C{path} (see L{IStorage.begin}).

        What can be judged from the request alone (the name, the announced
        Size against C{max_size} and the free space) is checked at once; the
        look-ups and any hashing of bytes already on disk run through
        C{run_blocking}, so that with a thread pool the reactor never waits
        on the disk.
        """
        if digest not in self.digests or (sha256 is not None and digest != "sha256"):
            raise ValueError(f"digest {digest!r} with sha256={sha256!r}: see IStorage.begin")
        try:
            path = validate_path(path)
            if size is not None:
                self.check_size(size)
            if mtime_ns is not None:
                check_mtime(mtime_ns, self.mtime_range)
        except TransferError:
            return fail()
        looked_up = self.run_blocking(
            lambda: self._begin_on_disk(
                path, size, sha256, mtime_ns, trailer, fresh, exact_name, digest
            )
        )
        return looked_up.addCallback(
            lambda found: self.run_hashing(found.work) if isinstance(found, _Hashing) else found
        )

    def _begin_on_disk(
        self,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        trailer: bool,
        fresh: bool,
        exact_name: bool = False,
        algorithm: DigestName = DEFAULT_DIGEST,
    ) -> IUpload | _Hashing:
        """The look-ups of L{begin} (quick: C{run_blocking}).

        @return: the upload, or the L{_Hashing} still needed to start it
            (a held partial's prefix, a stored file whose digest is not
            cached), which L{begin} runs through C{run_hashing}.
        """
        *parents, name = path.split("/")
        self._check_name_lengths(path)
        state = self._state_dir_for(parents)  # on the target's file system
        existing = self._lookup_entry(parents, name)
        policy = policy_for(self.on_conflict, exact_name)
        if (
            existing is not None
            and (policy == "overwrite" or exact_name)
            and not stat.S_ISREG(existing.st_mode)
        ):
            raise TransferError(409, f"{path} exists and is {_kind(existing)}; it is not replaced")
        found = self._copies(path, size) if size is not None else {}
        if exact_name:  # no copy under another name answers for this one
            found = {stored: info for stored, info in found.items() if stored == path}
        wanted = wanted_copies(
            {stored: info.st_size for stored, info in found.items()},
            size,
            sha256,
            mtime_ns,
            trailer,
            fresh,
            lambda stored: (
                mtime_ns is not None and self._same_mtime(stored, found[stored], mtime_ns)
            ),
        )
        copies = {stored: found[stored] for stored in wanted}
        identity = resume_identity(path, size, sha256, mtime_ns, trailer)
        resumable = identity is not None
        if identity is not None:
            temp_name = os.path.join(state, "partial", identity)
        else:
            temp_name = os.path.join(state, "tmp", secrets.token_hex(16))

        cached = {
            stored: self._digests.digest(stored, info, algorithm) for stored, info in copies.items()
        }

        def start() -> IUpload:
            digests = {
                stored: cached[stored] or self._stored_digest(stored, info, algorithm)
                for stored, info in copies.items()
            }
            judged = judge_stored(path, size, sha256, digests, algorithm)
            if judged is not None:
                return judged
            if existing is not None and policy == "refuse":
                raise TransferError(409, f"{path} already exists")
            return self._open_upload(
                path, size, sha256, mtime_ns, temp_name, resumable, fresh, exact_name, algorithm
            )

        if None in cached.values() or (resumable and not fresh and _held(temp_name) > 0):
            return _Hashing(start)
        return start()

    def _open_upload(
        self,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        temp_name: str,
        resumable: bool,
        fresh: bool,
        exact_name: bool = False,
        digest: DigestName = DEFAULT_DIGEST,
    ) -> Upload:
        handle = self._open_temp(temp_name)
        try:
            if fresh:
                handle.truncate(0)
            if size is not None:
                # only what is still to come needs room (a resume's held bytes are there)
                held = os.fstat(handle.fileno()).st_size
                self.check_space(size - (held if held <= size else 0), os.path.dirname(temp_name))
            return Upload(
                self,
                path,
                size,
                sha256,
                mtime_ns,
                temp_name,
                handle,
                resumable,
                self.run_writes,
                exact_name=exact_name,
                digest=digest,
            )
        except TransferError:
            if os.fstat(handle.fileno()).st_size == 0:
                self.discard(temp_name)  # made just now: nothing to keep
            handle.close()  # a partial with bytes stays for a later resume
            raise
        except OSError as exc:
            handle.close()
            raise os_error(exc, "read the partial file") from exc

    def _open_temp(self, temp_name: str) -> BinaryIO:
        full = os.path.join(self._state, temp_name)
        try:
            fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise os_error(exc, "create a temporary file") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TransferError(409, "an upload of this file is already in progress") from None
        return os.fdopen(fd, "r+b", buffering=0)

    def check_size(self, size: int) -> None:
        """Refuse with 413 a file of C{size} bytes (announced or arrived) above C{max_size}."""
        check_max_size(self.max_size, size)

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
                for number, candidate in enumerate(candidate_names(name, limit)):
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
            raise os_error(exc, "look up the file") from exc
        return found

    def _same_mtime(self, path: str, existing: os.stat_result, mtime_ns: int) -> bool:
        """The stored file has the sender's Mtime: as the file system keeps it, or as announced.

        Whole seconds are compared, as rsync's quick check does; the sender's
        digest decides in the end.  A file system may clamp or round a time
        it cannot store: the announced time is remembered beside the digest.
        """
        if existing.st_mtime_ns // 10**9 == mtime_ns // 10**9:
            return True
        return self._digests.announced_mtime(path, existing) == mtime_ns

    def _stored_digest(
        self, path: str, existing: os.stat_result, algorithm: DigestName = DEFAULT_DIGEST
    ) -> str:
        """The C{algorithm} digest of a stored file: from the cache, or by reading it (blocking)."""
        cached = self._digests.digest(path, existing, algorithm)
        if cached is not None:
            return cached
        handle, _ = self.open_file(path)
        with handle:
            info = os.fstat(handle.fileno())
            digest: str = hash_prefix(handle, name=algorithm).hexdigest()
        if stat_key(info) == stat_key(existing):
            self._digests.remember(path, existing, digest, None, algorithm)
        return digest

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
        exact_name: bool = False,
        algorithm: DigestName = DEFAULT_DIGEST,
    ) -> str:
        """Link the finished temporary file into place by the conflict policy.

        When C{digest} is given and a file with exactly these bytes is already
        stored for C{path} (the path itself or, under C{rename}, one of its
        numbered copies), nothing new is made: that file's path is returned
        (docs/protocol.md, "Copies by content").  The digest (by C{algorithm})
        of the placed file is cached, with the announced C{mtime_ns}.  With
        C{exact_name} the policy is L{policy_for}'s and only C{path} itself counts.

        @return: the relative path it was stored under.
        """
        *parents, name = path.split("/")
        policy = policy_for(self.on_conflict, exact_name)
        if digest is not None and size is not None:
            identical = self._identical_copy(path, size, digest, policy, algorithm)
            if identical is not None:
                self.discard(temp_name)
                return identical
        with self._directory(parents, create=True) as parent_fd, self._state_fd() as state_fd:
            stored_name = self._link_by_policy(state_fd, temp_name, parent_fd, name, policy)
            try:
                os.unlink(temp_name, dir_fd=state_fd)
            except FileNotFoundError:
                pass  # "overwrite" renamed it rather than linking it
            os.fsync(parent_fd)
            placed = os.stat(stored_name, dir_fd=parent_fd, follow_symlinks=False)
        stored_path = "/".join([*parents, stored_name])
        if digest is not None:
            self._digests.remember(stored_path, placed, digest, mtime_ns, algorithm)
        return stored_path

    def _identical_copy(
        self, path: str, size: int, digest: str, policy: ConflictPolicy, algorithm: DigestName
    ) -> str | None:
        copies = self._copies(path, size)
        if policy != "rename":
            copies = {p: info for p, info in copies.items() if p == path}
        for stored_path, info in copies.items():
            if hmac.compare_digest(self._stored_digest(stored_path, info, algorithm), digest):
                return stored_path
        return None

    def _link_by_policy(
        self, state_fd: int, temp_name: str, parent_fd: int, name: str, policy: ConflictPolicy
    ) -> str:
        if policy == "overwrite":
            try:
                info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISREG(info.st_mode):
                    raise TransferError(409, f"{name} exists and is {_kind(info)}; not replaced")
            os.rename(temp_name, name, src_dir_fd=state_fd, dst_dir_fd=parent_fd)
            return name
        limit = self._name_limit(parent_fd)
        for candidate in candidate_names(name, limit):
            try:
                os.link(
                    temp_name,
                    candidate,
                    src_dir_fd=state_fd,
                    dst_dir_fd=parent_fd,
                    follow_symlinks=False,
                )
            except FileExistsError:
                if policy == "refuse":
                    raise TransferError(409, f"{name} already exists") from None
                continue
            return candidate
        raise TransferError(409, f"no free name for {name}: {MAX_RENAME_TRIES} are taken")

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
            raise os_error(exc, "make a temporary directory there") from exc
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

    def open_read(self, path: str) -> Deferred[IReadSource]:
        """Open a stored file (see L{IStorage.open_read}); a local open does not wait."""
        try:
            return succeed(FileSource(*self.open_file(path)))
        except TransferError:
            return fail()

    def open_file(self, path: str) -> tuple[BinaryIO, int]:
        """Open a stored file now: (file, size); L{TransferError} 400/403/404."""
        path = validate_path(path)
        *parents, name = path.split("/")
        try:
            with self._directory(parents, create=False) as parent_fd:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except FileNotFoundError:
            raise TransferError(404, f"{path} not found") from None
        except OSError as exc:
            raise os_error(exc, "open the file") from exc
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
            raise os_error(exc, "look up the file") from exc

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


class _Hashing:
    """Work that starting an upload still needs, and that hashes bytes on disk."""

    def __init__(self, work: Callable[[], IUpload]) -> None:
        self.work = work


def _held(temp_name: str) -> int:
    """Bytes a partial file holds (0 when there is none)."""
    try:
        return os.stat(temp_name, follow_symlinks=False).st_size
    except OSError:
        return 0


def _kind(info: os.stat_result) -> str:
    """What a non-regular directory entry is, for a person."""
    if stat.S_ISDIR(info.st_mode):
        return "a directory"
    if stat.S_ISLNK(info.st_mode):
        return "a symlink"
    return "not a regular file"
