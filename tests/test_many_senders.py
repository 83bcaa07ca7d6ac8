"""Many C{filexfer send} processes from one address against a real server.

A build farm behind one NAT address is ordinary: transfers in progress do
not count against the per-address limit, and a sender turned away with a
503 while too many handshakes are under way retries until its file lands.
Every process is bounded in time and stopped by PID.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from twisted.trial import unittest

from .helpers import (
    LOOPBACK,
    ROOT,
    LineLog,
    child_env,
    payload,
    recv_all,
    sha256_file,
    start_serve,
    visible_files,
    write_file,
)

SENDERS = 200
SEND_TIMEOUT = 300.0
"""Seconds all SENDERS processes together may take (2 cores: they queue for the CPU)."""


class Sender:
    """One C{filexfer send} child process, its stderr collected line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "filexfer", "send", "--no-progress", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        self.stderr = LineLog(self.process.stderr)

    def wait(self, timeout: float) -> int:
        """Wait (bounded) for the process; return its exit status."""
        status = self.process.wait(max(timeout, 0.0))
        self.stderr.join(5)
        return status

    def stop(self) -> None:
        """Kill the process by its PID if it still runs; always reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.stderr.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()


def hold_handshake_slot(port: int) -> socket.socket:
    """Connect and say nothing: the connection stays in its handshake."""
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    return sock


def probe(port: int) -> bytes:
    """Connect, send a handshake and read the server's whole answer."""
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(b"FX/1 PUT probe.bin\nSize: 0\n\n")
        return recv_all(sock)


@pytest.mark.integration
class BusyServerTests(unittest.TestCase):
    def test_send_retries_until_the_slot_frees(self) -> None:
        """A 503 with --retry-for 0 fails in one line; with retries the file lands."""
        root = os.path.abspath(self.mktemp())
        local = os.path.abspath(self.mktemp())
        server = start_serve(self, root, "--max-per-ip", "1")
        blocker = hold_handshake_slot(server.port)
        self.addCleanup(blocker.close)
        refusal = b"error 503 too many connections from your address; retry in 2 s\n"
        self.assertEqual(probe(server.port), refusal)  # the blocker holds the only slot

        source = write_file(os.path.join(local, "patient.bin"), payload(100_000, seed=7))
        dest = f"{LOOPBACK}:{server.port}"
        hasty = Sender("--retry-for", "0", source, dest)
        self.addCleanup(hasty.stop)
        self.assertEqual(hasty.wait(60), 1)
        self.assertEqual(len(hasty.stderr.lines), 1, hasty.stderr.text())
        self.assertIn(
            "503 too many connections from your address; retry in 2 s", hasty.stderr.text()
        )

        patient = Sender("--retry-for", "60", source, dest)
        self.addCleanup(patient.stop)
        patient.stderr.wait_for(r"server busy \(503\); trying again in [0-9.]+ s", timeout=60)
        blocker.close()
        self.assertEqual(patient.wait(60), 0, patient.stderr.text())
        self.assertEqual(visible_files(root), ["patient.bin"])
        self.assertEqual(sha256_file(os.path.join(root, "patient.bin")), sha256_file(source))


@pytest.mark.integration
@pytest.mark.slow
class ManySendersTests(unittest.TestCase):
    timeout = SEND_TIMEOUT + 60

    def test_two_hundred_sends_at_once(self) -> None:
        """200 C{filexfer send} processes from one address at once: every file lands intact."""
        root = os.path.abspath(self.mktemp())
        local = os.path.abspath(self.mktemp())
        server = start_serve(self, root)  # the default limits: --max-per-ip 64
        dest = f"{LOOPBACK}:{server.port}"
        sources = [
            write_file(os.path.join(local, f"job-{n:03d}.bin"), payload(256 * 1024, seed=n))
            for n in range(SENDERS)
        ]
        started = time.monotonic()
        senders = []
        for source in sources:
            sender = Sender("--retry-for", str(SEND_TIMEOUT), source, dest)
            self.addCleanup(sender.stop)
            senders.append(sender)
        deadline = started + SEND_TIMEOUT
        statuses = [sender.wait(deadline - time.monotonic()) for sender in senders]
        elapsed = time.monotonic() - started
        failed = [
            (source, sender.stderr.text())
            for source, sender, status in zip(sources, senders, statuses, strict=True)
            if status != 0
        ]
        self.assertEqual(failed, [])
        self.assertEqual(visible_files(root), sorted(os.path.basename(s) for s in sources))
        for source in sources:
            stored = os.path.join(root, os.path.basename(source))
            self.assertEqual(sha256_file(stored), sha256_file(source), source)
        retries = sum(sender.stderr.count(r"server busy") for sender in senders)
        print(f"\n{SENDERS} sends in {elapsed:.1f} s, {retries} retries after a 503")
