"""The PROXY protocol in front of the receiver (filexfer.tcp._proxy): deterministic.

Headers are fed a byte at a time into a StringTransport, with a Clock; the
proxy is 192.0.2.1 (or 2001:db8::1), clients are in 10.0.0.0/8.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.application import internet
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer._guard import AccessPolicy, ConnectionLimits
from filexfer._tls import needs_tls
from filexfer.service import behind_proxy, make_service
from filexfer.tcp._proxy import (
    V2_SIGNATURE,
    InvalidProxyHeader,
    MissingProxyHeader,
    ProxiedConnection,
    ProxyHeader,
    TrustedProxyFactory,
    parse_proxy_header,
)
from filexfer.tcp.receiver import LINGER, ReceiverFactory

from .helpers import LOOPBACK, payload, visible_files
from .test_receiver import HalfClosingTransport, ReceiverTestCase, put
from .test_service import parse

PROXY = "192.0.2.1"
PROXY6 = "2001:db8::1"
TRUSTED = [f"{PROXY}/32", f"{PROXY6}/128"]


def v1(source: str, port: int = 5555, family: str = "TCP4") -> bytes:
    """A PROXY v1 header from C{source}:C{port} to the proxy's frontend."""
    destination = "198.51.100.7" if family == "TCP4" else "2001:db8::7"
    return f"PROXY {family} {source} {destination} {port} 8000\r\n".encode()


def v2(source: str | None, port: int = 5555, command: int = 1, tlv: bytes = b"") -> bytes:
    """A PROXY v2 header (PROXY or LOCAL command; STREAM over INET or INET6)."""
    if source is None:
        return V2_SIGNATURE + bytes([0x20 | command, 0x00]) + struct.pack("!H", len(tlv)) + tlv
    if ":" in source:
        family, packed = 0x21, socket.inet_pton(socket.AF_INET6, source)
        destination = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    else:
        family, packed = 0x11, socket.inet_pton(socket.AF_INET, source)
        destination = socket.inet_pton(socket.AF_INET, "198.51.100.7")
    body = packed + destination + struct.pack("!HH", port, 8000) + tlv
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def parse_bytewise(data: bytes) -> tuple[ProxyHeader, bytes]:
    """Feed C{data} growing a byte at a time; every strict prefix of the header needs more."""
    for end in range(len(data) + 1):
        header, rest = parse_proxy_header(data[:end])
        if header is not None:
            return header, rest + data[end:]
    raise AssertionError("the header never completed")


