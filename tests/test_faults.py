"""Faults with real processes: the server killed mid-upload, the disk filling up.

Each test is bounded in time and synchronises on log lines, file sizes and
socket replies, never on sleeps.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import defer, endpoints, reactor
from twisted.trial import unittest

from filexfer import DirectoryStorage, ReceiverFactory, ServerRefused, send_file
from filexfer.tcp import _wire
from tests.helpers import (
    LOOPBACK,
    mount_tmpfs,
    payload,
    read_line,
    run_filexfer,
    sha256_bytes,
    sha256_file,
    start_twistd,
    state_files,
    visible_files,
    wait_until,
    write_file,
)

MiB = 1 << 20


def fx_connect(port: int, request: _wire.PutRequest) -> tuple[socket.socket, bytes]:
    """Open an FX/1 upload by hand; return the socket and the server's first line."""
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    sock.sendall(_wire.encode_put(request))
    return sock, read_line(sock)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class KillDashNineTests(unittest.TestCase):
    def test_resume_after_server_killed(self) -> None:
        """kill -9 mid-upload of 200 MiB, restart, re-send: resumes at a non-zero offset, intact."""
        base = os.path.abspath(self.mktemp())
        root = os.path.join(base, "root")
        source = write_file(os.path.join(base, "big.bin"), payload(200 * MiB, seed=9))
        self.addCleanup(os.remove, source)
        info = os.stat(source)
        server = start_twistd(self, root)

        # the headers `filexfer send` sends: Size, Mtime and the SHA-256 trailer
        request = _wire.PutRequest("big.bin", info.st_size, None, info.st_mtime_ns, trailer=True)
        sock, reply = fx_connect(server.port, request)
        self.assertEqual(reply, b"ok 0 %s\n" % sha256_bytes(b"").encode())
        half = 100 * MiB
        with open(source, "rb") as handle:
            sock.sendall(handle.read(half))

        def partial_size() -> int:
            names = state_files(root, "partial")
            return (
                os.path.getsize(os.path.join(root, ".filexfer", "partial", names[0]))
                if names
                else 0
            )

        wait_until(lambda: partial_size() >= half, 30, "the first half to reach the disk")
        server.process.kill()
        server.wait(10)
        sock.close()
        self.assertEqual(visible_files(root), [], "a partial appeared under a final name")

        restarted = start_twistd(self, root)
        result = run_filexfer("send", "--no-progress", source, f"{LOOPBACK}:{restarted.port}")
        self.assertEqual(result.returncode, 0, result.stderr)
        restarted.log.wait_for(rf"resumed at byte {half}, stored as 'big.bin'")
        self.assertEqual(visible_files(root), ["big.bin"])
        self.assertEqual(sha256_file(os.path.join(root, "big.bin")), sha256_file(source))
        self.assertEqual(state_files(root, "partial"), [])


class DiskFullTests(unittest.TestCase):
    """The disk fills up mid-upload: 507, the temporary file is gone, serving goes on."""

    def small_filesystem(self) -> str:
        """A 16 MiB tmpfs, or a plain directory when this machine may not mount."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        return "" if mount_tmpfs(self, folder, "size=16m") is not None else folder

    def test_tmpfs_fills_mid_upload(self) -> None:
        """A real 16 MiB file system: an upload without Size that outgrows it gets 507."""
        folder = self.small_filesystem()
        if not folder:
            return self.test_storage_double_fills_mid_upload()
        root = os.path.join(folder, "root")
        server = start_twistd(self, root)

        sock, reply = fx_connect(server.port, _wire.PutRequest("huge.bin"))
        self.assertEqual(reply, b"ok 0\n")
        chunk = payload(MiB, seed=1)
        try:
            for _ in range(32):
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the server may stop reading: what it said still counts
            self.assertIn(exc.errno, (errno.EPIPE, errno.ECONNRESET))
        answer = read_to_end(sock)
        sock.close()
        self.assertTrue(answer.startswith(b"error 507 "), answer)
        server.log.wait_for(r"'huge.bin' .*refused: 507")
        self.assertEqual(state_files(root, "tmp"), [])
        self.assertEqual(visible_files(root), [])

        small = write_file(os.path.join(os.path.abspath(self.mktemp()), "after.txt"), b"x" * 4096)
        result = run_filexfer("send", "--no-progress", small, f"{LOOPBACK}:{server.port}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(visible_files(root), ["after.txt"])

    def test_size_beyond_free_space_refused_up_front(self) -> None:
        """A Size larger than the free space is refused before any byte is sent (507)."""
        root = os.path.join(os.path.abspath(self.mktemp()), "root")
        server = start_twistd(self, root, "--min-free", "1T")
        big = write_file(os.path.join(os.path.abspath(self.mktemp()), "a.bin"), b"y" * (2 * MiB))
        result = run_filexfer("send", "--no-progress", big, f"{LOOPBACK}:{server.port}")
        self.assertEqual(result.returncode, 1)
        self.assertIn("507", result.stderr)
        self.assertEqual(visible_files(root), [])
        self.assertEqual(state_files(root, "tmp") + state_files(root, "partial"), [])

    @defer.inlineCallbacks
    def test_storage_double_fills_mid_upload(self) -> Any:
        """A storage whose disk fills at 4 MiB (also the fallback where mounting is not allowed)."""
        root = os.path.abspath(self.mktemp())
        storage = DirectoryStorage(root)
        written = [0]
        real_pwrite = os.pwrite

        def pwrite(fd: int, data: Any, offset: int) -> int:  # the disk store writes with pwrite
            written[0] += len(data)
            if written[0] > 4 * MiB:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_pwrite(fd, data, offset)

        self.patch(os, "pwrite", pwrite)
        closed: defer.Deferred[None] = defer.Deferred()

        class Factory(ReceiverFactory):
            def release(self, connection: Any) -> None:
                super().release(connection)
                closed.callback(None)

        port = reactor.listenTCP(0, Factory(storage, clock=reactor), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        address = port.getHost()
        source = write_file(os.path.join(root + "-src", "big.bin"), payload(8 * MiB))
        endpoint = endpoints.TCP4ClientEndpoint(reactor, LOOPBACK, address.port)
        with self.assertRaises(ServerRefused) as caught:
            yield send_file(reactor, endpoint, source)
        self.assertEqual(caught.exception.code, 507)
        yield closed  # the server side closes once the client has read the error
        self.assertEqual(state_files(root, "tmp") + state_files(root, "partial"), [])
        self.assertEqual(visible_files(root), [])
