"""DirectoryStorage: atomic, resumable, conflict-aware, never outside its root."""

from __future__ import annotations

import errno
import io
import os
import shutil
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer.storage import DirectoryStorage, IStorage, IUpload, Receipt, numbered_name
from filexfer.testing import ManualRunner

from .helpers import payload, sha256_bytes, state_files, visible_files, write_file

MTIME_NS = 1_600_000_000_000_000_000


class StorageTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.storage = self.make_storage()

    def make_storage(self, **kwargs: object) -> DirectoryStorage:
        return DirectoryStorage(self.root, **kwargs)  # type: ignore[arg-type]

    def store(
        self,
        path: str,
        data: bytes,
        *,
        size: int | None | bool = True,
        sha256: str | None | bool = False,
        mtime_ns: int | None = None,
        storage: DirectoryStorage | None = None,
    ) -> Receipt:
        """Upload C{data} in one go and return the receipt."""
        storage = storage or self.storage
        upload = self.begin_on(
            storage,
            path,
            len(data) if size is True else (None if size is False else size),  # type: ignore[arg-type]
            sha256_bytes(data) if sha256 is True else (None if sha256 is False else sha256),  # type: ignore[arg-type]
            mtime_ns,
        )
        upload.write(data[upload.offset :])
        return self.successResultOf(upload.finish())

    def read(self, path: str) -> bytes:
        with open(os.path.join(self.root, path), "rb") as handle:
            return handle.read()

    def begin(self, *args: Any, **kwargs: Any) -> IUpload:
        """Start an upload on the test's storage; it must start at once (inline runner)."""
        return self.begin_on(self.storage, *args, **kwargs)

    def begin_on(self, storage: DirectoryStorage, *args: Any, **kwargs: Any) -> IUpload:
        """Start an upload on C{storage}; it must start at once (inline runner)."""
        upload: IUpload = self.successResultOf(storage.begin(*args, **kwargs))
        return upload

    def assertRefused(self, code: int, call: Any, *args: object) -> TransferError:
        """C{call(*args)} raises, or fails its Deferred with, a TransferError of C{code}."""
        try:
            result = call(*args)
        except TransferError as error:
            failure_value = error
        else:
            if not isinstance(result, Deferred):
                self.fail(f"{call} returned {result!r}")
            failure_value = self.failureResultOf(result, TransferError).value
        self.assertEqual(failure_value.code, code, str(failure_value))
        return failure_value


class PlacementTests(StorageTestCase):
    def test_provides_interfaces(self) -> None:
        """DirectoryStorage provides IStorage and its uploads provide IUpload."""
        self.assertTrue(IStorage.providedBy(self.storage))
        upload = self.begin("a", 1)
        self.assertTrue(IUpload.providedBy(upload))
        upload.abort(keep_partial=False)

    def test_nothing_under_final_name_before_finish(self) -> None:
        """While bytes arrive nothing appears under the final name; finish places the file."""
        data = payload(100_000)
        upload = self.begin("a.bin", len(data), sha256_bytes(data), None)
        upload.write(data[:50_000])
        self.assertEqual(visible_files(self.root), [])
        upload.write(data[50_000:])
        self.assertEqual(visible_files(self.root), [])
        receipt = self.successResultOf(upload.finish())
        self.assertEqual(receipt, Receipt(len(data), sha256_bytes(data), "a.bin"))
        self.assertEqual(self.read("a.bin"), data)
        self.assertEqual(state_files(self.root, "tmp"), [])
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_without_size(self) -> None:
        """Without Size the upload ends at finish; the temporary file is removed."""
        receipt = self.store("n.txt", b"hello", size=False)
        self.assertEqual(receipt, Receipt(5, sha256_bytes(b"hello"), "n.txt"))
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_empty_file(self) -> None:
        """A 0-byte file is stored."""
        receipt = self.store("empty", b"")
        self.assertEqual(receipt.size, 0)
        self.assertEqual(self.read("empty"), b"")

    def test_subdirectories_created(self) -> None:
        """Missing parent directories are created under the root."""
        self.store("a/b/c/d.txt", b"deep")
        self.assertEqual(self.read("a/b/c/d.txt"), b"deep")

    def test_mtime_applied(self) -> None:
        """The announced Mtime is applied to the stored file."""
        self.store("m", b"x", mtime_ns=MTIME_NS)
        self.assertEqual(os.stat(os.path.join(self.root, "m")).st_mtime_ns, MTIME_NS)

    def test_finish_runs_through_run_blocking(self) -> None:
        """fsync and rename happen in run_blocking; the file appears only then."""
        runner = ManualRunner()
        storage = self.make_storage(run_blocking=runner)
        starting = storage.begin("r", 3)
        runner.run_all()
        upload = self.successResultOf(starting)
        upload.write(b"abc")
        result = upload.finish()
        self.assertNoResult(result)
        self.assertEqual(visible_files(self.root), [])
        runner.run_all()
        self.assertEqual(self.successResultOf(result).path, "r")
        self.assertEqual(self.read("r"), b"abc")

    def test_bad_policy(self) -> None:
        """An unknown conflict policy is a ValueError."""
        self.assertRaises(ValueError, DirectoryStorage, self.root, "clobber")

    def test_state_dir_refused(self) -> None:
        """Uploads into the state directory are refused with 403."""
        self.assertRefused(403, self.storage.begin, ".filexfer/partial/x", 1)
        self.assertRefused(400, self.storage.begin, "../escape", 1)