class ParseTests(unittest.TestCase):
    def test_v1_tcp4(self) -> None:
        """A v1 TCP4 header names the client; the bytes after it are left over."""
        header, rest = parse_bytewise(v1("10.1.2.3") + b"FX/1 PUT a\n")
        self.assertEqual(header, ProxyHeader(IPv4Address("TCP", "10.1.2.3", 5555), 1))
        self.assertEqual(rest, b"FX/1 PUT a\n")

    def test_v1_tcp6_and_mapped(self) -> None:
        """A v1 TCP6 source stays IPv6; an IPv4-mapped one becomes IPv4."""
        header, _ = parse_bytewise(v1("2001:db8::42", family="TCP6"))
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::42", 5555))
        header, _ = parse_bytewise(v1("::ffff:10.9.8.7", family="TCP6"))
        self.assertEqual(header.source, IPv4Address("TCP", "10.9.8.7", 5555))

    def test_v2_tcp4_tcp6_mapped(self) -> None:
        """v2 INET and INET6 sources, the mapped one as IPv4, with TLVs skipped."""
        for source, expected in [
            ("10.1.2.3", IPv4Address("TCP", "10.1.2.3", 5555)),
            ("2001:db8:0:0:0:0:0:42", IPv6Address("TCP", "2001:db8::42", 5555)),
            ("::ffff:10.9.8.7", IPv4Address("TCP", "10.9.8.7", 5555)),
        ]:
            header, rest = parse_bytewise(v2(source, tlv=b"\x04\x00\x01x") + b"data")
            self.assertEqual(header, ProxyHeader(expected, 2))
            self.assertEqual(rest, b"data")

    def test_local_and_unknown(self) -> None:
        """v2 LOCAL, v1 UNKNOWN (with or without addresses) and v2 UNSPEC: no client address."""
        for data in [
            v2(None, command=0),
            v2(None, command=1),  # PROXY over UNSPEC
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        ]:
            header, rest = parse_bytewise(data + b"x")
            self.assertIsNone(header.source, data)
            self.assertEqual(rest, b"x")

    def test_missing(self) -> None:
        """Bytes that start neither signature are no header, from the first wrong byte."""
        for data in [b"FX/1 PUT a\n", b"name.bin", b"\r\n\r\n\x01", b"PROXX", b"proxy "]:
            self.assertRaises(MissingProxyHeader, parse_proxy_header, data)

    def test_invalid(self) -> None:
        """Malformed headers are refused, whatever Twisted's parser would let through."""
        bad = [
            b"PROXY TCP4 10.1.2.3 198.51.100.7 5555" + b" " * 80,  # no CRLF within 107 bytes
            b"PROXY TCP4 10.1.2.3 198.51.100.7 port 8000\r\n",
            b"PROXY TCP4 10.1.2.3 198.51.100.7 65536 8000\r\n",
            b"PROXY TCP4 10.1.2.3 198.51.100.7 -1 8000\r\n",
            b"PROXY TCP4 evil.example 198.51.100.7 5555 8000\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.7 5555 8000\r\n",
            b"PROXY TCP6 10.1.2.3 2001:db8::7 5555 8000\r\n",
            b"PROXY UDP4 10.1.2.3 198.51.100.7 5555 8000\r\n",
            b"PROXY TCP4 10.1.2.3\r\n",
            v2(None, command=2),  # neither LOCAL nor PROXY
            V2_SIGNATURE + b"\x11\x11\x00\x00",  # version 1 in a v2 header
            V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # addresses cut short
            V2_SIGNATURE + b"\x21\x51\x00\x00",  # unknown family
        ]
        for data in bad:
            with self.assertRaises(InvalidProxyHeader, msg=repr(data)):
                parse_proxy_header(data)

    @given(st.binary(max_size=64))
    def test_any_bytes(self, data: bytes) -> None:
        """Any bytes after a v2 signature: a header, need more, or InvalidProxyHeader."""
        for candidate in (V2_SIGNATURE + data, b"PROXY " + data):
            try:
                header, rest = parse_proxy_header(candidate)
            except InvalidProxyHeader:
                continue
            if header is None:
                self.assertEqual(rest, candidate)
            elif header.source is not None:
                ipaddress.ip_address(header.source.host)


