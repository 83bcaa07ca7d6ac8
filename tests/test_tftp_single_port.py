"""--tftp-single-port with real clients (curl, tftp-hpa, atftp) through a strict NAT.

The relay below stands for a NAT or a container's port mapping: each client
gets its own outside socket, and only replies from the server's listening
port are let back in (endpoint-dependent filtering), as in Kubernetes or
Docker with one published UDP port.  Every reply's source port is recorded.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import threading
import time

import pytest
from twisted.trial import unittest

from tests.helpers import LOOPBACK, payload, sha256_file, start_twistd_tftp, write_file

pytestmark = pytest.mark.integration
DEADLINE = 60.0


class StrictNAT:
    """A UDP relay on 127.0.0.1 letting back only replies from the server's listening port."""

    def __init__(self, server_port: int) -> None:
        self.server = (LOOPBACK, server_port)
        self.outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.outside.bind((LOOPBACK, 0))
        self.port = self.outside.getsockname()[1]
        self.reply_ports: list[int] = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.outside, selectors.EVENT_READ, None)
        self.inside: dict[tuple[str, int], socket.socket] = {}
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + DEADLINE * 2
        while not self.stopping and time.monotonic() < deadline:
            for key, _ in self.selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                datagram, source = sock.recvfrom(70000)
                if key.data is None:  # from a client: out through its own socket
                    inner = self.inside.get(source)
                    if inner is None:
                        inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        inner.bind((LOOPBACK, 0))
                        self.inside[source] = inner
                        self.selector.register(inner, selectors.EVENT_READ, source)
                    inner.sendto(datagram, self.server)
                else:  # a reply: recorded; let in only from the mapped port
                    self.reply_ports.append(source[1])
                    if source == self.server:
                        self.outside.sendto(datagram, key.data)

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for sock in [self.outside, *self.inside.values()]:
            sock.close()
        self.selector.close()


class SinglePortInteropTests(unittest.TestCase):
    """Many transfers at once by three real clients through the NAT."""

    def setUp(self) -> None:
        for tool in ("curl", "tftp", "atftp"):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} is missing: run scripts/install-test-tools")
        self.root = os.path.abspath(self.mktemp())
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        os.makedirs(self.work)

    def test_every_reply_from_the_listening_port(self) -> None:
        """12 downloads and 2 uploads at once succeed; every reply came from the TFTP port."""
        server, port = start_twistd_tftp(self, self.root, self.work, "--tftp-single-port")
        nat = StrictNAT(port)
        self.addCleanup(nat.stop)
        sizes = {}
        for index in range(12):
            sizes[f"f{index}.bin"] = 20_000 + index * 7_001
            write_file(
                os.path.join(self.root, f"f{index}.bin"), payload(sizes[f"f{index}.bin"], index)
            )
        upload = write_file(os.path.join(self.work, "up.bin"), payload(50_000, 99))
        commands = []
        for index in range(12):
            name = f"f{index}.bin"
            target = os.path.join(self.work, f"got-{name}")
            if index % 3 == 0:
                argv = ["curl", "-sS", "-o", target, f"tftp://{LOOPBACK}:{nat.port}/{name}"]
            elif index % 3 == 1:
                argv = ["tftp", "-m", "binary", LOOPBACK, str(nat.port), "-c", "get", name, target]
            else:
                argv = ["atftp", "--option", "blksize 1024", "-g", "-l", target, "-r", name,
                        LOOPBACK, str(nat.port)]  # fmt: skip
            commands.append((argv, name, target))
        commands.append(
            (["curl", "-sS", "-T", upload, f"tftp://{LOOPBACK}:{nat.port}/u1.bin"], "", "")
        )
        commands.append(
            (
                ["tftp", "-m", "binary", LOOPBACK, str(nat.port), "-c", "put", upload, "u2.bin"],
                "",
                "",
            )
        )
        processes = [
            subprocess.Popen(argv, cwd=self.work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
            for argv, _, _ in commands
        ]  # fmt: skip
        try:
            for process, (argv, name, target) in zip(processes, commands, strict=True):
                output, _ = process.communicate(timeout=DEADLINE)
                self.assertEqual(process.returncode, 0, f"{argv}: {output!r}")
                if name:
                    self.assertEqual(
                        sha256_file(target), sha256_file(os.path.join(self.root, name))
                    )
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(5)
        for name in ("u1.bin", "u2.bin"):
            self.assertEqual(sha256_file(os.path.join(self.root, name)), sha256_file(upload))
        self.assertGreater(len(nat.reply_ports), 14)
        self.assertEqual(set(nat.reply_ports), {port})
        server.log.wait_for(r"tftp-rrq .*'f11.bin' .*: ok \[blksize 1024, windowsize 1\]")
