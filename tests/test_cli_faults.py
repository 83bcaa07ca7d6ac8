"""The `filexfer` command against faults: signals, odd local trees, bad names,
peers that send control characters or never answer, and words a user can act on.

Each test runs the real command (or the real sender) against a real server or
a scripted socket; nothing sleeps to synchronise, everything is bounded.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial import unittest

from filexfer._log import log_transfer
from filexfer._records import TransferRecord
from filexfer._text import escape
from filexfer.cli import files_to_send
from filexfer.tcp import _wire
from filexfer.tcp.sender import ConnectTimeout, ReplyTimeout, SendError, send_file

from .helpers import (
    LOOPBACK,
    ROOT,
    ServerProcess,
    child_env,
    free_port,
    free_udp_port,
    recv_all,
    run_filexfer,
    sha256_bytes,
    start_serve,
    visible_files,
    wait_until,
    write_file,
)

WAIT = 30.0


def start_filexfer(*args: str, cwd: str = ROOT) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "filexfer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(),
        cwd=cwd,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait (bounded) for the process; its status, stdout and stderr."""
    try:
        out, err = process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=WAIT)
        raise AssertionError(f"still running after {WAIT} s; stderr: {err}") from None
    return process.returncode, out, err


def sparse(path: str, size: int) -> str:
    """A file of C{size} zero bytes that costs no disk (quick to make and to read)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def files_under(folder: str) -> list[str]:
    found = []
    for where, _, names in os.walk(folder):
        found += [os.path.join(where, name) for name in names]
    return found


def has_bytes(folder: str) -> bool:
    return any(os.path.getsize(path) > 0 for path in files_under(folder))


class Base(unittest.TestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.root = os.path.join(self.base, "root")

    def serve(self, *extra: str) -> ServerProcess:
        server = start_serve(self, self.root, *extra)
        self.dest = f"{LOOPBACK}:{server.port}"
        return server

    def serve_tftp(self) -> ServerProcess:
        """C{filexfer serve} with TFTP on a free loopback UDP port (C{self.udp})."""
        self.udp = free_udp_port()
        command = [
            sys.executable, "-m", "filexfer", "serve",
            "--listen", f"tcp:0:interface={LOOPBACK}",
            "--tftp-port", str(self.udp), "--tftp-interface", LOOPBACK,
            "--root", self.root,
        ]  # fmt: skip
        server = ServerProcess(command, cwd=self.base)
        self.addCleanup(server.stop)
        server.wait_listening()
        server.log.wait_for(rf"TFTPServerProtocol starting on {self.udp}")
        return server


# -- 1. an interruption is never success ---------------------------------------


class InterruptionTests(Base):
    def test_signal_during_fx1_send(self) -> None:
        """SIGTERM (143) or SIGINT (130) mid-file: one line naming the file and saying a
        re-run resumes; the second file is not sent and the status is not 0."""
        big = sparse(os.path.join(self.base, "a.bin"), 4 << 30)
        small = write_file(os.path.join(self.base, "b.bin"), b"b")
        self.serve()
        partial = os.path.join(self.root, ".filexfer", "partial")
        for signum, status in [(signal.SIGTERM, 143), (signal.SIGINT, 130)]:
            before = set(files_under(partial))
            remote = f"/{signal.Signals(signum).name}/"
            process = start_filexfer("send", "--no-progress", big, small, self.dest + remote)

            def arriving(before: set[str] = before) -> bool:
                new = set(files_under(partial)) - before
                return any(os.path.getsize(path) > 0 for path in new)

            wait_until(arriving, WAIT, "bytes to arrive")
            process.send_signal(signum)
            code, out, err = finish(process)
            self.assertEqual(code, status, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(signal.Signals(signum).name, err)
            self.assertIn("a.bin", err)
            self.assertIn("1 more file not sent", err)
            self.assertIn("again to resume", err)
            self.assertNotIn("non-clean", err)
            self.assertEqual(out, "")
            self.assertEqual(visible_files(self.root), [])

    def scripted_server(self, reply: bytes | None) -> tuple[str, threading.Event]:
        """A loopback port that reads each request and answers C{reply} and closes
        (None: never answers); the event is set once a request has arrived."""
        listener = socket.create_server((LOOPBACK, 0))
        self.addCleanup(listener.close)
        asked = threading.Event()
        held: list[socket.socket] = []
        self.addCleanup(lambda: [sock.close() for sock in held])

        def serve() -> None:
            while True:
                try:
                    sock, _ = listener.accept()
                except OSError:
                    return  # the listener was closed
                held.append(sock)
                sock.settimeout(WAIT)
                try:
                    if sock.recv(65536):
                        asked.set()
                        if reply is not None:
                            sock.sendall(reply)
                            sock.close()
                except OSError:
                    pass

        threading.Thread(target=serve, daemon=True).start()
        return f"{LOOPBACK}:{listener.getsockname()[1]}", asked

    def test_signal_while_waiting_to_retry_a_busy_server(self) -> None:
        """SIGTERM (143) or SIGINT (130) during the wait before retrying a 503:
        the interrupt line after the retry note, never status 0."""
        local = write_file(os.path.join(self.base, "n.txt"), b"n")
        dest, _ = self.scripted_server(b"error 503 server busy\n")
        for signum, status in [(signal.SIGTERM, 143), (signal.SIGINT, 130)]:
            process = start_filexfer("send", "--no-progress", local, dest)
            assert process.stderr is not None
            note = process.stderr.readline()  # bounded: the server answers at once
            self.assertIn("server busy (503); trying again in", note)
            process.send_signal(signum)
            code, out, err = finish(process)
            self.assertEqual(code, status, note + err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(f"interrupted by {signal.Signals(signum).name} while sending", err)
            self.assertIn("n.txt", err)
            self.assertEqual(out, "")

    def test_signal_while_waiting_for_the_first_reply(self) -> None:
        """SIGTERM while the server has the request but has not answered: 143, one line."""
        local = write_file(os.path.join(self.base, "r.txt"), b"r")
        dest, asked = self.scripted_server(None)
        process = start_filexfer("send", "--no-progress", local, dest)
        self.assertTrue(asked.wait(WAIT), "the request never arrived")
        process.send_signal(signal.SIGTERM)
        code, out, err = finish(process)
        self.assertEqual(code, 143, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("interrupted by SIGTERM while sending", err)
        self.assertEqual(out, "")

    def test_sigterm_during_tftp_send(self) -> None:
        """SIGTERM during a TFTP upload: 143 and a line naming the file."""
        big = sparse(os.path.join(self.base, "big.bin"), 1 << 30)
        self.serve_tftp()
        state = os.path.join(self.root, ".filexfer")
        process = start_filexfer(
            "send", "--no-progress", "--blksize", "512", "--windowsize", "1", big,
            f"tftp://{LOOPBACK}:{self.udp}/",
        )  # fmt: skip
        wait_until(lambda: os.path.isdir(state) and has_bytes(state), WAIT, "TFTP bytes")
        process.send_signal(signal.SIGTERM)
        code, out, err = finish(process)
        self.assertEqual(code, 143, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("interrupted by SIGTERM while sending", err)
        self.assertIn("big.bin", err)

    def test_sigint_during_tftp_get(self) -> None:
        """Ctrl-C during `get`: 130, one line, and no temporary file left behind."""
        sparse(os.path.join(self.root, "big.bin"), 1 << 30)
        self.serve_tftp()
        dl = os.path.join(self.base, "dl")
        os.makedirs(dl)
        process = start_filexfer(
            "get", "--no-progress", "--blksize", "512", "--windowsize", "1",
            f"tftp://{LOOPBACK}:{self.udp}/big.bin", os.path.join(dl, "copy.bin"),
        )  # fmt: skip
        wait_until(lambda: has_bytes(dl), WAIT, "the download to start")
        process.send_signal(signal.SIGINT)
        code, out, err = finish(process)
        self.assertEqual(code, 130, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("interrupted by SIGINT while downloading", err)
        self.assertEqual(os.listdir(dl), [])


# -- 2. local trees as they really are --------------------------------------------


class TreeTests(Base):
    def make_tree(self) -> str:
        tree = os.path.join(self.base, "tree")
        write_file(os.path.join(tree, "a.txt"), b"a")
        write_file(os.path.join(tree, "sub", "c.txt"), b"c")
        os.symlink("a.txt", os.path.join(tree, "link-to-file"))
        os.symlink("sub", os.path.join(tree, "link-to-dir"))
        os.symlink("nowhere", os.path.join(tree, "dangling"))
        os.mkfifo(os.path.join(tree, "fifo"))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(os.path.join(tree, "sock"))
        write_file(os.fsdecode(os.path.join(os.fsencode(tree), b"bad\xffname")), b"x")
        return tree

    def test_plan(self) -> None:
        """Regular files and symlinks to files are planned; each other entry is one line."""
        tree = self.make_tree()
        skipped: list[str] = []
        plan = list(files_to_send([tree], "", skipped))
        self.assertEqual(
            [remote for _, remote in plan], ["tree/a.txt", "tree/link-to-file", "tree/sub/c.txt"]
        )
        self.assertEqual(len(skipped), 5, skipped)
        text = "\n".join(skipped)
        for words in ["dangling symlink", "a FIFO", "a socket", "symlink to a directory", "UTF-8"]:
            self.assertIn(words, text)

    def test_send_tree(self) -> None:
        """A dangling symlink and a FIFO: the other files are stored, one line per skipped
        entry, status 3, and nothing blocks (the old command blocked on the FIFO)."""
        tree = self.make_tree()
        self.serve()
        result = run_filexfer("send", "--no-progress", tree, self.dest)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertEqual(
            visible_files(self.root), ["tree/a.txt", "tree/link-to-file", "tree/sub/c.txt"]
        )
        self.assertEqual(len(result.stderr.splitlines()), 5, result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_fifo_on_the_command_line(self) -> None:
        """A FIFO named as FILE is skipped, never opened."""
        fifo = os.path.join(self.base, "fifo")
        os.mkfifo(fifo)
        result = run_filexfer("send", fifo, f"{LOOPBACK}:{free_port()}")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("a FIFO", result.stderr)

    def test_sender_never_blocks_on_a_fifo(self) -> None:
        """send_file itself refuses a FIFO at once (opened O_NONBLOCK, checked with fstat)."""
        fifo = os.path.join(self.base, "fifo")
        os.mkfifo(fifo)
        returned = threading.Event()

        def release() -> None:  # bounds the test: a blocking open() is let go after a while
            if not returned.wait(10):
                with open(fifo, "wb"):
                    pass

        threading.Thread(target=release, daemon=True).start()
        started = time.monotonic()
        result = send_file(Clock(), _NeverEndpoint(), fifo)
        returned.set()
        self.assertLess(time.monotonic() - started, 5, "send_file blocked opening a FIFO")
        failure = self.failureResultOf(result, SendError)
        self.assertIn("FIFO", str(failure.value))


# -- 3. names checked before the server reads them differently ---------------------


class NameTests(Base):
    def test_newline_and_cr_in_names(self) -> None:
        """A name with LF + a header line, or ending in CR, is not sent (it was stored as
        report.txt, replacing another file under --on-conflict overwrite)."""
        write_file(os.path.join(self.root, "report.txt"), b"keep me")
        self.serve("--on-conflict", "overwrite")
        for name in ["report.txt\nX-Note: 1", "report.txt\r"]:
            local = write_file(os.path.join(self.base, name), b"other")
            result = run_filexfer("send", "--no-progress", local, self.dest)
            self.assertNotEqual(result.returncode, 0, result.stdout)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
            self.assertIn("control characters", result.stderr)
            os.remove(local)
        with open(os.path.join(self.root, "report.txt"), "rb") as handle:
            self.assertEqual(handle.read(), b"keep me")

    def test_encode_put_never_lies(self) -> None:
        """encode_put refuses what would parse differently: paths and tokens."""
        for request in [
            _wire.PutRequest("report.txt\nX-Note: 1"),
            _wire.PutRequest("name\r"),
            _wire.PutRequest("../up"),
            _wire.PutRequest("ok", token="secret\nSize: 1"),
            _wire.PutRequest("ok", token=" secret"),
        ]:
            self.assertRaises(ValueError, _wire.encode_put, request)


# -- 4. text from a peer is never printed raw ---------------------------------------


def _fake_fx1_server(reply: Any) -> tuple[int, threading.Thread]:
    """A one-connection server: reads the header block, then C{reply(sock, request)}."""
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            listener.settimeout(WAIT)
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(WAIT)
                buffer = b""
                while b"\n\n" not in buffer:
                    buffer += sock.recv(4096)
                request, rest = _wire.parse_header_block(buffer)
                reply(sock, request, rest)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


NASTY = "\x1b]0;owned\x07\x1b[2J"


class PeerTextTests(Base):
    def test_error_reason(self) -> None:
        """ESC and BEL in a server's error reason are escaped on stderr."""

        def reply(sock: socket.socket, request: Any, rest: bytes) -> None:
            sock.sendall(f"error 400 bad {NASTY}\n".encode())

        port, thread = _fake_fx1_server(reply)
        local = write_file(os.path.join(self.base, "f.txt"), b"data")
        result = run_filexfer("send", local, f"{LOOPBACK}:{port}")
        thread.join(WAIT)
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("\x1b", result.stderr)
        self.assertNotIn("\x07", result.stderr)
        self.assertIn("\\x1b", result.stderr)

    def test_done_path(self) -> None:
        """ESC and BEL in the path of a server's done line are escaped on stdout."""
        data = b"data"

        def reply(sock: socket.socket, request: Any, rest: bytes) -> None:
            sock.sendall(b"ok 0\n")
            while len(rest) < len(data):
                rest += sock.recv(4096)
            sock.sendall(f"done 4 {sha256_bytes(data)} f{NASTY}.txt\n".encode())
            recv_all(sock)

        port, thread = _fake_fx1_server(reply)
        local = write_file(os.path.join(self.base, "f.txt"), data)
        result = run_filexfer("send", local, f"{LOOPBACK}:{port}")
        thread.join(WAIT)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("\x1b", result.stdout)
        self.assertNotIn("\x07", result.stdout)
        self.assertIn("\\x1b", result.stdout)

    def test_tftp_error_message(self) -> None:
        """ESC and BEL in a TFTP ERROR packet are escaped on stderr."""
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        server.bind((LOOPBACK, 0))
        server.settimeout(WAIT)
        port = server.getsockname()[1]

        def answer() -> None:
            _, peer = server.recvfrom(65536)
            server.sendto(b"\x00\x05\x00\x01" + f"no {NASTY}".encode() + b"\x00", peer)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        result = run_filexfer(
            "get", f"tftp://{LOOPBACK}:{port}/x", os.path.join(self.base, "x"), "--no-progress"
        )
        thread.join(WAIT)
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("\x1b", result.stderr)
        self.assertIn("\\x1b", result.stderr)

    def test_escape(self) -> None:
        """Controls, bidi overrides and undecodable bytes are escaped; other text is not."""
        self.assertEqual(
            escape("a\x1b[1m\x07\n\r\t\x7f\x9b"), "a\\x1b[1m\\x07\\x0a\\x0d\\x09\\x7f\\x9b"
        )
        self.assertEqual(escape("x\u202ey\udcff"), "x\\u202ey\\udcff")
        self.assertEqual(escape("naïve 文件 name.txt"), "naïve 文件 name.txt")

    def test_server_log(self) -> None:
        """The server's transfer line escapes what a client chose: path, outcome."""
        with capturedLogs() as events:
            log_transfer(
                TransferRecord(
                    protocol="tftp",
                    direction="upload",
                    peer="127.0.0.1:9",
                    path=f"p{NASTY}",
                    outcome="aborted",
                    detail=f"peer error 0 {NASTY}",
                )
            )
        from twisted.logger import formatEvent

        line = formatEvent(events[0])
        self.assertNotIn("\x1b", line)
        self.assertNotIn("\x07", line)