class ProxiedReceiverTests(ReceiverTestCase):
    """A ReceiverFactory behind a TrustedProxyFactory."""

    def wrap(self, **options: Any) -> TrustedProxyFactory:
        self.factory = self.make_factory(**options)
        return TrustedProxyFactory(self.factory, TRUSTED, clock=self.clock, timeout=10.0)

    def open(
        self, peer: str = PROXY, proxies: TrustedProxyFactory | None = None
    ) -> tuple[ProxiedConnection, HalfClosingTransport]:
        proxies = proxies or self.wrap()
        connection = proxies.buildProtocol(None)
        address = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 40000)
        transport = HalfClosingTransport(peerAddress=address)
        connection.makeConnection(transport)
        return connection, transport

    def upload(self, connection: ProxiedConnection, name: str, data: bytes) -> None:
        self.feed(connection, put(name, size=len(data)))  # type: ignore[arg-type]
        connection.dataReceived(data)

    def test_v1_then_upload_bytewise(self) -> None:
        """A v1 header and an FX/1 upload, a byte at a time: stored, logged under the client."""
        connection, transport = self.open()
        data = payload(3000, seed=1)
        self.feed(connection, v1("10.1.2.3"))  # type: ignore[arg-type]
        self.assertEqual(connection.getPeer(), IPv4Address("TCP", "10.1.2.3", 5555))
        self.upload(connection, "a.bin", data)
        self.assertEqual(self.read("a.bin"), data)
        self.assertTrue(transport.value().startswith(b"ok 0"), transport.value())
        self.assertIn(b"done 3000 ", transport.value())
        self.assertTrue(any(e.startswith("fx/1 10.1.2.3:5555 'a.bin'") for e in self.events))

    def test_v2_and_data_in_one_read(self) -> None:
        """A v2 header followed in the same read by the handshake: both are used."""
        connection, transport = self.open(peer=PROXY6)
        data = b"hello"
        connection.dataReceived(v2("2001:db8::42") + put("b.txt", size=5))
        connection.dataReceived(data)
        self.assertEqual(self.read("b.txt"), data)
        self.assertTrue(any(e.startswith("fx/1 [2001:db8::42]:5555 ") for e in self.events))

    def test_receiver_admits_after_the_header(self) -> None:
        """The receiver is connected only when the header is read: it never sees the proxy."""
        connection, _ = self.open()
        self.feed(connection, v2("10.1.2.3")[:-1])  # type: ignore[arg-type]
        self.assertEqual(self.factory.limits.open, 0)
        connection.dataReceived(v2("10.1.2.3")[-1:])
        self.assertEqual(self.factory.limits.open, 1)
        self.assertEqual(self.factory.limits.handshaking("10.1.2.3"), 1)
        self.assertEqual(self.factory.limits.handshaking(PROXY), 0)

    def test_allow_judges_the_client(self) -> None:
        """--allow refuses by the header's address, not the proxy's (mapped v2 included)."""
        proxies = self.wrap(access=AccessPolicy(["10.0.0.0/8"]))
        allowed, allowed_transport = self.open(proxies=proxies)
        self.feed(allowed, v2("::ffff:10.1.2.3"))  # type: ignore[arg-type]
        self.upload(allowed, "ok.txt", b"x")
        self.assertEqual(self.read("ok.txt"), b"x")
        refused, transport = self.open(proxies=proxies)
        self.feed(refused, v1("203.0.113.9"))  # type: ignore[arg-type]
        self.assertRefusedWith(transport, 403)

    def test_max_per_ip_counts_clients(self) -> None:
        """--max-per-ip counts each client behind the proxy, not the proxy."""
        proxies = self.wrap(limits=ConnectionLimits(max_per_ip=1))
        first, _ = self.open(proxies=proxies)
        self.feed(first, v1("10.1.1.1"))  # type: ignore[arg-type]
        same, same_transport = self.open(proxies=proxies)
        self.feed(same, v1("10.1.1.1"))  # type: ignore[arg-type]
        self.assertRefusedWith(same_transport, 503)
        other, other_transport = self.open(proxies=proxies)
        self.feed(other, v1("10.1.1.2"))  # type: ignore[arg-type]
        self.upload(other, "other.txt", b"y")
        self.assertEqual(self.read("other.txt"), b"y")

    def test_untrusted_peer_refused(self) -> None:
        """A peer outside --trusted-proxy is refused at once, header or not; no receiver runs."""
        for first_bytes in [v1("10.1.2.3"), v2("10.1.2.3"), put("x.txt", size=1)]:
            connection, transport = self.open(peer="10.1.2.3")
            self.assertRefusedWith(transport, 403)
            self.assertTrue(transport.write_closed)
            self.feed(connection, first_bytes + b"x")  # type: ignore[arg-type]
            self.assertEqual(self.factory.limits.open, 0)
            self.assertNotIn(b"ok", transport.value())
            self.assertIsInstance(connection.getPeer(), IPv4Address)
            self.assertEqual(connection.getPeer().host, "10.1.2.3")  # type: ignore[attr-defined]
        self.assertEqual(visible_files(self.root), [])
        self.assertTrue(any("proxy 10.1.2.3:40000 " in e and "403" in e for e in self.events))

    def test_untrusted_mapped_peer_refused(self) -> None:
        """A mapped IPv4 peer of a dual-stack port is judged as IPv4: outside, refused."""
        _, transport = self.open(peer="::ffff:10.1.2.3")
        self.assertRefusedWith(transport, 403)
        _, transport = self.open(peer=f"::ffff:{PROXY}")
        self.assertEqual(transport.value(), b"")

    def test_trusted_without_header_refused(self) -> None:
        """A trusted proxy that sends no header (send-proxy missing) is refused with 400."""
        connection, transport = self.open()
        self.feed(connection, put("x.txt", size=1))  # type: ignore[arg-type]
        self.assertRefusedWith(transport, 400)
        self.assertIn(b"PROXY", transport.value())
        self.assertEqual(self.factory.limits.open, 0)

    def test_bad_header_refused(self) -> None:
        """A malformed header from a trusted proxy is refused with 400."""
        connection, transport = self.open()
        self.feed(connection, b"PROXY TCP4 10.1.2.3 198.51.100.7 99999 8000\r\n")  # type: ignore[arg-type]
        self.assertRefusedWith(transport, 400)

    def test_refusal_lingers_then_closes(self) -> None:
        """After refusing, bytes are discarded and the connection closes after LINGER."""
        connection, transport = self.open(peer="10.1.2.3")
        connection.dataReceived(b"more bytes")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(LINGER)
        self.assertTrue(transport.disconnecting)

    def test_header_timeout(self) -> None:
        """A trusted proxy that never completes its header gets 408 after the timeout."""
        connection, transport = self.open()
        connection.dataReceived(b"PROXY TCP4")
        self.clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertRefusedWith(transport, 408)

    def test_silent_local_connection_times_out(self) -> None:
        """After LOCAL the timeout still runs: a proxy's silent connection is not held forever."""
        connection, transport = self.open()
        connection.dataReceived(v2(None, command=0))
        self.clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertRefusedWith(transport, 408)
        self.assertEqual(self.factory.limits.open, 0)

    def test_timer_stops_once_the_receiver_has_the_connection(self) -> None:
        """Once the header is read, only the receiver's own timers run."""
        connection, transport = self.open()
        connection.dataReceived(v1("10.1.2.3"))
        self.clock.advance(10.0)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(20.0)  # the receiver's handshake timeout (30 s)
        self.assertRefusedWith(transport, 408)
        self.assertIn(b"handshake timed out", transport.value())

    def test_local_health_check_is_quiet(self) -> None:
        """LOCAL then close (HAProxy's check), or a bare connect and close: no log, no receiver."""
        for header in [v2(None, command=0), b""]:
            connection, transport = self.open()
            self.feed(connection, header)  # type: ignore[arg-type]
            connection.readConnectionLost()
            self.assertTrue(transport.disconnecting)
            connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.limits.open, 0)
        self.assertEqual([e for e in self.events if "proxy" in e or "fx/1" in e], [])
        self.assertFalse(self.clock.getDelayedCalls())

    def test_local_then_upload_is_the_proxys(self) -> None:
        """Bytes after LOCAL go to the receiver, under the proxy's own address."""
        connection, transport = self.open()
        connection.dataReceived(v2(None, command=0))
        self.assertEqual(self.factory.limits.open, 0)
        self.upload(connection, "local.txt", b"z")
        self.assertEqual(self.read("local.txt"), b"z")
        self.assertTrue(any(e.startswith(f"fx/1 {PROXY}:40000 ") for e in self.events))

    def test_half_close_reaches_the_receiver(self) -> None:
        """FX/1 without Size ends with a half-close: it gets through the wrapper."""
        connection, transport = self.open()
        self.assertTrue(IHalfCloseableProtocol.providedBy(connection))
        connection.dataReceived(v1("10.1.2.3") + put("nosize.txt"))
        connection.dataReceived(b"abc")
        connection.readConnectionLost()
        self.assertEqual(self.read("nosize.txt"), b"abc")
        self.assertIn(b"done 3 ", transport.value())

    def test_unix_socket_peer_trusted(self) -> None:
        """A UNIX socket's peer (no address) may send a header: the socket's mode decides."""
        proxies = TrustedProxyFactory(self.make_factory(), [], clock=self.clock)
        self.assertTrue(proxies.trusts(None))
        self.assertFalse(proxies.trusts("127.0.0.1"))
        connection = proxies.buildProtocol(None)
        transport = HalfClosingTransport(peerAddress=UNIXAddress(None))
        connection.makeConnection(transport)
        connection.dataReceived(v1("10.1.2.3"))
        self.assertEqual(connection.getPeer(), IPv4Address("TCP", "10.1.2.3", 5555))