class ConflictTests(StorageTestCase):
    def test_rename_keeps_both(self) -> None:
        """The default policy stores a second file as C{name (1).ext}, then C{(2)}."""
        self.store("report.pdf", b"one")
        self.assertEqual(self.store("report.pdf", b"two").path, "report (1).pdf")
        self.assertEqual(self.store("report.pdf", b"three").path, "report (2).pdf")
        self.assertEqual(self.read("report.pdf"), b"one")
        self.assertEqual(self.read("report (1).pdf"), b"two")

    def test_rename_compound_and_dotfiles(self) -> None:
        """C{a.tar.gz} -> C{a (1).tar.gz}; C{.bashrc} -> C{.bashrc (1)}; in subdirectories too."""
        for name, renamed in [
            ("a.tar.gz", "a (1).tar.gz"),
            (".bashrc", ".bashrc (1)"),
            ("noext", "noext (1)"),
            ("d/x.txt", "d/x (1).txt"),
        ]:
            self.store(name, b"1")
            self.assertEqual(self.store(name, b"2").path, renamed)

    def test_numbered_name(self) -> None:
        """numbered_name inserts the number before the (compound) extension."""
        self.assertEqual(numbered_name("report.pdf", 1), "report (1).pdf")
        self.assertEqual(numbered_name("a.tar.gz", 3), "a (3).tar.gz")
        self.assertEqual(numbered_name(".bashrc", 1), ".bashrc (1)")
        self.assertEqual(numbered_name(".config.json", 1), ".config (1).json")
        self.assertEqual(numbered_name("REPORT.TAR.GZ", 2), "REPORT (2).TAR.GZ")

    def test_numbered_name_stays_within_255_bytes(self) -> None:
        """A long name is shortened so that the numbered name is still a valid component."""
        long = "é" * 125 + ".txt"  # 254 bytes
        renamed = numbered_name(long, 12)
        self.assertLessEqual(len(renamed.encode()), 255)
        self.assertTrue(renamed.endswith(" (12).txt"))

    def test_overwrite(self) -> None:
        """The overwrite policy replaces the file atomically under the same name."""
        storage = self.make_storage(on_conflict="overwrite")
        self.store("f", b"old", storage=storage)
        self.assertEqual(self.store("f", b"newer", storage=storage).path, "f")
        self.assertEqual(self.read("f"), b"newer")
        self.assertEqual(visible_files(self.root), ["f"])

    def test_overwrite_directory_refused(self) -> None:
        """Overwrite never replaces a directory: 409 at begin (before any byte); it stays."""
        storage = self.make_storage(on_conflict="overwrite")
        os.makedirs(os.path.join(self.root, "d"))
        self.assertRefused(409, storage.begin, "d", 1)
        self.assertRefused(409, storage.begin, "d", None)
        self.assertTrue(os.path.isdir(os.path.join(self.root, "d")))

    def test_overwrite_directory_appearing_during_upload(self) -> None:
        """A directory that appears at the final name during an upload is still not replaced."""
        storage = self.make_storage(on_conflict="overwrite")
        upload = self.begin_on(storage, "d", 1)
        upload.write(b"x")
        os.makedirs(os.path.join(self.root, "d"))
        self.assertEqual(self.failureResultOf(upload.finish(), TransferError).value.code, 409)
        self.assertTrue(os.path.isdir(os.path.join(self.root, "d")))

    def test_refuse_non_regular_at_begin(self) -> None:
        """Under refuse, a directory or symlink at the final name is a 409 at begin."""
        storage = self.make_storage(on_conflict="refuse")
        os.makedirs(os.path.join(self.root, "d"))
        os.symlink("/nonexistent", os.path.join(self.root, "l"))
        for name in ("d", "l"):
            self.assertRefused(409, storage.begin, name, 1)
            self.assertRefused(409, storage.begin, name, None)

    def test_refuse_at_begin(self) -> None:
        """The refuse policy answers 409 up front when the name exists."""
        storage = self.make_storage(on_conflict="refuse")
        self.store("f", b"one", storage=storage)
        self.assertRefused(409, storage.begin, "f", 3)
        self.assertEqual(self.read("f"), b"one")

    def test_refuse_at_place_time(self) -> None:
        """A file that appears during the upload makes finish fail with 409; no temp remains."""
        storage = self.make_storage(on_conflict="refuse")
        upload = self.begin_on(storage, "f", 3)
        upload.write(b"new")
        write_file(os.path.join(self.root, "f"), b"raced")
        self.assertEqual(self.failureResultOf(upload.finish(), TransferError).value.code, 409)
        self.assertEqual(self.read("f"), b"raced")
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_idempotence_covers_renamed_copies(self) -> None:
        """Content already stored under a renamed copy (C{x (1).txt}) is answered with that copy."""
        data = b"content"
        self.store("x.txt", b"other")
        self.store("x.txt", data, sha256=True)  # stored as "x (1).txt"
        upload = self.begin("x.txt", len(data), sha256_bytes(data), None)
        self.assertEqual(upload.stored, Receipt(len(data), sha256_bytes(data), "x (1).txt"))
        self.assertEqual(visible_files(self.root), ["x (1).txt", "x.txt"])


