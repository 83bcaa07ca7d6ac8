"""The real thing: C{twistd filexfer} and C{filexfer serve} driven by C{filexfer send}.

Every process is bounded in time and stopped by PID at cleanup; servers
listen on an ephemeral loopback port that they report in their log.
"""

from __future__ import annotations

import os
import re
import signal
import socket

from twisted.trial import unittest

from .helpers import (
    LOOPBACK,
    payload,
    recv_all,
    recv_exactly,
    run_filexfer,
    sha256_bytes,
    sha256_file,
    start_serve,
    start_twistd,
    visible_files,
    write_file,
)

TRANSFER_LINE = (
    r"(?P<form>fx/1|classic) 127\.0\.0\.1:\d+ '(?P<path>{path})' (?P<bytes>\d+) bytes "
    r"in (?P<seconds>[0-9.]+)s \((?P<rate>[0-9.]+) MB/s\): (?P<outcome>.*)$"
)


def transfer_line(path: str) -> str:
    return TRANSFER_LINE.format(path=re.escape(path))


class TwistdTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.local = os.path.abspath(self.mktemp())
        os.makedirs(self.local)

    def send(self, *args: str) -> tuple[int, str, str]:
        result = run_filexfer("send", "--no-progress", *args)
        self.assertNotIn("Traceback", result.stderr)
        return result.returncode, result.stdout, result.stderr

    def test_transfers_and_log(self) -> None:
        """twistd stores a file, a tree, a re-send and a classic send; one log line each."""
        server = start_twistd(self, self.root)
        dest = f"{LOOPBACK}:{server.port}"

        data = payload(1 << 20, seed=21)
        single = write_file(os.path.join(self.local, "one.bin"), data)
        status, out, err = self.send(single, dest)
        self.assertEqual(status, 0, err)
        self.assertIn("one.bin -> one.bin: 1048576 bytes stored and verified", out)
        self.assertEqual(sha256_file(os.path.join(self.root, "one.bin")), sha256_bytes(data))
        line = server.log.wait_for(transfer_line("one.bin"))
        self.assertEqual(line["form"], "fx/1")
        self.assertEqual(line["bytes"], "1048576")
        self.assertEqual(line["outcome"], "stored as 'one.bin'")

        tree = os.path.join(self.local, "tree")
        contents = {"a.txt": b"alpha", "sub/b.txt": b"beta", "sub/deep/c.bin": payload(70_000)}
        for relative, content in contents.items():
            write_file(os.path.join(tree, relative), content)
        status, out, err = self.send(tree, f"{dest}/backups/host1")
        self.assertEqual(status, 0, err)
        for relative, content in contents.items():
            stored = os.path.join(self.root, "backups", "host1", "tree", relative)
            self.assertEqual(sha256_file(stored), sha256_bytes(content), relative)
            server.log.wait_for(transfer_line(f"backups/host1/tree/{relative}"))

        status, out, err = self.send(single, dest)
        self.assertEqual(status, 0, err)
        server.log.wait_for(r"'one\.bin' 0 bytes in [0-9.]+s .*: already stored as 'one\.bin'$")
        self.assertEqual(visible_files(self.root).count("one.bin"), 1)
        self.assertNotIn("one (1).bin", visible_files(self.root))

        classic = write_file(os.path.join(self.local, "classic.txt"), b"the classic way")
        status, out, err = self.send("--plain", classic, dest)
        self.assertEqual(status, 0, err)
        line = server.log.wait_for(transfer_line("classic.txt"))
        self.assertEqual(line["form"], "classic")
        with open(os.path.join(self.root, "classic.txt"), "rb") as handle:
            self.assertEqual(handle.read(), b"the classic way")

        self.assertEqual(server.log.count(transfer_line("one.bin")), 2)
        self.assertEqual(server.log.count(transfer_line("classic.txt")), 1)
        self.assertEqual(server.log.count(transfer_line("backups/host1/tree/a.txt")), 1)
        self.assertNotIn("Traceback", server.log.text())

    def test_bad_clients(self) -> None:
        """Garbage and C{../x} get an error line; the server keeps serving the next client."""
        server = start_twistd(self, self.root)
        address = (LOOPBACK, server.port)
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"FX/1 PUT a\nSize: lots\n\n")
            self.assertTrue(recv_all(sock).startswith(b"error 400 "))
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"../x")
            self.assertTrue(recv_all(sock).startswith(b"error 400 "))
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)))
            self.assertTrue(recv_all(sock).startswith(b"error 400 "))
        server.log.wait_for(r"refused: 400 ")
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"next.txt")
            self.assertEqual(recv_exactly(sock, 2), b"ok")
            sock.sendall(b"still serving")
        server.log.wait_for(transfer_line("next.txt"))
        self.assertEqual(visible_files(self.root), ["next.txt"])
        self.assertNotIn("Traceback", server.log.text())
        server.signal(signal.SIGTERM)  # the reactor runs (it served): a clean shutdown
        # twistd shuts down, then re-raises the signal so that its status tells why
        self.assertIn(server.wait(15), (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down.", server.log.text())

    def test_token(self) -> None:
        """With --token-file only senders with the token get in (401 otherwise, exit 1)."""
        token_file = write_file(os.path.join(self.local, "token"), b"sesame\n")
        server = start_twistd(self, self.root, "--token-file", token_file)
        dest = f"{LOOPBACK}:{server.port}"
        local = write_file(os.path.join(self.local, "secret.txt"), b"for members")
        status, out, err = self.send(local, dest)
        self.assertEqual(status, 1)
        self.assertIn("401", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        status, out, err = self.send("--token", "sesame", local, dest)
        self.assertEqual(status, 0, err)
        self.assertEqual(visible_files(self.root), ["secret.txt"])


class ServeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.local = os.path.abspath(self.mktemp())
        os.makedirs(self.local)

    def serve_one_file(self, stop: signal.Signals) -> None:
        server = start_serve(self, self.root)
        data = payload(300_000, seed=int(stop))
        local = write_file(os.path.join(self.local, f"{stop.name}.bin"), data)
        result = run_filexfer("send", "--no-progress", local, f"{LOOPBACK}:{server.port}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            sha256_file(os.path.join(self.root, f"{stop.name}.bin")), sha256_bytes(data)
        )
        server.log.wait_for(transfer_line(f"{stop.name}.bin"))
        server.signal(stop)
        self.assertEqual(server.wait(15), 0)
        self.assertNotIn("Traceback", server.log.text())

    def test_serve_sigterm(self) -> None:
        """C{filexfer serve} runs in the foreground, stores a file and exits on SIGTERM."""
        self.serve_one_file(signal.SIGTERM)

    def test_serve_sigint(self) -> None:
        """C{filexfer serve} exits on SIGINT (Ctrl-C) without a traceback."""
        self.serve_one_file(signal.SIGINT)

    def test_port_in_use(self) -> None:
        """A port already taken is one line and exit 1, not a traceback."""
        with socket.socket() as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            result = run_filexfer(
                "serve", "--listen", f"tcp:{port}:interface={LOOPBACK}", "--no-tftp",
                "--root", self.root, timeout=20,
            )  # fmt: skip
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
