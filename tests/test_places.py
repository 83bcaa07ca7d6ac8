"""Names and places the server cannot keep: a clear answer up front, never a 500 after the body.

A numbered name must fit the file system; a component too long for the
target file system is refused at the handshake; a directory inside the root
that is another file system (a mount point) stores and resumes uploads.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer.storage import DirectoryStorage, Receipt, numbered_name
from filexfer.tcp import _wire
from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol

from .helpers import mount_tmpfs, payload, sha256_bytes, state_files, visible_files

MiB = 1 << 20


def put(path: str, **headers: Any) -> bytes:
    """An FX/1 handshake, unchecked: these tests send what a client must not."""
    return _wire._encode_put(_wire.PutRequest(path, **headers))


class _ShortNamesStorage(DirectoryStorage):
    """A storage whose directory C{small} (once made) is on a file system of 64-byte names.

    No file system with a NAME_MAX below 255 can be mounted here, so the
    limit the file system would report is what this double changes.
    """

    def _name_limit(self, dir_fd: int) -> int:
        small = os.path.join(self.root, "small")
        if os.path.isdir(small) and os.path.samestat(os.fstat(dir_fd), os.stat(small)):
            return 64
        return super()._name_limit(dir_fd)


class PlacesTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.storage = DirectoryStorage(self.root)
        self.clock = Clock()

    def connect(self, storage: DirectoryStorage | None = None) -> tuple[ReceiverProtocol, Any]:
        """A receiver on a StringTransport."""
        factory = ReceiverFactory(storage or self.storage, clock=self.clock)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def upload(self, path: str, data: bytes, storage: DirectoryStorage | None = None) -> bytes:
        """One whole FX/1 upload with Size and SHA256; the server's reply."""
        protocol, transport = self.connect(storage)
        protocol.dataReceived(put(path, size=len(data), sha256=sha256_bytes(data)))
        protocol.dataReceived(data)
        reply: bytes = transport.value()
        protocol.connectionLost(Failure(ConnectionLost()))
        return reply

    def store(self, path: str, data: bytes, storage: DirectoryStorage | None = None) -> Receipt:
        """Upload C{data} directly through the storage."""
        upload = self.successResultOf((storage or self.storage).begin(path, len(data), None, None))
        upload.write(data)
        return self.successResultOf(upload.finish())

    def mount_tmpfs(self, folder: str, size: str = "16m") -> bool:
        """Mount a tmpfs at C{folder} (made if needed); False where this machine may not mount."""
        return mount_tmpfs(self, folder, f"size={size}") is None


class LongNameTests(PlacesTestCase):
    def test_255_byte_names_twice_under_rename(self) -> None:
        """255-byte names sent twice: the second is stored under a fitting numbered name (done)."""
        for name in ["a." + "b" * 253, "x" * 251 + ".bin", "x" * 248 + ".tar.gz", "é" * 127 + "a"]:
            self.assertEqual(len(name.encode()), 255)
            first, second = payload(100, seed=1), payload(100, seed=2)
            self.assertEqual(
                self.upload(name, first),
                b"ok 0\n" + _wire.encode_done(100, sha256_bytes(first), name),
            )
            renamed = numbered_name(name, 1)
            self.assertLessEqual(len(renamed.encode()), 255)
            self.assertEqual(
                self.upload(name, second),
                b"ok 0\n" + _wire.encode_done(100, sha256_bytes(second), renamed),
            )
            with open(os.path.join(self.root, renamed), "rb") as handle:
                self.assertEqual(handle.read(), second)

    def test_classic_form_long_extension_twice(self) -> None:
        """A classic upload of a 255-byte name with a long extension, twice: both stored."""
        name = "a." + "b" * 253
        for content in (b"one", b"two"):
            protocol, transport = self.connect()
            protocol.dataReceived(name.encode())
            protocol.dataReceived(content)
            protocol.readConnectionLost()
            self.assertNotIn(b"error", transport.value())
        self.assertEqual(sorted(visible_files(self.root)), sorted([name, numbered_name(name, 1)]))

    def test_no_free_name_after_all_numbers(self) -> None:
        """With the name and every number up to 9999 taken: a clear 409, not a 500."""
        name = "a." + "b" * 253
        self.store(name, b"0")
        for number in range(1, 10_000):
            open(os.path.join(self.root, numbered_name(name, number)), "wb").close()
        upload = self.successResultOf(self.storage.begin(name, 1, None, None))
        upload.write(b"1")
        error = self.failureResultOf(upload.finish(), TransferError).value
        self.assertEqual(error.code, 409, str(error))
        self.assertIn("no free name", str(error))
        self.assertEqual(state_files(self.root, "tmp"), [])


