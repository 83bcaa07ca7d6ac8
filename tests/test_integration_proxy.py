"""A filexfer node behind a real HAProxy (C{send-proxy-v2}), both on loopback.

HAProxy runs the configuration printed in docs/deploy.md ("Several nodes
behind HAProxy"), read from the page, with its addresses replaced by
loopback ones (both C{server} lines lead to the one node started here;
two nodes on shared storage are the S3 tests' business).  Linux routes
all of 127.0.0.0/8 to loopback, so clients bind 127.0.0.2 and 127.0.0.3
while HAProxy reaches the node from 127.0.0.1: the node can tell a client
from its proxy.  HAProxy is installed by scripts/install-test-tools; a
missing one is a failure, not a skip.  Every process is stopped by PID.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import struct

import pytest
from twisted.trial import unittest

from filexfer.tcp import _wire
from filexfer.tcp._proxy import V2_SIGNATURE

from .helpers import (
    LOOPBACK,
    ROOT,
    ServerProcess,
    free_port,
    payload,
    read_line,
    recv_all,
    run_filexfer,
    sha256_bytes,
    sha256_file,
    start_serve,
    visible_files,
    wait_until,
    write_file,
)

PROXY_SOURCE = LOOPBACK
"""HAProxy's address as the node sees it (its default source towards 127.0.0.1)."""
CLIENT = "127.0.0.2"
OTHER_CLIENT = "127.0.0.3"
STRANGER = "127.0.0.4"

pytestmark = [pytest.mark.integration]


