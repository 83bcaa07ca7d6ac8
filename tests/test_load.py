"""2,000 connections at once plus slow-drip handshakes against a real twistd.

Legitimate uploads still complete, the server stays inside its limits, and
once the crowd goes nothing is left behind: file descriptors, temp files,
memory.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer import send_file
from filexfer.service import raise_open_files_limit
from tests.helpers import (
    LOOPBACK,
    ServerProcess,
    payload,
    sha256_file,
    state_files,
    twistd_command,
    write_file,
)

CROWD = 2000
ADDRESSES = 10  # the crowd comes from 127.0.0.10 .. 127.0.0.19
PER_IP = 64  # the server's default --max-per-ip
DRIP = b"FX/1 PUT slow.bin\n"  # one byte every DRIP_INTERVAL: slower than the timeout
DRIP_INTERVAL = 0.25
HANDSHAKE_TIMEOUT = 3


def open_fds(pid: int) -> int:
    """How many file descriptors process C{pid} holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """Resident memory of process C{pid}."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Dripper(Protocol):
    """Sends its handshake a byte at a time, far too slowly; records the reply."""

    def __init__(self, crowd: Crowd) -> None:
        self.crowd = crowd
        self.reply = b""
        self.sent = 0

    def connectionMade(self) -> None:
        self.crowd.connected.append(self)
        self.drip()

    def drip(self) -> None:
        if self.sent < len(DRIP) and self.transport is not None:
            self.transport.write(DRIP[self.sent : self.sent + 1])
            self.sent += 1

    def dataReceived(self, data: bytes) -> None:
        self.reply += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.crowd.gone(self.reply)


class Crowd(ClientFactory):
    """Counts what happens to every connection of the crowd."""

    def __init__(self, size: int) -> None:
        self.connected: list[Dripper] = []
        self.replies: list[bytes] = []
        self.size = size
        self.all_gone: defer.Deferred[None] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Dripper:
        return Dripper(self)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.gone(b"connect failed: " + reason.getErrorMessage().encode())

    def gone(self, reply: bytes) -> None:
        self.replies.append(reply)
        if len(self.replies) == self.size and not self.all_gone.called:
            self.all_gone.callback(None)

    def drip_all(self) -> None:
        for dripper in self.connected:
            dripper.drip()


class CrowdTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_crowd_and_slow_drip(self) -> Any:
        """2,000 connections and slow handshakes: real uploads complete, limits hold, no leaks."""
        raise_open_files_limit()
        base = os.path.abspath(self.mktemp())
        root = os.path.join(base, "root")
        os.makedirs(base)
        server = ServerProcess(
            twistd_command(
                "filexfer",
                "--listen",
                f"tcp:0:interface={LOOPBACK}:backlog=4096",
                "--no-tftp",
                "--root",
                root,
                "--handshake-timeout",
                str(HANDSHAKE_TIMEOUT),
            ),  # fmt: skip
            cwd=base,
        )
        self.addCleanup(server.stop)
        port = server.wait_listening()
        pid = server.process.pid
        source_file = write_file(os.path.join(base, "real.bin"), payload(4 << 20, seed=4))
        endpoint = endpoints.TCP4ClientEndpoint(reactor, LOOPBACK, port)
        yield send_file(reactor, endpoint, source_file, name="warm-up.bin")  # lazy one-offs
        idle_fds, idle_rss = open_fds(pid), rss_bytes(pid)

        crowd = Crowd(CROWD)
        dripping = task.LoopingCall(crowd.drip_all)
        dripping.start(DRIP_INTERVAL, now=False)
        self.addCleanup(lambda: dripping.running and dripping.stop())
        for i in range(CROWD):
            source = f"127.0.0.{10 + i % ADDRESSES}"
            reactor.connectTCP(LOOPBACK, port, crowd, timeout=30, bindAddress=(source, 0))

        # While the crowd holds its connections, a real upload goes through.
        started = time.monotonic()
        receipt = yield send_file(reactor, endpoint, source_file)
        self.assertLess(time.monotonic() - started, HANDSHAKE_TIMEOUT, "the upload waited")
        self.assertEqual(receipt.sha256, sha256_file(source_file))
        self.assertLessEqual(
            open_fds(pid) - idle_fds, ADDRESSES * PER_IP + 16, "more connections than the limits"
        )

        yield crowd.all_gone
        dripping.stop()
        outcomes: dict[str, int] = {}
        for reply in crowd.replies:
            key = reply.split(b" ", 2)[1].decode() if reply.startswith(b"error ") else repr(reply)
            outcomes[key] = outcomes.get(key, 0) + 1
        self.assertEqual(set(outcomes), {"408", "503"}, outcomes)
        self.assertGreaterEqual(outcomes["408"], ADDRESSES * PER_IP, outcomes)
        self.assertEqual(sum(outcomes.values()), CROWD)

        deadline = time.monotonic() + 10
        while open_fds(pid) > idle_fds and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertLessEqual(open_fds(pid), idle_fds, "file descriptors leaked")
        self.assertEqual(state_files(root, "tmp") + state_files(root, "partial"), [])
        self.assertLess(rss_bytes(pid) - idle_rss, 64 << 20, "memory grew by over 64 MiB")
        self.assertEqual(server.log.count(r"listening for TCP on"), 1)
