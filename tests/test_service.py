"""Options of C{twistd filexfer} / C{filexfer serve}, and the service tree they build."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.application import internet
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest

from filexfer import tap
from filexfer._ports import ListeningPort
from filexfer.service import DEFAULT_PORT, DEFAULT_ROOT, Options, make_service
from filexfer.tcp.receiver import ReceiverFactory

from .helpers import LOOPBACK, recv_exactly, write_file


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(unittest.TestCase):
    def test_defaults(self) -> None:
        """Defaults: TCP port 8000, root 'received', rename on conflict, TFTP on the same port."""
        options = parse()
        self.assertEqual((DEFAULT_PORT, DEFAULT_ROOT), (8000, "received"))
        self.assertEqual(options["port"], 8000)
        self.assertEqual(options["root"], "received")
        self.assertEqual(options["on-conflict"], "rename")
        self.assertEqual(options.endpoints(), [])  # --port is bound dual-stack, not an endpoint
        self.assertEqual(options.tftp_port(), 8000)
        self.assertIsNone(options["token"])
        self.assertEqual(options["allow"], [])

    def test_metrics_over_tcp_only(self) -> None:
        """Fresh-eyes finding on issue 12: --metrics unix:... started, then every scrape
        was an HTTP 500 (Twisted's WSGI layer wants a host); it is a usage mistake now."""
        error = self.assertRaises(usage.UsageError, parse, "--metrics", "unix:/tmp/m.sock")
        self.assertIn("tcp:PORT", str(error))
        for good in ("tcp:9100:interface=127.0.0.1", "tcp6:9100"):
            self.assertEqual(parse("--metrics", good)["metrics"], good)

    def test_listen_repeatable(self) -> None:
        """--listen may be given several times; alone it replaces the default port."""
        options = parse("--listen", "tcp6:9000", "--listen", "unix:/tmp/fx.sock")
        self.assertIsNone(options["port"])
        self.assertEqual(
            options.endpoints(), ["tcp6:9000:backlog=1024", "unix:/tmp/fx.sock:backlog=1024"]
        )
        self.assertIsNone(options.tftp_port())

    def test_port_and_listen(self) -> None:
        """--port and --listen together listen on both; TFTP follows --port."""
        options = parse("--port", "9001", "--listen", "tcp6:9002")
        self.assertEqual(options["port"], 9001)
        self.assertEqual(options.endpoints(), ["tcp6:9002:backlog=1024"])
        self.assertEqual(options.tftp_port(), 9001)
        self.assertEqual(parse("-p", "9003", "--tftp-port", "69").tftp_port(), 69)
        self.assertIsNone(parse("--no-tftp").tftp_port())

    def test_on_conflict(self) -> None:
        """--on-conflict takes rename, overwrite or refuse; anything else is a usage error."""
        for policy in ("rename", "overwrite", "refuse"):
            self.assertEqual(parse("--on-conflict", policy)["on-conflict"], policy)
        self.assertRaises(usage.UsageError, parse, "--on-conflict", "clobber")

    def test_digests(self) -> None:
        """Fresh-eyes finding on issue 16: --digests sha256 declines BLAKE3 (so every
        --on-stored hook gets FILEXFER_SHA256); SHA-256 is always offered; unknown
        names are usage errors."""
        self.assertEqual(parse()["digests"], ("sha256", "blake3"))
        self.assertEqual(parse("--digests", "sha256")["digests"], ("sha256",))
        self.assertEqual(parse("--digests", "BLAKE3")["digests"], ("sha256", "blake3"))
        self.assertEqual(parse("--digests", "blake3, sha256")["digests"], ("sha256", "blake3"))
        error = self.assertRaises(usage.UsageError, parse, "--digests", "sha256,md5")
        self.assertIn("unknown digest 'md5'", str(error))
        for empty in ("", "sha256,", "sha256,,blake3", " "):
            error = self.assertRaises(usage.UsageError, parse, "--digests", empty)
            self.assertIn("--digests: an empty name", str(error))

    def test_sizes(self) -> None:
        """Sizes accept plain bytes and K/M/G/T suffixes (with optional B or iB)."""
        self.assertEqual(parse("--max-size", "10G")["max-size"], 10 << 30)
        self.assertEqual(parse("--max-size", "500M")["max-size"], 500 << 20)
        self.assertEqual(parse("--max-size", "1.5K")["max-size"], 1536)
        self.assertEqual(parse("--max-size", "2GiB")["max-size"], 2 << 30)
        self.assertEqual(parse("--min-free", "1tb")["min-free"], 1 << 40)
        self.assertEqual(parse("--min-free", "4096")["min-free"], 4096)
        self.assertIsNone(parse()["max-size"])
        for bad in ("abc", "-1G", "", "G", "10X"):
            self.assertRaises(usage.UsageError, parse, "--max-size", bad)

    def test_positive_numbers(self) -> None:
        """Ports, limits and timeouts must be positive numbers."""
        for option in ("--port", "--max-connections", "--idle-timeout", "--handshake-timeout"):
            self.assertRaises(usage.UsageError, parse, option, "0")
            self.assertRaises(usage.UsageError, parse, option, "x")
        self.assertEqual(parse("--idle-timeout", "2.5")["idle-timeout"], 2.5)

    def test_numbers_bounded(self) -> None:
        """inf, nan, exponents, 5,000 digits and ports past 65535 are usage errors, not crashes."""
        for option, value in [
            ("--max-size", "inf"),
            ("--max-size", "1e400"),
            ("--max-size", "9" * 5000),
            ("--min-free", "nan"),
            ("--idle-timeout", "nan"),
            ("--idle-timeout", "inf"),
            ("--handshake-timeout", "9" * 5000),
            ("--partial-max-age", "-inf"),
            ("--port", "9" * 5000),
            ("--port", "65536"),
            ("--tftp-port", "99999"),
            ("--tftp-max-windowsize", "65536"),
            ("--max-connections", "\u0661\u0660"),
        ]:
            error = self.assertRaises(usage.UsageError, parse, option, value)
            self.assertLess(len(str(error)), 200, (option, value))
        self.assertEqual(parse("--port", "65535")["port"], 65535)
        self.assertEqual(parse("--max-size", "1.000000001G")["max-size"], (1 << 30) + 1)

    def test_token_file(self) -> None:
        """--token-file reads the secret (stripped of whitespace)."""
        path = write_file(os.path.abspath(self.mktemp()), b"  s3cret\n")
        self.assertEqual(parse("--token-file", path)["token"], "s3cret")
        self.assertEqual(parse("--token", "abc")["token"], "abc")

    def test_token_file_errors(self) -> None:
        """A missing or empty token file, or an empty token, is a usage error."""
        self.assertRaises(usage.UsageError, parse, "--token-file", "/nonexistent/token")
        empty = write_file(os.path.abspath(self.mktemp()), b"\n")
        error = self.assertRaises(usage.UsageError, parse, "--token-file", empty)
        self.assertTrue(str(error).startswith("--token-file: "), str(error))  # the option given
        error = self.assertRaises(usage.UsageError, parse, "--token", "")
        self.assertTrue(str(error).startswith("--token: "), str(error))

    def test_allow(self) -> None:
        """--allow is repeatable; a bad network is a usage error, not a crash."""
        self.assertEqual(
            parse("--allow", "10.0.0.0/8", "--allow", "::1")["allow"], ["10.0.0.0/8", "::1"]
        )
        self.assertRaises(usage.UsageError, parse, "--allow", "not-a-network")

    def test_bad_listen_is_a_usage_error(self) -> None:
        """An unparseable --listen, or an ssl: key that does not exist, is a usage error."""
        for description in ("bogus:1", "tcp:abc", "ssl:8443:privateKey=/no/such/key.pem"):
            with self.assertRaises(usage.UsageError) as caught:
                parse("--listen", description)
            self.assertIn(description, str(caught.exception))

    def test_tftp_blksize(self) -> None:
        """--tftp-max-blksize must be within 8..65464."""
        self.assertRaises(usage.UsageError, parse, "--tftp-max-blksize", "7")
        self.assertRaises(usage.UsageError, parse, "--tftp-max-blksize", "65465")
        self.assertEqual(parse("--tftp-max-blksize", "512")["tftp-max-blksize"], 512)

    def test_help_lists_options(self) -> None:
        """The usage text names the main options."""
        text = str(Options())
        for option in (
            "--port",
            "--root",
            "--listen",
            "--on-conflict",
            "--token-file",
            "--no-tftp",
        ):
            self.assertIn(option, text)


class MakeServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())

    def test_children(self) -> None:
        """--no-tftp builds the --port listener, one per --listen endpoint, the cleaner; no UDP."""
        options = parse(
            "--port", "18123", "--listen", f"tcp:0:interface={LOOPBACK}", "--no-tftp",
            "--root", self.root,
        )  # fmt: skip
        top = make_service(options, reactor)
        children = list(top)
        (port,) = [c for c in children if isinstance(c, ListeningPort)]
        self.assertEqual((port.port, port.interface, port.backlog), (18123, "", 1024))
        self.assertEqual(port.kind, socket.SOCK_STREAM)
        self.assertIsInstance(port.handler, ReceiverFactory)
        listeners = [c for c in children if isinstance(c, internet.StreamServerEndpointService)]
        self.assertEqual(len(listeners), 1)
        (listener,) = listeners
        self.assertIsInstance(listener.endpoint, TCP4ServerEndpoint)
        self.assertIsInstance(listener.factory, ReceiverFactory)
        self.assertEqual((listener.endpoint._port, listener.endpoint._interface), (0, LOOPBACK))
        self.assertEqual(listener.endpoint._backlog, 1024)
        self.assertEqual([c for c in children if getattr(c, "kind", None) == socket.SOCK_DGRAM], [])
        self.assertTrue(any(isinstance(c, internet.TimerService) for c in children))
        self.assertTrue(os.path.isdir(os.path.join(self.root, ".filexfer")))

    def test_factory_settings(self) -> None:
        """The receiver factory gets the token, timeouts, limits and policy from the options."""
        options = parse(
            "--listen", "tcp:0", "--no-tftp", "--root", self.root, "--token", "t",
            "--idle-timeout", "7", "--handshake-timeout", "3", "--max-connections", "5",
            "--max-per-ip", "2", "--on-conflict", "refuse", "--max-size", "1K",
            "--allow", "10.0.0.0/8", "--digests", "sha256",
        )  # fmt: skip
        top = make_service(options, reactor)
        (listener,) = [c for c in top if isinstance(c, internet.StreamServerEndpointService)]
        factory = listener.factory
        self.assertEqual(
            (factory.token, factory.idle_timeout, factory.handshake_timeout), ("t", 7, 3)
        )
        self.assertEqual((factory.limits.max_connections, factory.limits.max_per_ip), (5, 2))
        self.assertEqual(factory.storage.on_conflict, "refuse")
        self.assertEqual(factory.storage.max_size, 1024)
        self.assertEqual(factory.storage.digests, ("sha256",))
        self.assertFalse(factory.access.allows("192.0.2.1"))

    def test_tftp_child(self) -> None:
        """Without --no-tftp a UDP service is built on the TFTP port."""
        options = parse("--listen", "tcp:0", "--tftp-port", "18124", "--root", self.root)
        top = make_service(options, reactor)
        udp = [c for c in top if isinstance(c, ListeningPort) and c.kind == socket.SOCK_DGRAM]
        self.assertEqual(len(udp), 1)
        self.assertEqual(udp[0].port, 18124)

    @inlineCallbacks
    def test_runs_and_stores(self) -> Deferred[None]:  # type: ignore[misc]
        """Started for real on loopback, the service receives a classic upload; it stops cleanly."""
        options = parse("--listen", f"tcp:0:interface={LOOPBACK}", "--no-tftp", "--root", self.root)
        top = make_service(options, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        (listener,) = [c for c in top if isinstance(c, internet.StreamServerEndpointService)]
        listening: Deferred[object] = Deferred()

        def seen(port: object) -> object:
            listening.callback(port)
            return port  # the service keeps its port, to stop listening later

        listener._waitingForPort.addCallback(seen)
        port = yield listening
        number = port.getHost().port

        def classic_client() -> bytes:
            with socket.create_connection((LOOPBACK, number), timeout=10) as sock:
                sock.sendall(b"svc.txt")
                reply = recv_exactly(sock, 2)
                sock.sendall(b"via the service")
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)  # wait for the server's close: the file is durable by then
                return reply

        reply = yield deferToThread(classic_client)
        self.assertEqual(reply, b"ok")
        with open(os.path.join(self.root, "svc.txt"), "rb") as handle:
            self.assertEqual(handle.read(), b"via the service")
        yield top.stopService()


class PluginTests(unittest.TestCase):
    def test_plugin_found(self) -> None:
        """twistd finds the C{filexfer} plugin and it uses filexfer.tap."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("filexfer", makers)
        maker = makers["filexfer"]
        self.assertTrue(issubclass(maker.options, Options))
        self.assertEqual(maker.makeService, tap.makeService)


class TLSLibrariesTests(unittest.TestCase):
    def test_plain_service_keeps_tls_out(self) -> None:
        """Options without a TLS endpoint keep pyOpenSSL out of the process (saves ~13 MiB).

        A haproxy:tcp: endpoint is plain TCP too (Twisted's haproxy package,
        which loads the TLS libraries, is imported only to serve one).
        """
        for argv in [
            ["--port", "8000", "--listen", "tcp6:8001"],
            ["--listen", "haproxy:tcp:8001", "--trusted-proxy", "::1"],
        ]:
            code = (
                "import sys\n"
                "from filexfer.service import Options\n"
                f"Options().parseOptions({argv!r})\n"
                "from twisted.internet import reactor\n"
                "print(sys.modules.get('OpenSSL'))\n"
            )
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
            )
            self.assertEqual(result.stdout.strip(), "None", result.stderr)