class ExactNameTests(StorageTestCase):
    """begin(exact_name=True): stored under the path asked for, or not at all (TFTP)."""

    def store_exact(self, path: str, data: bytes, storage: DirectoryStorage | None = None) -> Any:
        upload = self.begin_on(storage or self.storage, path, None, None, None, exact_name=True)
        upload.write(data)
        return upload.finish()

    def test_rename_acts_as_refuse(self) -> None:
        """Under rename an existing path is 409 at begin; the file stays, no copy is made."""
        self.store("up.cfg", b"old")
        self.assertRefused(409, lambda: self.storage.begin("up.cfg", 3, exact_name=True))
        self.assertEqual((self.read("up.cfg"), visible_files(self.root)), (b"old", ["up.cfg"]))

    def test_refuse(self) -> None:
        """Under refuse an existing path is 409 at begin, as without exact_name."""
        storage = self.make_storage(on_conflict="refuse")
        self.store("up.cfg", b"old", storage=storage)
        self.assertRefused(409, lambda: storage.begin("up.cfg", None, exact_name=True))

    def test_appears_meanwhile(self) -> None:
        """A file that appears during the upload makes finish 409, never 'name (1)'."""
        upload = self.begin("late.cfg", None, None, None, exact_name=True)
        upload.write(b"mine")
        with open(os.path.join(self.root, "late.cfg"), "wb") as handle:
            handle.write(b"theirs")
        self.assertRefused(409, lambda: upload.finish())
        self.assertEqual(visible_files(self.root), ["late.cfg"])
        self.assertEqual(self.read("late.cfg"), b"theirs")

    def test_numbered_copy_never_answers(self) -> None:
        """Bytes equal to a numbered copy are stored under the path asked for all the same."""
        self.store("fw.bin", b"one")
        self.store("fw.bin", b"two")  # fw (1).bin
        os.unlink(os.path.join(self.root, "fw.bin"))
        receipt = self.successResultOf(self.store_exact("fw.bin", b"two"))
        self.assertEqual(receipt.path, "fw.bin")
        self.assertEqual(self.read("fw.bin"), b"two")

    def test_overwrite_replaces(self) -> None:
        """Under overwrite the existing file is replaced atomically (a new inode)."""
        storage = self.make_storage(on_conflict="overwrite")
        self.store("fw.bin", b"old", storage=storage)
        before = os.stat(os.path.join(self.root, "fw.bin")).st_ino
        receipt = self.successResultOf(self.store_exact("fw.bin", b"new", storage))
        self.assertEqual((receipt.path, self.read("fw.bin")), ("fw.bin", b"new"))
        self.assertNotEqual(os.stat(os.path.join(self.root, "fw.bin")).st_ino, before)

    def test_overwrite_same_bytes_unchanged(self) -> None:
        """Under overwrite, the same bytes again succeed and leave the file as it was."""
        storage = self.make_storage(on_conflict="overwrite")
        self.store("fw.bin", b"same", storage=storage)
        before = os.stat(os.path.join(self.root, "fw.bin"))
        receipt = self.successResultOf(self.store_exact("fw.bin", b"same", storage))
        after = os.stat(os.path.join(self.root, "fw.bin"))
        self.assertEqual(receipt.path, "fw.bin")
        self.assertEqual((after.st_ino, after.st_mtime_ns), (before.st_ino, before.st_mtime_ns))