# -- 5. bounded waits -----------------------------------------------------------------


class _NeverEndpoint:
    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred()


class TimeoutTests(Base):
    def test_silent_server(self) -> None:
        """A port that accepts and never answers: one line after --reply-timeout seconds."""
        listener = socket.create_server((LOOPBACK, 0))  # the kernel accepts; nobody answers
        self.addCleanup(listener.close)
        local = write_file(os.path.join(self.base, "f"), b"f")
        dest = f"{LOOPBACK}:{listener.getsockname()[1]}"
        started = time.monotonic()
        result = run_filexfer("send", "--reply-timeout", "1", local, dest)
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("did not answer within 1 s", result.stderr)

    def test_default_timeouts(self) -> None:
        """send_file gives up connecting after 10 s and waiting for a reply after 30 s."""
        clock = Clock()
        path = write_file(os.path.join(self.base, "f"), b"f")
        result = send_file(clock, _NeverEndpoint(), path)
        clock.advance(10)
        self.assertIn("10 s", str(self.failureResultOf(result, ConnectTimeout).value))

        from twisted.internet.protocol import Protocol
        from twisted.internet.testing import StringTransport

        class Connecting:
            def connect(self, factory: Any) -> Deferred[Protocol]:
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(StringTransport())
                done: Deferred[Protocol] = Deferred()
                done.callback(protocol)
                return done

        result = send_file(clock, Connecting(), path)
        clock.advance(29.9)
        self.assertNoResult(result)
        clock.advance(0.1)
        self.failureResultOf(result, ReplyTimeout)

    def test_cancel(self) -> None:
        """Cancelling send_file drops the connection."""
        from twisted.internet.testing import StringTransport

        transport = StringTransport()

        class Connecting:
            def connect(self, factory: Any) -> Deferred[Any]:
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(transport)
                done: Deferred[Any] = Deferred()
                done.callback(protocol)
                return done

        path = write_file(os.path.join(self.base, "f"), b"f")
        result = send_file(Clock(), Connecting(), path)
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertTrue(transport.disconnecting or transport.disconnected)