def haproxy_config_from_docs() -> str:
    """The C{haproxy} block of docs/deploy.md's "Several nodes behind HAProxy" section."""
    with open(os.path.join(ROOT, "docs", "deploy.md"), encoding="utf-8") as handle:
        page = handle.read()
    section = page.split("## Several nodes behind HAProxy", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```haproxy\n(.*?)```", section, re.DOTALL)
    assert match is not None, "docs/deploy.md: no ```haproxy block in the HAProxy section"
    return match.group(1)


def on_loopback(config: str, front: int, node: int) -> str:
    """C{config} with its C{bind} on loopback port C{front} and every C{server} at C{node}.

    The bind keeps the page's options (C{v4v6}): it listens on an IPv6
    socket at C{::ffff:127.0.0.1}, so HAProxy sees IPv4 clients as
    IPv4-mapped addresses, as on a dual-stack C{:::8000}, and the node must
    still log, allow and count them as IPv4.
    """
    mapped = f"::ffff:{LOOPBACK}:{front}"
    config, binds = re.subn(r"(?m)^(\s*bind )\S+", rf"\g<1>{mapped}", config)
    config, servers = re.subn(r"(?m)^(\s*server \S+ )\S+", rf"\g<1>{LOOPBACK}:{node}", config)
    assert binds == 1 and servers >= 1, (binds, servers)
    assert "send-proxy-v2" in config
    return config


def connect_from(source: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:C{port} from the loopback address C{source}."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect((LOOPBACK, port))
    return sock


def upload_from(source: str, port: int, name: str, data: bytes) -> tuple[bytes, int]:
    """An FX/1 upload from C{source}: (the server's replies, the client's port)."""
    with connect_from(source, port) as sock:
        client_port = sock.getsockname()[1]
        request = _wire.PutRequest(name, size=len(data), sha256=sha256_bytes(data))
        sock.sendall(_wire.encode_put(request))
        ok = read_line(sock)
        if not ok.startswith(b"ok "):
            return ok + recv_all(sock), client_port
        sock.sendall(data)
        return ok + recv_all(sock), client_port


def v2_header(source: str, port: int) -> bytes:
    """A PROXY v2 header (PROXY, TCP over IPv4) naming C{source}:C{port}."""
    body = socket.inet_aton(source) + socket.inet_aton(LOOPBACK) + struct.pack("!HH", port, 8000)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


class BehindHAProxyTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())

    def start(self, *extra: str) -> tuple[ServerProcess, int]:
        """A node on a haproxy: endpoint and HAProxy in front of it; (the node, HAProxy's port)."""
        haproxy = shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if haproxy is None:
            self.fail("haproxy is not installed; run scripts/install-test-tools")
        node = start_serve(
            self, self.root, "--listen", f"haproxy:tcp:0:interface={LOOPBACK}",
            "--trusted-proxy", f"{PROXY_SOURCE}/32", *extra,
        )  # fmt: skip
        # start_serve's own tcp:0 endpoint is plain; the proxied one says so
        match = node.log.wait_for(r"listening for TCP on \S+:(\d+) with a PROXY header first")
        node.port = int(match.group(1))
        front = free_port()
        config = os.path.abspath(self.mktemp())
        write_file(config, on_loopback(haproxy_config_from_docs(), front, node.port).encode())
        proxy = ServerProcess([haproxy, "-db", "-f", config], cwd=os.path.dirname(config))
        self.addCleanup(proxy.stop)
        wait_until(lambda: self.accepts(front, proxy), 15, "HAProxy listening")
        self.proxy = proxy
        return node, front

    def accepts(self, port: int, proxy: ServerProcess) -> bool:
        if proxy.process.poll() is not None:
            self.fail(f"haproxy exited {proxy.process.returncode}:\n{proxy.log.text()}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=5).close()
        except OSError:
            return False
        return True

    def test_upload_through_haproxy(self) -> None:
        """Uploads through HAProxy land intact; the log names the client, not the proxy."""
        node, front = self.start()
        data = payload(3 << 20, seed=41)
        replies, client_port = upload_from(CLIENT, front, "direct.bin", data)
        self.assertIn(
            b"done %d %s direct.bin\n" % (len(data), sha256_bytes(data).encode()), replies
        )
        self.assertEqual(sha256_file(os.path.join(self.root, "direct.bin")), sha256_bytes(data))
        node.log.wait_for(rf"fx/1 {re.escape(CLIENT)}:{client_port} 'direct.bin' .*: stored as")

        local = write_file(os.path.join(self.mktemp(), "sent.bin"), payload(1 << 20, seed=42))
        result = run_filexfer("send", "--no-progress", local, f"{LOOPBACK}:{front}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sha256_file(os.path.join(self.root, "sent.bin")), sha256_file(local))
        self.assertEqual(visible_files(self.root), ["direct.bin", "sent.bin"])
        self.assertEqual(node.log.count(r"refused"), 0, node.log.text())

    def test_allow_judges_the_address_haproxy_passes(self) -> None:
        """--allow CLIENT: CLIENT through HAProxy is stored; 127.0.0.1 through HAProxy gets 403."""
        node, front = self.start("--allow", f"{CLIENT}/32")
        replies, _ = upload_from(CLIENT, front, "allowed.txt", b"allowed")
        self.assertIn(b"done 7 ", replies)
        result = run_filexfer("send", "--no-progress", __file__, f"{LOOPBACK}:{front}")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("403", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(visible_files(self.root), ["allowed.txt"])
        node.log.wait_for(r"127\.0\.0\.1:\d+ .*refused: 403 your address is not allowed")

    def test_header_from_untrusted_peer_refused(self) -> None:
        """Straight to the node, a peer outside --trusted-proxy is refused, header or not."""
        node, _ = self.start("--allow", f"{CLIENT}/32")
        for first in [v2_header(CLIENT, 5555), b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 8000\r\n"]:
            with connect_from(STRANGER, node.port) as sock:
                sock.sendall(first + _wire.encode_put(_wire.PutRequest("spoofed.txt", size=1)))
                self.assertEqual(
                    read_line(sock), b"error 403 only trusted proxies may connect to this port\n"
                )
        replies, _ = upload_from(CLIENT, node.port, "no-header.txt", b"x")
        self.assertTrue(replies.startswith(b"error 403 "), replies)
        self.assertEqual(visible_files(self.root), [])
        node.log.wait_for(rf"proxy {re.escape(STRANGER)}:\d+ .*refused: 403 only trusted")

    def test_max_per_ip_counts_real_clients(self) -> None:
        """--max-per-ip 1 behind HAProxy: of two handshakes from CLIENT one gets 503, OTHER gets in.

        Which of the two reaches the node first is HAProxy's business: the
        other one is refused, which proves the first is counted against
        CLIENT while it stays open.
        """
        node, front = self.start("--max-per-ip", "1")
        with connect_from(CLIENT, front) as first, connect_from(CLIENT, front) as second:
            for sock in (first, second):
                sock.sendall(b"FX/1 PUT held.txt\n")  # a handshake left open
            readable, _, _ = select.select([first, second], [], [], 30)
            self.assertEqual(len(readable), 1, "exactly one of the two is answered")
            self.assertTrue(read_line(readable[0]).startswith(b"error 503 "))
            replies, _ = upload_from(OTHER_CLIENT, front, "other.txt", b"other")
            self.assertIn(b"done 5 ", replies)
        self.assertEqual(visible_files(self.root), ["other.txt"])
        node.log.wait_for(rf"{re.escape(CLIENT)}:\d+ .*refused: 503 too many connections from")