class ResumeTests(StorageTestCase):
    data = payload(10_000, seed=1)

    def interrupted(self, sha256: str | None, mtime_ns: int | None, cut: int = 4000) -> None:
        upload = self.begin("r.bin", len(self.data), sha256, mtime_ns)
        self.assertEqual(upload.offset, 0)
        upload.write(self.data[:cut])
        upload.abort(keep_partial=True)

    def test_resume_with_sha256(self) -> None:
        """Same path, Size and SHA256: the offset is the partial's length; the digest covers all."""
        digest = sha256_bytes(self.data)
        self.interrupted(digest, None)
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(len(state_files(self.root, "partial")), 1)
        upload = self.begin("r.bin", len(self.data), digest, None)
        self.assertEqual(upload.offset, 4000)
        self.assertEqual(upload.received, 4000)
        upload.write(self.data[4000:])
        receipt = self.successResultOf(upload.finish())
        self.assertEqual(receipt, Receipt(len(self.data), digest, "r.bin"))
        self.assertEqual(self.read("r.bin"), self.data)
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_resume_with_mtime(self) -> None:
        """Same path, Size and Mtime with a trailer resumes, offering the prefix's SHA-256."""
        upload = self.begin("r.bin", len(self.data), None, MTIME_NS, trailer=True)
        upload.write(self.data[:4000])
        upload.abort(keep_partial=True)
        upload = self.begin("r.bin", len(self.data), None, MTIME_NS, trailer=True)
        self.assertEqual(upload.offset, 4000)
        self.assertEqual(upload.prefix_sha256, sha256_bytes(self.data[:4000]))
        upload.write(self.data[4000:])
        receipt = self.successResultOf(upload.finish(sha256_bytes(self.data)))
        self.assertEqual(receipt.sha256, sha256_bytes(self.data))

    def test_no_mtime_resume_without_trailer(self) -> None:
        """Without a trailer (an older client), Size and Mtime alone never resume (I1)."""
        self.interrupted(None, MTIME_NS)
        self.assertEqual(state_files(self.root, "partial"), [])
        upload = self.begin("r.bin", len(self.data), None, MTIME_NS)
        self.assertEqual(upload.offset, 0)
        upload.abort(keep_partial=False)

    def test_other_identity_starts_over(self) -> None:
        """A different SHA256, Mtime, Size or path gets offset 0."""
        digest = sha256_bytes(self.data)
        self.interrupted(digest, None)
        for args in [
            ("r.bin", len(self.data), sha256_bytes(b"other"), None),
            ("r.bin", len(self.data) + 1, digest, None),
            ("s.bin", len(self.data), digest, None),
            ("r.bin", len(self.data), None, MTIME_NS),
        ]:
            upload = self.begin(*args)
            self.assertEqual(upload.offset, 0, args)
            upload.abort(keep_partial=False)

    def test_no_resume_without_size(self) -> None:
        """Without Size nothing is kept for resume and the offset is always 0."""
        upload = self.begin("r.bin", None, sha256_bytes(self.data), MTIME_NS)
        upload.write(self.data[:100])
        upload.abort(keep_partial=True)
        self.assertEqual(state_files(self.root, "tmp"), [])
        self.assertEqual(state_files(self.root, "partial"), [])
        again = self.begin("r.bin", None, sha256_bytes(self.data), MTIME_NS)
        self.assertEqual(again.offset, 0)
        again.abort(keep_partial=False)

    def test_no_resume_without_sha256_or_mtime(self) -> None:
        """With Size alone nothing is kept and the offset is 0."""
        self.interrupted(None, None)
        self.assertEqual(state_files(self.root, "partial"), [])
        upload = self.begin("r.bin", len(self.data), None, None)
        self.assertEqual(upload.offset, 0)
        upload.abort(keep_partial=False)

    def test_partial_longer_than_size_discarded(self) -> None:
        """A partial holding more than Size bytes is thrown away: offset 0."""
        digest = sha256_bytes(self.data)
        self.interrupted(digest, None)
        (name,) = state_files(self.root, "partial")
        with open(os.path.join(self.root, ".filexfer", "partial", name), "ab") as handle:
            handle.write(b"x" * len(self.data))
        upload = self.begin("r.bin", len(self.data), digest, None)
        self.assertEqual(upload.offset, 0)
        upload.write(self.data)
        self.assertEqual(self.successResultOf(upload.finish()).sha256, digest)
        self.assertEqual(self.read("r.bin"), self.data)

    def test_short_keeps_partial(self) -> None:
        """finish before Size bytes: 422, and the partial is kept for a resume."""
        upload = self.begin("r.bin", len(self.data), None, MTIME_NS, trailer=True)
        upload.write(self.data[:10])
        error = self.failureResultOf(upload.finish(), TransferError).value
        self.assertEqual(error.code, 422)
        self.assertEqual(visible_files(self.root), [])
        again = self.begin("r.bin", len(self.data), None, MTIME_NS, trailer=True)
        self.assertEqual(again.offset, 10)
        again.abort(keep_partial=True)

    def test_short_without_resume_discarded(self) -> None:
        """A short upload that cannot be resumed leaves nothing behind."""
        upload = self.begin("r.bin", len(self.data), None, None)
        upload.write(self.data[:10])
        self.assertEqual(self.failureResultOf(upload.finish(), TransferError).value.code, 422)
        self.assertEqual(state_files(self.root, "tmp"), [])
        self.assertEqual(visible_files(self.root), [])

    def test_more_than_size(self) -> None:
        """Writing past Size is a 422 and abort keeps nothing."""
        upload = self.begin("r.bin", 5, None, MTIME_NS)
        upload.write(b"12345")
        error = self.assertRaises(TransferError, upload.write, b"6")
        self.assertEqual(error.code, 422)
        upload.abort(keep_partial=False)
        self.assertEqual(state_files(self.root, "partial"), [])
        self.assertEqual(visible_files(self.root), [])

    def test_sha256_mismatch(self) -> None:
        """Bytes that do not hash to the announced SHA256: 422, nothing kept at all."""
        upload = self.begin("r.bin", 5, sha256_bytes(b"other"), None)
        upload.write(b"12345")
        self.assertEqual(self.failureResultOf(upload.finish(), TransferError).value.code, 422)
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_concurrent_resumable_upload(self) -> None:
        """A second upload of the same resumable file while the first runs gets 409."""
        digest = sha256_bytes(self.data)
        first = self.begin("r.bin", len(self.data), digest, None)
        self.assertRefused(409, self.storage.begin, "r.bin", len(self.data), digest, None)
        first.abort(keep_partial=True)
        second = self.begin("r.bin", len(self.data), digest, None)
        second.abort(keep_partial=False)

    def test_concurrent_plain_uploads_both_stored(self) -> None:
        """Two non-resumable uploads to the same name at once are both kept."""
        first = self.begin("p", 1)
        second = self.begin("p", 1)
        first.write(b"1")
        second.write(b"2")
        paths = {
            self.successResultOf(second.finish()).path,
            self.successResultOf(first.finish()).path,
        }
        self.assertEqual(paths, {"p", "p (1)"})