# -- 8. words a user can act on ----------------------------------------------------


class WordsTests(Base):
    def test_get_into_missing_directory(self) -> None:
        """No internal temporary file name; what to do instead."""
        result = run_filexfer(
            "get", f"tftp://{LOOPBACK}:{free_udp_port()}/x.bin",
            os.path.join(self.base, "missing", "copy.bin"),
        )  # fmt: skip
        self.assertEqual(result.returncode, 1)
        self.assertNotIn(".part", result.stderr)
        self.assertIn("create it first", result.stderr)

    def test_get_mode_follows_umask(self) -> None:
        """A downloaded file gets 0666 less the umask (0644 under 022), not 0600."""
        write_file(os.path.join(self.root, "f.bin"), b"f" * 1000)
        self.serve_tftp()
        local = os.path.join(self.base, "f.bin")
        old = os.umask(0o022)
        try:
            result = run_filexfer(
                "get", "--no-progress", f"tftp://{LOOPBACK}:{self.udp}/f.bin", local
            )
        finally:
            os.umask(old)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(stat.S_IMODE(os.stat(local).st_mode), 0o644)

    def test_file_in_the_way_on_the_server(self) -> None:
        """Sending into x.txt/ when x.txt is a file: the server says so."""
        write_file(os.path.join(self.root, "x.txt"), b"x")
        self.serve()
        local = write_file(os.path.join(self.base, "f.txt"), b"f")
        result = run_filexfer("send", "--no-progress", local, self.dest + "/x.txt")
        self.assertEqual(result.returncode, 1)
        self.assertIn("is a file on the server", result.stderr)
        self.assertNotIn("crosses a symlink or a file", result.stderr)

    def test_plain_client_against_tls_port(self) -> None:
        """A plain client meeting a TLS server is told to use --tls, not 'closed cleanly'."""
        from ipaddress import ip_address

        from cryptography import x509

        from tests.test_tls import make_certificates

        folder = os.path.join(self.base, "certs")
        os.makedirs(folder)
        ca, key, cert = make_certificates(folder, [x509.IPAddress(ip_address(LOOPBACK))])
        port = free_port()
        self.serve("--listen", f"ssl:{port}:interface={LOOPBACK}:privateKey={key}:certKey={cert}")
        local = write_file(os.path.join(self.base, "f.txt"), b"f")
        result = run_filexfer("send", "--no-progress", local, f"{LOOPBACK}:{port}")
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("closed cleanly", result.stderr)
        self.assertIn("--tls", result.stderr)

    def test_tls_client_against_plain_port(self) -> None:
        """--tls against a plain port does not suggest --cacert."""
        self.serve()
        local = write_file(os.path.join(self.base, "f.txt"), b"f")
        result = run_filexfer("send", "--no-progress", "--tls", local, self.dest)
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("--cacert", result.stderr)
        self.assertIn("without --tls", result.stderr)

    def test_send_help(self) -> None:
        """send --help: TFTP defaults, the exit codes, a shell-safe IPv6 example."""
        result = run_filexfer("send", "--help")
        self.assertIn("'[::1]:9000'", result.stdout)
        self.assertIn("default 1428", result.stdout)
        self.assertIn("exit status", result.stdout)
        self.assertIn("130", result.stdout)


