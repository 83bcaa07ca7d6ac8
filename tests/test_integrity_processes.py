"""The integrity issue's exact inputs against real processes on loopback.

tests/test_integrity.py drives the same inputs through a receiver in memory;
here a real C{twistd filexfer} stores them, C{filexfer send} (and raw
sockets, tftp-hpa) send them.  Nothing sleeps to synchronise: the tests wait
for the server's log lines, for files on disk (polled, bounded) and for
socket replies; every process is bounded in time and stopped by its PID.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from twisted.trial import unittest

from filexfer.tcp import _wire
from tests.helpers import (
    LOOPBACK,
    mount_tmpfs,
    read_line,
    recv_all,
    recv_exactly,
    reset_socket,
    run_filexfer,
    start_twistd,
    start_twistd_tftp,
    state_files,
    upload_holding,
    visible_files,
    wait_until,
    write_file,
)

BIG = 5_000_000
"""The oversized upload of the limit tests: 5 MB."""

CHUNK = 64 * 1024


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send C{data}; False once the server stopped taking bytes (reset or closed)."""
    view = memoryview(data)
    try:
        for start in range(0, len(view), CHUNK):
            sock.sendall(view[start : start + CHUNK])
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            raise
        return False
    return True


class ProcessTestCase(unittest.TestCase):
    """A server root and a local directory of files to send."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.root = os.path.join(base, "root")
        self.local = os.path.join(base, "local")
        os.makedirs(self.local)

    def send(self, path: str, port: int) -> subprocess.CompletedProcess[str]:
        """C{filexfer send --no-progress PATH 127.0.0.1:PORT}, bounded."""
        return run_filexfer("send", "--no-progress", path, f"{LOOPBACK}:{port}")

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.root, name), "rb") as handle:
            return handle.read()

    def upload_holding(self, port: int, request: _wire.PutRequest, held: int) -> socket.socket:
        """An FX/1 upload of C{request} whose first C{held} bytes (As) are on the server's disk."""
        return upload_holding(self.root, port, request, held)


# -- 0. the server's log tells how an upload ended ---------------------------------------


@pytest.mark.integration
class ShutdownLogTests(ProcessTestCase):
    def test_upload_cut_by_sigterm_is_logged(self) -> None:
        """SIGTERM to twistd while an FX/1 upload streams and stalls past --grace: one
        line saying the shutdown cut it and that its bytes are kept; the partial is there."""
        server = start_twistd(self, self.root, "--grace", "0.5")
        request = _wire.PutRequest("cut.bin", 100_000, None, 1_650_000_000 * 10**9, trailer=True)
        sock = self.upload_holding(server.port, request, 40_000)
        self.addCleanup(sock.close)
        server.signal(signal.SIGTERM)
        self.assertEqual(server.wait(30), 0)  # once the grace has passed
        lines = [line for line in server.log.lines if "'cut.bin'" in line]
        self.assertEqual(len(lines), 1, server.log.text())
        self.assertTrue(
            lines[0].endswith(": cut by shutdown after 40000 of 100000 bytes (kept for resume)"),
            lines[0],
        )
        self.assertRegex(lines[0], r"fx/1 127\.0\.0\.1:\d+ 'cut\.bin' 40000 bytes in ")
        (partial,) = state_files(self.root, "partial")
        self.assertEqual(
            os.path.getsize(os.path.join(self.root, ".filexfer", "partial", partial)), 40_000
        )
        try:  # the connection was dropped (reset)
            rest = sock.recv(1)
        except ConnectionResetError:
            rest = b""
        self.assertEqual(rest, b"")


# -- 1. a resumed prefix of an older version of the file ------------------------------