class SmallNameMaxTests(PlacesTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.storage = _ShortNamesStorage(self.root)
        os.makedirs(os.path.join(self.root, "small"))

    def test_too_long_for_the_target_refused_at_handshake(self) -> None:
        """A component longer than the target file system's NAME_MAX: 400 instead of ok."""
        for path in ["small/" + "x" * 65, "small/new/" + "x" * 65, "small/" + "d" * 65 + "/f"]:
            protocol, transport = self.connect()
            protocol.dataReceived(put(path, size=3))
            self.assertTrue(transport.value().startswith(b"error 400 "), transport.value())
            self.assertIn(b"64 bytes", transport.value())
        self.assertEqual(self.store("x" * 65, b"abc").path, "x" * 65)  # the root allows 255
        self.assertEqual(visible_files(self.root), ["x" * 65])

    def test_numbered_name_fits_the_target(self) -> None:
        """Under the rename policy the numbered name fits a 64-byte file system."""
        path = "small/" + "r" * 60 + ".txt"
        self.store(path, b"1")
        receipt = self.store(path, b"2")
        self.assertEqual(receipt.path, "small/" + "r" * 56 + " (1).txt")


class MountPointTests(PlacesTestCase):
    """ROOT/archive is a tmpfs: another file system inside the root."""

    def setUp(self) -> None:
        super().setUp()
        self.archive = os.path.join(self.root, "archive")
        if not self.mount_tmpfs(self.archive):
            raise unittest.SkipTest("this machine may not mount a tmpfs")

    def test_stored_in_mount_point(self) -> None:
        """An upload into a mount point is stored there; its temporary file lived there too."""
        data = payload(300_000)
        reply = self.upload("archive/deep/new/a.bin", data)
        self.assertEqual(
            reply,
            b"ok 0\n" + _wire.encode_done(len(data), sha256_bytes(data), "archive/deep/new/a.bin"),
        )
        self.assertEqual(visible_files(self.root), ["archive/deep/new/a.bin"])
        self.assertEqual(state_files(self.archive, "tmp"), [])
        self.assertFalse(os.path.exists(os.path.join(self.archive, "deep", ".filexfer")))
        self.assertEqual(self.store("top.bin", b"root fs").path, "top.bin")  # the root still works

    def test_resume_across_reconnect_in_mount_point(self) -> None:
        """An interrupted FX/1 upload into a mount point resumes there after a reconnect."""
        data = payload(2 * MiB, seed=5)
        digest = sha256_bytes(data)
        protocol, transport = self.connect()
        protocol.dataReceived(put("archive/big.bin", size=len(data), sha256=digest))
        protocol.dataReceived(data[:MiB])
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(transport.value(), b"ok 0\n")
        self.assertEqual(len(state_files(self.archive, "partial")), 1)
        self.assertEqual(state_files(self.root, "partial"), [])

        protocol, transport = self.connect(DirectoryStorage(self.root))  # a restarted server
        protocol.dataReceived(put("archive/big.bin", size=len(data), sha256=digest))
        self.assertEqual(transport.value(), b"ok %d\n" % MiB)
        protocol.dataReceived(data[MiB:])
        self.assertEqual(
            transport.value(),
            b"ok %d\n" % MiB + _wire.encode_done(len(data), digest, "archive/big.bin"),
        )
        with open(os.path.join(self.archive, "big.bin"), "rb") as handle:
            self.assertEqual(handle.read(), data)
        self.assertEqual(state_files(self.archive, "partial"), [])

    def test_rename_and_overwrite_in_mount_point(self) -> None:
        """The conflict policies work inside a mount point."""
        self.store("archive/f.txt", b"1")
        self.assertEqual(self.store("archive/f.txt", b"2").path, "archive/f (1).txt")
        overwrite = DirectoryStorage(self.root, "overwrite")
        self.assertEqual(self.store("archive/f.txt", b"3", storage=overwrite).path, "archive/f.txt")
        self.assertEqual(visible_files(self.root), ["archive/f (1).txt", "archive/f.txt"])

    def test_state_directory_in_mount_point_is_reserved(self) -> None:
        """The mount's state directory cannot be written or read by a peer (403)."""
        self.store("archive/a", b"1")
        for path in ["archive/.filexfer/tmp/x", "archive/.filexfer"]:
            protocol, transport = self.connect()
            protocol.dataReceived(put(path, size=1))
            self.assertTrue(transport.value().startswith(b"error 403 "), transport.value())
        error = self.assertRaises(TransferError, self.storage.open_file, "archive/.filexfer/mounts")
        self.assertEqual(error.code, 403)

    def test_free_space_of_the_target(self) -> None:
        """Size beyond the free space of the mount (not the root's) is refused up front: 507."""
        small = os.path.join(self.archive, "small")
        if not self.mount_tmpfs(small, size="1m"):
            raise unittest.SkipTest("this machine may not mount a tmpfs")
        error = self.failureResultOf(
            self.storage.begin("archive/small/x", 2 * MiB), TransferError
        ).value
        self.assertEqual(error.code, 507)
        self.assertTrue(os.path.isdir(os.path.join(small, ".filexfer", "partial")))

    def test_remove_stale_covers_mount_state(self) -> None:
        """remove_stale, even after a restart, removes old partials in a mount's state directory."""
        upload = self.successResultOf(
            self.storage.begin("archive/p", 10, None, 1_600_000_000_000_000_000, trailer=True)
        )
        upload.write(b"12345")
        upload.abort(keep_partial=True)
        self.assertEqual(len(state_files(self.archive, "partial")), 1)
        restarted = DirectoryStorage(self.root)
        self.assertEqual(restarted.remove_stale(3600), 0)
        self.assertEqual(restarted.remove_stale(3600, now=time.time() + 7200), 1)
        self.assertEqual(state_files(self.archive, "partial"), [])