class FreshTesterTests(Base):
    """Inputs a tester new to the command tried: each a usage mistake said in one line."""

    def assertOneLine(self, result: Any, status: int, *words: str) -> None:
        self.assertEqual(result.returncode, status, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        for word in words:
            self.assertIn(word, lines[0])

    def test_cacert_that_is_no_certificate(self) -> None:
        """An empty or binary --cacert file is one line, not a pyOpenSSL traceback."""
        local = write_file(os.path.join(self.base, "f.txt"), b"f")
        for content in (b"", b"\x00\x01binary"):
            cacert = write_file(os.path.join(self.base, "ca.pem"), content)
            result = run_filexfer("send", "--tls", "--cacert", cacert, local, "127.0.0.1:9")
            self.assertOneLine(result, 2, "--cacert", "not a PEM certificate")

    def test_tls_with_tftp(self) -> None:
        """--tls (or --cacert) with a tftp:// destination is refused, not ignored."""
        local = write_file(os.path.join(self.base, "f.txt"), b"f")
        result = run_filexfer("send", "--tls", local, "tftp://127.0.0.1:9/")
        self.assertOneLine(result, 2, "TFTP has no TLS")

    def test_mode_with_tcp(self) -> None:
        """--mode with a TCP destination is refused in one line: the push sends bytes as is."""
        local = write_file(os.path.join(self.base, "f.txt"), b"f")
        result = run_filexfer("send", "--mode", "netascii", local, "127.0.0.1:9")
        self.assertOneLine(result, 2, "--mode", "TFTP")

    def test_digest_without_a_receipt(self) -> None:
        """Fresh-eyes finding on issue 16: --plain --digest blake3 was accepted and
        nothing was verified; --digest with --plain or TFTP is one usage line."""
        local = write_file(os.path.join(self.base, "f.txt"), b"f")
        for digest in ("blake3", "sha256"):
            result = run_filexfer("send", "--plain", "--digest", digest, local, "127.0.0.1:9")
            self.assertOneLine(result, 2, "--digest", "classic form (--plain) has no receipt")
            result = run_filexfer("send", "--digest", digest, local, "tftp://127.0.0.1:9/")
            self.assertOneLine(result, 2, "--digest", "TFTP has no receipt")

    def test_mode_contradicting_the_url(self) -> None:
        """--mode octet with ;mode=netascii in the URL is one usage line, nothing sent."""
        result = run_filexfer("get", "--mode", "octet", "tftp://127.0.0.1:9/f;mode=netascii")
        self.assertOneLine(result, 2, "--mode octet", ";mode=netascii")

    def test_plain_with_a_remote_directory(self) -> None:
        """--plain to HOST:PORT/dir/ is refused: the classic form has no directories."""
        local = write_file(os.path.join(self.base, "x.txt"), b"x")
        result = run_filexfer("send", "--plain", local, "127.0.0.1:9/sub/")
        self.assertOneLine(result, 2, "--plain", "no directories")

    def test_usage_mistake_is_one_line(self) -> None:
        """A bad option value is one line naming it (not argparse's usage block)."""
        result = run_filexfer("send", "--reply-timeout", "0", "f", "127.0.0.1:9")
        self.assertOneLine(result, 2, "--reply-timeout")

    def test_signal_while_starting(self) -> None:
        """A signal before the command runs ends with 128+n and one line, no traceback."""
        from filexfer._start import interrupted_while_starting

        captured = io.StringIO()
        self.patch(sys, "stderr", captured)
        exit_ = self.assertRaises(SystemExit, interrupted_while_starting, signal.SIGINT, None)
        self.assertEqual(exit_.code, 130)
        self.assertEqual(
            captured.getvalue(),
            "filexfer: interrupted by SIGINT while starting; nothing was sent\n",
        )