@pytest.mark.integration
class RewrittenFileResumeTests(ProcessTestCase):
    def test_cut_upload_of_as_then_file_rewritten_as_bs(self) -> None:
        """100,000 As cut at 40,000; the file rewritten as Bs, mtime restored: all Bs, once."""
        source = write_file(os.path.join(self.local, "data.bin"), b"A" * 100_000)
        info = os.stat(source)
        server = start_twistd(self, self.root)

        # exactly the headers `filexfer send` sends for this file
        request = _wire.PutRequest("data.bin", 100_000, None, info.st_mtime_ns, trailer=True)
        reset_socket(self.upload_holding(server.port, request, 40_000))
        server.log.wait_for(
            r"'data.bin' 40000 bytes .*: "
            r"client aborted after 40000 of 100000 bytes \(kept for resume\)$"
        )

        with open(source, "r+b") as handle:  # in place: the same inode, as an editor may
            handle.write(b"B" * 100_000)
        os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns))
        self.assertEqual(os.stat(source).st_mtime_ns, info.st_mtime_ns)

        for attempt in range(2):
            mark = len(server.log.lines)
            result = self.send(source, server.port)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("-> data.bin:", result.stdout)
            outcome = r"already stored as" if attempt else r"(?<!already )stored as"
            server.log.wait_for(rf"'data.bin' .*: {outcome} 'data.bin'", start=mark)
            self.assertEqual(self.read("data.bin"), b"B" * 100_000)
        self.assertEqual(visible_files(self.root), ["data.bin"])
        self.assertEqual(state_files(self.root, "partial"), [])


# -- 2. same size, same second ---------------------------------------------------


@pytest.mark.integration
class SameSizeSameSecondTests(ProcessTestCase):
    def test_rewritten_within_the_same_second(self) -> None:
        """4 bytes, rewritten with 4 others in the same second: stored as C{f (1).txt}."""
        server = start_twistd(self, self.root)
        second = int(time.time()) - 60
        source = write_file(os.path.join(self.local, "f.txt"), b"1234")
        os.utime(source, ns=(second * 10**9, second * 10**9 + 100_000_000))
        first = self.send(source, server.port)
        self.assertEqual(first.returncode, 0, first.stdout + first.stderr)
        self.assertEqual(visible_files(self.root), ["f.txt"])

        write_file(source, b"abcd")
        os.utime(source, ns=(second * 10**9, second * 10**9 + 600_000_000))
        second_send = self.send(source, server.port)
        self.assertEqual(second_send.returncode, 0, second_send.stdout + second_send.stderr)
        self.assertIn("-> f (1).txt:", second_send.stdout)
        self.assertEqual(visible_files(self.root), ["f (1).txt", "f.txt"])
        self.assertEqual((self.read("f.txt"), self.read("f (1).txt")), (b"1234", b"abcd"))

        third = self.send(source, server.port)
        self.assertEqual(third.returncode, 0, third.stdout + third.stderr)
        self.assertIn("-> f (1).txt:", third.stdout)
        self.assertEqual(visible_files(self.root), ["f (1).txt", "f.txt"])
        self.assertEqual((self.read("f.txt"), self.read("f (1).txt")), (b"1234", b"abcd"))


# -- 3. one renamed copy, however often it is sent ------------------------------------


@pytest.mark.integration
class RenamedCopyTests(ProcessTestCase):
    def test_v2_sent_three_times(self) -> None:
        """v1 of C{n.txt} stored; v2 sent three times: one C{n (1).txt}, named by every run."""
        server = start_twistd(self, self.root)
        source = write_file(os.path.join(self.local, "n.txt"), b"version 1")
        os.utime(source, (1_700_000_000, 1_700_000_000))
        result = self.send(source, server.port)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

        write_file(source, b"version 2")
        os.utime(source, (1_700_000_007, 1_700_000_007))
        for _ in range(3):
            result = self.send(source, server.port)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertIn("-> n (1).txt:", result.stdout)
        self.assertEqual(visible_files(self.root), ["n (1).txt", "n.txt"])
        self.assertEqual((self.read("n.txt"), self.read("n (1).txt")), (b"version 1", b"version 2"))


# -- 4 and 5. limits hold for the bytes that arrive (I4) ------------------------------