class IdempotenceTests(StorageTestCase):
    data = b"the same bytes"

    def test_quick_check_with_sha256(self) -> None:
        """Same path, Size and SHA256 already stored: a receipt at once, offset = size."""
        self.store("f", self.data, sha256=True)
        upload = self.begin("f", len(self.data), sha256_bytes(self.data), None)
        self.assertEqual(upload.stored, Receipt(len(self.data), sha256_bytes(self.data), "f"))
        self.assertEqual(upload.offset, len(self.data))
        self.assertEqual(self.successResultOf(upload.finish()), upload.stored)
        self.assertRefused(422, upload.write, b"x")
        self.assertEqual(visible_files(self.root), ["f"])

    def test_quick_check_with_mtime(self) -> None:
        """Same Size and Mtime: the sender proves its digest; the server tells nothing (I2)."""
        self.store("f", self.data, mtime_ns=MTIME_NS)
        upload = self.begin("f", len(self.data), None, MTIME_NS, trailer=True)
        self.assertIsNone(upload.stored)
        self.assertIsNone(upload.prefix_sha256)
        self.assertEqual(upload.offset, len(self.data))
        receipt = self.successResultOf(upload.finish(sha256_bytes(self.data)))
        self.assertEqual(receipt, Receipt(len(self.data), sha256_bytes(self.data), "f"))

    def test_quick_check_with_mtime_wrong_digest(self) -> None:
        """A guessed Size and Mtime with any other digest learns nothing: 422, no receipt."""
        self.store("f", self.data, mtime_ns=MTIME_NS)
        for claimed in (sha256_bytes(b"guess"), None):
            upload = self.begin("f", len(self.data), None, MTIME_NS, trailer=True)
            error = self.failureResultOf(upload.finish(claimed), TransferError).value
            self.assertEqual(error.code, 422)
            self.assertNotIn(sha256_bytes(self.data), str(error))

    def test_no_quick_check_by_mtime_without_trailer(self) -> None:
        """Size and Mtime alone (an older client) never answer "already stored" (I2)."""
        self.store("f", self.data, mtime_ns=MTIME_NS)
        upload = self.begin("f", len(self.data), None, MTIME_NS)
        self.assertIsNone(upload.stored)
        self.assertEqual(upload.offset, 0)
        upload.abort(keep_partial=False)

    def test_quick_check_misses(self) -> None:
        """Another Mtime, Size or SHA256 is a new file (renamed by default)."""
        self.store("f", self.data, mtime_ns=MTIME_NS)
        for args in [
            (len(self.data), None, MTIME_NS + 10**9),
            (len(self.data) + 1, None, MTIME_NS),
            (len(self.data), sha256_bytes(b"x"), None),
            (len(self.data), None, None),
            (None, sha256_bytes(self.data), MTIME_NS),
        ]:
            upload = self.begin("f", *args)
            self.assertIsNone(upload.stored, args)
            upload.abort(keep_partial=False)

    def test_refuse_policy_still_idempotent(self) -> None:
        """Under the refuse policy an identical re-send is a receipt, not a 409."""
        storage = self.make_storage(on_conflict="refuse")
        self.store("f", self.data, sha256=True, storage=storage)
        upload = self.begin_on(storage, "f", len(self.data), sha256_bytes(self.data), None)
        self.assertIsNotNone(upload.stored)

    def test_digest_cache_used(self) -> None:
        """The quick check uses the cached digest instead of re-reading the file."""
        self.store("f", self.data, mtime_ns=MTIME_NS)
        reads: list[str] = []
        original = self.storage.open_file

        def counting_open_read(path: str) -> object:
            reads.append(path)
            return original(path)

        self.patch(self.storage, "open_file", counting_open_read)
        upload = self.begin("f", len(self.data), None, MTIME_NS, trailer=True)
        self.assertEqual(self.successResultOf(upload.finish(sha256_bytes(self.data))).path, "f")
        self.assertEqual(reads, [])

    def test_digest_cache_invalidated(self) -> None:
        """A file changed behind the cache's back is hashed again, not trusted."""
        self.store("f", self.data, sha256=True)
        changed = b"X" + self.data[1:]
        path = os.path.join(self.root, "f")
        info = os.stat(path)
        with open(path, "r+b") as handle:
            handle.write(b"X")
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
        upload = self.begin("f", len(self.data), sha256_bytes(self.data), None)
        self.assertIsNone(upload.stored)
        upload.abort(keep_partial=False)
        again = self.begin("f", len(changed), sha256_bytes(changed), None)
        self.assertIsNotNone(again.stored)