class OptionsTests(unittest.TestCase):
    def test_haproxy_needs_trusted_proxy(self) -> None:
        """--listen haproxy:tcp:... without --trusted-proxy is a usage error naming the fix."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--listen", "haproxy:tcp:8000")
        self.assertIn("--trusted-proxy", str(caught.exception))

    def test_trusted_proxy_needs_haproxy(self) -> None:
        """--trusted-proxy without a haproxy: endpoint is a usage error (it would do nothing)."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--port", "8000", "--trusted-proxy", "10.0.0.5")
        self.assertIn("haproxy:", str(caught.exception))

    def test_trusted_proxy_repeatable_and_checked(self) -> None:
        """--trusted-proxy is repeatable; a bad network is a usage error naming the option."""
        options = parse(
            "--listen", "haproxy:tcp:8000", "--trusted-proxy", "10.0.0.5",
            "--trusted-proxy", "fd00::/64",
        )  # fmt: skip
        self.assertEqual(options["trusted-proxy"], ["10.0.0.5", "fd00::/64"])
        with self.assertRaises(usage.UsageError) as caught:
            parse("--listen", "haproxy:tcp:8000", "--trusted-proxy", "proxy.example")
        self.assertTrue(str(caught.exception).startswith("--trusted-proxy: "))

    def test_haproxy_over_tls_refused(self) -> None:
        """haproxy:ssl: would read the header inside TLS, where HAProxy never sends it."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--listen", "haproxy:ssl:8443:privateKey=k.pem", "--trusted-proxy", "::1")
        self.assertIn("before any TLS", str(caught.exception))

    def test_haproxy_over_unix_needs_no_networks(self) -> None:
        """haproxy:unix:PATH alone is accepted: who connects is the socket file's mode."""
        options = parse("--listen", "haproxy:unix:/tmp/fx-proxy.sock")
        self.assertEqual(behind_proxy(options["listen"][0]), "unix")

    def test_no_tls_library_for_haproxy_tcp(self) -> None:
        """haproxy:tcp: needs no TLS library; haproxy:ssl: does."""
        self.assertFalse(needs_tls(["haproxy:tcp:8000"]))
        self.assertTrue(needs_tls(["haproxy:ssl:8443:privateKey=k.pem"]))

    def test_service_wraps_the_receiver(self) -> None:
        """make_service listens on the endpoint behind haproxy: with a TrustedProxyFactory."""
        root = os.path.abspath(self.mktemp())
        options = parse(
            "--listen", f"haproxy:tcp:0:interface={LOOPBACK}", "--trusted-proxy", "10.0.0.5",
            "--no-tftp", "--root", root, "--handshake-timeout", "4",
        )  # fmt: skip
        top = make_service(options, reactor)
        (listener,) = [c for c in top if isinstance(c, internet.StreamServerEndpointService)]
        self.assertIsInstance(listener.endpoint, TCP4ServerEndpoint)
        self.assertEqual(listener.endpoint._backlog, 1024)
        proxies = listener.factory
        self.assertIsInstance(proxies, TrustedProxyFactory)
        self.assertIsInstance(proxies.wrappedFactory, ReceiverFactory)
        self.assertEqual(proxies.trusted, [ipaddress.ip_network("10.0.0.5/32")])
        self.assertEqual(proxies.timeout, 4)