class ArrivingBytesLimits:
    """A 5 MB upload that announces no size, in each form, against a limit.

    A mix-in: subclasses give the server's options (the limit), the root's
    place and the codes the refusal carries.
    """

    code = 0
    """The FX/1 error code of the refusal (413 or 507)."""
    tftp_code = 0
    """The TFTP error code of the refusal (3: disk full or allocation exceeded)."""

    def server_options(self) -> list[str]:
        raise NotImplementedError

    def make_root(self) -> str:
        """Where the server stores (created by it)."""
        return os.path.join(self.base, "root")

    def setUp(self) -> None:
        super().setUp()
        self.root = self.make_root()
        self.big = write_file(os.path.join(self.local, "big.bin"), b"x" * BIG)
        self.server, self.udp = start_twistd_tftp(
            self, self.root, self.base, *self.server_options()
        )
        self.port = self.server.port

    def assert_nothing_kept(self) -> None:
        """Nothing under a final name; the temporary file goes (its removal may trail the log)."""
        self.assertEqual(visible_files(self.root), [])
        wait_until(
            lambda: state_files(self.root, "tmp") + state_files(self.root, "partial") == [],
            10,
            "the temporary file to be removed",
        )

    def tftp_put(self, local_name: str) -> subprocess.CompletedProcess[str]:
        """tftp-hpa (no options, so no tsize) puts C{local_name} from the local directory."""
        binary = shutil.which("tftp")
        self.assertIsNotNone(binary, "tftp-hpa is missing: run scripts/install-test-tools")
        assert binary is not None
        command = [binary, "-m", "binary", LOOPBACK, str(self.udp), "-c", "put", local_name]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=self.local)

    def test_classic_form(self) -> None:
        """Classic form (name, ok, stream, close): reset at the limit, nothing stored."""
        with socket.create_connection((LOOPBACK, self.port), timeout=30) as sock:
            sock.sendall(b"big.bin")
            self.assertEqual(recv_exactly(sock, 2), b"ok")
            completed = send_quietly(sock, b"x" * BIG)
            try:
                if completed:
                    sock.shutdown(socket.SHUT_WR)
                answer = recv_all(sock)
            except OSError as exc:  # the reset the classic form gets as its refusal
                self.assertIn(exc.errno, (errno.ECONNRESET, errno.ENOTCONN))
                answer = b""
        self.assertEqual(answer, b"")  # the classic form has no words after "ok"
        self.server.log.wait_for(rf"classic .*'big.bin' .*refused: {self.code} ")
        self.assert_nothing_kept()

        small = write_file(os.path.join(self.local, "small.txt"), b"small")
        with socket.create_connection((LOOPBACK, self.port), timeout=30) as sock:
            sock.sendall(b"small.txt")
            self.assertEqual(recv_exactly(sock, 2), b"ok")
            with open(small, "rb") as handle:
                sock.sendall(handle.read())
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recv_all(sock), b"")
        self.server.log.wait_for(r"classic .*'small.txt' 5 bytes .*: stored as 'small.txt'")
        self.assertEqual(visible_files(self.root), ["small.txt"])

    def test_fx1_without_size(self) -> None:
        """FX/1 without Size, half-closed after 5 MB: the error line, nothing stored."""
        with socket.create_connection((LOOPBACK, self.port), timeout=30) as sock:
            sock.sendall(_wire.encode_put(_wire.PutRequest("big.bin")))
            self.assertEqual(read_line(sock), b"ok 0\n")
            if send_quietly(sock, b"x" * BIG):
                sock.shutdown(socket.SHUT_WR)
            answer = recv_all(sock)
        self.assertTrue(answer.startswith(b"error %d " % self.code), answer)
        self.assertTrue(answer.endswith(b"\n") and answer.count(b"\n") == 1, answer)
        self.server.log.wait_for(rf"fx/1 .*'big.bin' .*refused: {self.code} ")
        self.assert_nothing_kept()

        small = write_file(os.path.join(self.local, "small.txt"), b"small")
        result = self.send(small, self.port)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(visible_files(self.root), ["small.txt"])

    def test_tftp_without_tsize(self) -> None:
        """TFTP WRQ without tsize (tftp-hpa): an ERROR packet at the limit, nothing stored."""
        result = self.tftp_put("big.bin")
        # tftp-hpa prints the ERROR packet ("Error code 3: ...") but its -c exits 0
        self.assertIn(f"Error code {self.tftp_code}: ", result.stdout + result.stderr)
        self.server.log.wait_for(rf"tftp-wrq .*'big.bin' .*: (refused: )?error {self.code} ")
        self.assert_nothing_kept()

        write_file(os.path.join(self.local, "small.txt"), b"small")
        result = self.tftp_put("small.txt")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(visible_files(self.root), ["small.txt"])
        self.assertEqual(self.read("small.txt"), b"small")