class SymlinkTests(StorageTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.outside = os.path.abspath(self.mktemp())
        os.makedirs(self.outside)
        self.target = write_file(os.path.join(self.outside, "target.txt"), b"outside")

    def test_directory_symlink_not_written_through(self) -> None:
        """A directory symlink inside the root is never followed to write (403)."""
        os.symlink(self.outside, os.path.join(self.root, "link"))
        self.assertRefused(403, self.storage.begin, "link/new.txt", 1)
        self.assertEqual(sorted(os.listdir(self.outside)), ["target.txt"])

    def test_directory_symlink_created_during_upload(self) -> None:
        """A symlink swapped in for a directory after begin is not followed at finish."""
        upload = self.begin("sub/new.txt", 1)
        upload.write(b"x")
        os.symlink(self.outside, os.path.join(self.root, "sub"))
        self.assertEqual(self.failureResultOf(upload.finish(), TransferError).value.code, 403)
        self.assertEqual(sorted(os.listdir(self.outside)), ["target.txt"])

    def test_file_symlink_not_written_through(self) -> None:
        """A file symlink at the final name is never written through, by any policy."""
        os.symlink(self.target, os.path.join(self.root, "evil"))
        self.assertEqual(self.store("evil", b"new").path, "evil (1)")
        overwrite = self.make_storage(on_conflict="overwrite")
        self.assertRefused(409, overwrite.begin, "evil", 3)  # not replaced either (at begin)
        self.assertTrue(os.path.islink(os.path.join(self.root, "evil")))
        refuse = self.make_storage(on_conflict="refuse")
        self.assertRefused(409, refuse.begin, "evil", 3)
        with open(self.target, "rb") as handle:
            self.assertEqual(handle.read(), b"outside")

    def test_symlinks_not_read_through(self) -> None:
        """open_read refuses (403) a file symlink and a path through a directory symlink."""
        os.symlink(self.target, os.path.join(self.root, "evil"))
        os.symlink(self.outside, os.path.join(self.root, "link"))
        self.assertRefused(403, self.storage.open_file, "evil")
        self.assertRefused(403, self.storage.open_file, "link/target.txt")

    def test_quick_check_ignores_symlink(self) -> None:
        """A symlink to an identical file is not taken as already stored."""
        os.symlink(self.target, os.path.join(self.root, "evil"))
        upload = self.begin("evil", 7, sha256_bytes(b"outside"), None)
        self.assertIsNone(upload.stored)
        upload.abort(keep_partial=False)


class ReadTests(StorageTestCase):
    def test_open_read(self) -> None:
        """open_read returns the file and its size."""
        write_file(os.path.join(self.root, "d", "f"), b"abc")
        handle, size = self.storage.open_file("d/f")
        with handle:
            self.assertEqual((handle.read(), size), (b"abc", 3))

    def test_missing(self) -> None:
        """A missing file (or missing directory) is 404."""
        self.assertRefused(404, self.storage.open_file, "nope")
        self.assertRefused(404, self.storage.open_file, "no/such/dir")

    def test_directory(self) -> None:
        """A directory is 403."""
        os.makedirs(os.path.join(self.root, "d"))
        self.assertRefused(403, self.storage.open_file, "d")

    def test_bad_paths(self) -> None:
        """Bad paths are refused before touching the disk."""
        self.assertRefused(400, self.storage.open_file, "../x")
        self.assertRefused(403, self.storage.open_file, ".filexfer/digests")


class QuotaTests(StorageTestCase):
    def test_max_size(self) -> None:
        """A Size above max_size is refused with 413 up front."""
        storage = self.make_storage(max_size=10)
        self.assertRefused(413, storage.begin, "big", 11)
        upload = self.begin_on(storage, "ok", 10)
        upload.abort(keep_partial=False)

    def test_min_free_up_front(self) -> None:
        """A Size that would eat into the free-space reserve is refused with 507."""
        storage = self.make_storage(min_free=1 << 62)
        self.assertRefused(507, storage.begin, "f", 1)

    def test_min_free_while_writing(self) -> None:
        """Without Size, the reserve is checked as bytes arrive (507)."""
        storage = self.make_storage(min_free=1 << 62)
        upload = self.begin_on(storage, "f", None)
        self.assertRefused(507, upload.write, b"x")
        upload.abort(keep_partial=False)
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_min_free_counts_bytes_not_yet_written(self) -> None:
        """Bytes queued for (or being written by) the write thread count against the reserve."""
        runner = ManualRunner()  # no batch is written until told: nothing reaches the disk
        chunk = b"x" * (256 << 10)
        free = 64 << 20
        storage = self.make_storage(min_free=free - 3 * len(chunk), run_writes=runner)
        self.patch(shutil, "disk_usage", lambda where: _Usage(free))
        upload = self.begin_on(storage, "f", None)
        for _ in range(3):
            upload.write(chunk)  # room for exactly three: one in flight, two queued
        self.assertRefused(507, upload.write, chunk)
        upload.abort(keep_partial=False)
        runner.run_all()
        self.assertEqual(state_files(self.root, "tmp"), [])

    def test_enospc_maps_to_507(self) -> None:
        """A disk-full error while writing becomes 507."""
        storage = _FullDiskStorage(self.root)
        upload = self.begin_on(storage, "f", 5, None, MTIME_NS)
        error = self.assertRaises(TransferError, upload.write, b"hello")
        self.assertEqual(error.code, 507)
        upload.abort(keep_partial=False)
        self.assertEqual(visible_files(self.root), [])


class _Usage:
    """What C{shutil.disk_usage} tells: here only C{free} is read."""

    def __init__(self, free: int) -> None:
        self.free = free


class _NoSpaceFile(io.FileIO):
    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullDiskStorage(DirectoryStorage):
    """A storage whose temporary files report a full disk on write."""

    def _open_temp(self, temp_name: str) -> io.FileIO:  # type: ignore[override]
        handle = super()._open_temp(temp_name)
        fd = os.dup(handle.fileno())  # the same open file: the lock stays held
        handle.close()
        return _NoSpaceFile(fd, "r+")


class StaleTests(StorageTestCase):
    def leave_partial(self, path: str) -> None:
        upload = self.begin(path, 10, None, MTIME_NS, trailer=True)
        upload.write(b"12345")
        upload.abort(keep_partial=True)

    def test_remove_old(self) -> None:
        """Partials older than max_age are removed; young ones are kept."""
        self.leave_partial("a")
        self.assertEqual(self.storage.remove_stale(3600), 0)
        self.assertEqual(len(state_files(self.root, "partial")), 1)
        self.assertEqual(self.storage.remove_stale(3600, now=time.time() + 7200), 1)
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_skips_locked(self) -> None:
        """A partial an upload is writing (locked) is left alone, however old."""
        self.leave_partial("a")
        active = self.begin("a", 10, None, MTIME_NS, trailer=True)
        self.assertEqual(active.offset, 5)
        self.assertEqual(self.storage.remove_stale(0, now=time.time() + 7200), 0)
        active.write(b"67890")
        self.assertEqual(self.successResultOf(active.finish()).size, 10)
        self.assertEqual(self.read("a"), b"1234567890")

    def test_removes_stray_temporary_files(self) -> None:
        """Old files in the tmp directory (a crash's leftovers) are removed."""
        write_file(os.path.join(self.root, ".filexfer", "tmp", "leftover"), b"x")
        self.assertEqual(self.storage.remove_stale(60, now=time.time() + 120), 1)
        self.assertEqual(state_files(self.root, "tmp"), [])