@pytest.mark.integration
class MaxSizeTests(ArrivingBytesLimits, ProcessTestCase):
    """C{--max-size 1M} (1 MiB): 413, or TFTP's error for a file too large."""

    code = 413
    tftp_code = 3

    def server_options(self) -> list[str]:
        return ["--max-size", "1M"]


@pytest.mark.integration
class MinFreeTests(ArrivingBytesLimits, ProcessTestCase):
    """C{--min-free} on a 32 MiB tmpfs root leaving about 2 MiB to use: 507 / disk full."""

    code = 507
    tftp_code = 3

    def server_options(self) -> list[str]:
        return ["--min-free", "30M"]

    def make_root(self) -> str:
        """The root on a fresh 32 MiB tmpfs; the test is skipped only when mounting fails."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        why_not = mount_tmpfs(self, folder, "size=32m")
        if why_not is not None:
            raise unittest.SkipTest(f"cannot mount a tmpfs here: {why_not}")
        self.assertLess(shutil.disk_usage(folder).free - 30 * 2**20, BIG)  # < 5 MB may be used
        return os.path.join(folder, "root")


# -- 6. a directory or a symlink under the final name: 409 up front ------------------


@pytest.mark.integration
class ConflictAtHandshakeTests(ProcessTestCase):
    def first_reply(self, port: int, name: str) -> bytes:
        """A raw FX/1 client announcing a 5 MB file: the server's first reply line."""
        with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
            sock.sendall(_wire.encode_put(_wire.PutRequest(name, BIG)))
            return read_line(sock)

    def check_refused(self, policy: str, names: list[str]) -> None:
        server = start_twistd(self, self.root, "--on-conflict", policy)
        for name in names:
            reply = self.first_reply(server.port, name)
            self.assertTrue(reply.startswith(b"error 409 "), (policy, name, reply))
            server.log.wait_for(rf"'{name}' 0 bytes .*refused: 409 ")
        self.assertEqual(sorted(os.listdir(os.path.join(self.root, "dir.bin"))), ["inside.txt"])
        self.assertEqual(state_files(self.root, "tmp") + state_files(self.root, "partial"), [])

    def make_entries(self) -> None:
        write_file(os.path.join(self.root, "dir.bin", "inside.txt"), b"keep")
        outside = write_file(os.path.join(self.base, "outside.bin"), b"outside")
        os.symlink(outside, os.path.join(self.root, "link.bin"))
        os.symlink(os.path.join(self.base, "nowhere"), os.path.join(self.root, "dangling.bin"))

    def test_refuse(self) -> None:
        """C{--on-conflict refuse}: a directory, a symlink, a dangling symlink: 409 first."""
        self.make_entries()
        self.check_refused("refuse", ["dir.bin", "link.bin", "dangling.bin"])
        with open(os.path.join(self.base, "outside.bin"), "rb") as handle:
            self.assertEqual(handle.read(), b"outside")

    def test_overwrite(self) -> None:
        """C{--on-conflict overwrite}: a directory under the final name: 409 first."""
        self.make_entries()
        self.check_refused("overwrite", ["dir.bin"])
