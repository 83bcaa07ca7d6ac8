"""The PROXY protocol (HAProxy) in front of the receiver, believed only from trusted proxies.

A load balancer in TCP mode hides the client: the receiver sees the
balancer's address.  With C{send-proxy} / C{send-proxy-v2} HAProxy starts
each connection with a PROXY header naming the client (the specification:
U{https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt}), and a
C{--listen haproxy:tcp:PORT} endpoint reads it, so that the log, C{--allow}
and C{--max-per-ip} see the client's address.

The header is parsed by Twisted's own parsers (L{V1Parser.parse},
L{V2Parser.parse}); the connection is handled here instead of by Twisted's
L{HAProxyProtocolWrapper}, which

  - believes a header from any peer (anyone who can reach the port can
    claim any address, past C{--allow} and C{--max-per-ip});
  - connects the wrapped protocol before the header is read, so the
    receiver's admission (C{--allow}, C{--max-per-ip}) would judge the
    proxy's address;
  - drops a header whose first read is shorter than 8 or 16 bytes (TCP may
    deliver it a byte at a time), and lets a v1 port that is not a number
    escape as a ValueError;
  - does not pass a half-close on (FX/1 without Size ends with one).

The rules (docs/security.md, "Behind a proxy"):

  - a peer outside the trusted networks is refused (C{error 403}) before a
    byte is read, with or without a header: only trusted proxies may connect
    to a C{haproxy:} port;
  - a trusted proxy must start with a header (v1 or v2); anything else is
    refused with C{error 400} (a proxy without C{send-proxy} would make every
    client one address);
  - C{LOCAL} (v2) and C{UNKNOWN} (v1), and a header without an IP source
    (C{UNSPEC}, a UNIX socket), mean "the proxy's own connection" (health
    checks): the connection keeps the proxy's address; one that closes
    before sending anything (a health check) is not logged;
  - a connection from a trusted proxy that closes without a byte (a plain
    TCP health check) is not logged either;
  - the header must arrive within the handshake timeout (C{error 408}), and
    on the proxy's own connection its first byte too.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from enum import Enum
from typing import Any, cast

import attr
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from filexfer._errors import TransferError
from filexfer._guard import ipv4_form, parse_networks, within
from filexfer._log import describe_peer, log_transfer
from filexfer._records import TransferRecord, transfer_ended
from filexfer.tcp import _wire
from filexfer.tcp.receiver import LINGER, close_after_last_words

V1_SIGNATURE = b"PROXY "
V1_MAX = 107
"""The longest v1 header, C{\\r\\n} included (the specification, 2.1)."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
"""Bytes of a v2 header before its addresses: signature, command, family, length."""


class MissingProxyHeader(InvalidProxyHeader):
    """The bytes do not start with a PROXY header of either version."""


@attr.frozen
class ProxyHeader:
    """A parsed PROXY header.

    @ivar source: the client's address, or None when the connection is the
        proxy's own (C{LOCAL}, C{UNKNOWN}, or no IP source address).
    @ivar version: 1 or 2.
    """

    source: IPv4Address | IPv6Address | None
    version: int


def parse_proxy_header(buffer: bytes) -> tuple[ProxyHeader | None, bytes]:
    """Parse a PROXY header (v1 or v2) at the start of C{buffer}.

    Pure: no transport.  Feed it everything received so far.

    @return: C{(header, rest)} once the header is complete (C{rest}: the
        bytes after it), or C{(None, buffer)} when more bytes are needed.
    @raise MissingProxyHeader: C{buffer} starts with neither signature.
    @raise InvalidProxyHeader: the header is malformed: too long, an unknown
        version or command, a source that is not an IP address of the
        announced family, a port outside 0-65535.
    """
    if buffer[:12] == V2_SIGNATURE[: len(buffer)]:
        if len(buffer) < V2_FIXED:
            return None, buffer
        (length,) = struct.unpack("!H", buffer[14:16])
        end = V2_FIXED + length
        if len(buffer) < end:
            return None, buffer
        return ProxyHeader(_source(V2Parser.parse, buffer[:end]), 2), buffer[end:]
    if buffer[:6] == V1_SIGNATURE[: len(buffer)]:
        end = buffer.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buffer) >= V1_MAX:
                raise InvalidProxyHeader(f"a v1 header longer than {V1_MAX} bytes")
            return None, buffer
        line, rest = buffer[:end], buffer[end + 2 :]
        if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
            return ProxyHeader(None, 1), rest  # Twisted's parser wants addresses after it
        return ProxyHeader(_source(V1Parser.parse, line), 1), rest
    raise MissingProxyHeader("not a PROXY protocol header")


def _source(parse: Any, header: bytes) -> IPv4Address | IPv6Address | None:
    """The client address of a complete header, checked and in its canonical text.

    An IPv4-mapped IPv6 source (C{::ffff:a.b.c.d}, what HAProxy sends for an
    IPv4 client of a dual-stack bind) becomes IPv4 (L{ipv4_form}), so that
    it is counted, allowed and logged as the same client as a plain IPv4
    one.
    """
    try:
        info = parse(header)
        source = info.source
        if not isinstance(source, IPv4Address | IPv6Address):
            return None  # LOCAL, UNKNOWN, UNSPEC, a UNIX socket: the proxy's own
        address = ipaddress.ip_address(source.host)
        if (address.version == 4) != isinstance(source, IPv4Address):
            raise InvalidProxyHeader("the source address is not of the announced family")
        if not 0 <= source.port <= 65535:
            raise InvalidProxyHeader("the source port is out of range")
    except InvalidProxyHeader:
        raise
    except (ValueError, KeyError, IndexError, struct.error) as error:
        raise InvalidProxyHeader(f"malformed: {error}") from None
    host = ipv4_form(str(address))
    if ":" in host:
        return IPv6Address("TCP", host, source.port)
    return IPv4Address("TCP", host, source.port)


class _Phase(Enum):
    """Where a proxied connection is: reading the header, then passing bytes through."""

    HEADER = "reading the PROXY header"
    LOCAL = "the proxy's own connection, nothing received yet"
    THROUGH = "connected to the wrapped protocol"
    REFUSED = "refused: discarding until closed"


@implementer(IHalfCloseableProtocol)
class ProxiedConnection(ProtocolWrapper):
    """One connection to a C{haproxy:} port: header first, then the wrapped protocol.

    The wrapped protocol is connected only once the header is read, so
    everything it asks of its transport (C{getPeer}) already names the
    client.
    """

    factory: TrustedProxyFactory

    def __init__(self, factory: TrustedProxyFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._phase = _Phase.HEADER
        self._buffer = b""
        self._client: IPv4Address | IPv6Address | None = None
        self._timer: IDelayedCall | None = None
        self._started = 0.0
        self._peer_finished = False

    # -- the transport the wrapped protocol sees ------------------------------------

    def getPeer(self) -> IAddress:
        """The client named by the header, or the proxy for its own connections."""
        if self._client is not None:
            return self._client
        return self.transport.getPeer()  # type: ignore[union-attr]

    @property
    def bufferSize(self) -> int:
        """The real transport's read size (the receiver raises it)."""
        return int(self.transport.bufferSize)  # type: ignore[union-attr]

    @bufferSize.setter
    def bufferSize(self, size: int) -> None:
        self.transport.bufferSize = size  # type: ignore[union-attr]

    # -- Twisted's calls --------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        """Like L{ProtocolWrapper}'s, without connecting the wrapped protocol yet."""
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def connectionMade(self) -> None:
        self._started = self.factory.clock.seconds()
        proxy = self.transport.getPeer()  # type: ignore[union-attr]
        if not self.factory.trusts(getattr(proxy, "host", None)):
            self._refuse(TransferError(403, "only trusted proxies may connect to this port"))
            return
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._phase is _Phase.THROUGH:
            self.wrappedProtocol.dataReceived(data)
        elif self._phase is _Phase.LOCAL:
            self._connect(data)
        elif self._phase is _Phase.HEADER:
            self._read_header(data)

    def readConnectionLost(self) -> None:
        self._peer_finished = True
        if self._phase is _Phase.THROUGH:
            if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
                self.wrappedProtocol.readConnectionLost()
            else:
                self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._disarm()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        if self._phase is _Phase.THROUGH and IHalfCloseableProtocol.providedBy(
            self.wrappedProtocol
        ):
            self.wrappedProtocol.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self.factory.unregisterProtocol(self)
        if self._phase is _Phase.THROUGH:
            self.wrappedProtocol.connectionLost(reason)
        elif self._phase is _Phase.HEADER and self._buffer:
            self._log("connection closed during the PROXY header")

    # -- the header ------------------------------------------------------------------

    def _read_header(self, data: bytes) -> None:
        self._buffer += data
        try:
            header, rest = parse_proxy_header(self._buffer)
        except MissingProxyHeader:
            self._refuse(TransferError(400, "expected a PROXY protocol header (v1 or v2)"))
            return
        except InvalidProxyHeader as error:
            self._refuse(TransferError(400, f"bad PROXY protocol header: {error}".rstrip(": ")))
            return
        if header is None:
            return
        self._buffer = b""
        if header.source is None:
            self._phase = _Phase.LOCAL  # the timer runs on until its first byte
            if rest:
                self._connect(rest)
            return
        self._client = header.source
        self._connect(rest)

    def _connect(self, rest: bytes) -> None:
        """Hand the connection to the wrapped protocol, then the bytes after the header."""
        self._disarm()  # the wrapped protocol keeps its own time from here
        self._phase = _Phase.THROUGH
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    # -- refusing -------------------------------------------------------------------

    def _refuse(self, error: TransferError) -> None:
        """Say why in one line, log it, and close without resetting the reply away."""
        self._disarm()
        self._phase = _Phase.REFUSED
        self._buffer = b""
        self._log(f"refused: {error.code} {error.reason}", code=error.code)
        self.transport.write(_wire.encode_error(error))  # type: ignore[union-attr]
        if close_after_last_words(self.transport, self._peer_finished):  # type: ignore[arg-type]
            self._timer = self.factory.clock.callLater(LINGER, self._linger_over)

    def _linger_over(self) -> None:
        self._timer = None
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _timed_out(self) -> None:
        self._timer = None
        what = "the PROXY header" if self._phase is _Phase.HEADER else "a request"
        self._refuse(TransferError(408, f"{what} did not arrive in time"))

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _log(self, outcome: str, *, code: int | None = None) -> None:
        """A connection that never reached the receiver: one record, as the receiver's.

        Its C{protocol} is C{proxy}: the handshake's form is still unknown.
        """
        now = self.factory.clock.seconds()
        record = TransferRecord(
            protocol="proxy",
            direction="upload",
            peer=describe_peer(self.transport.getPeer()),  # type: ignore[union-attr]
            path="",
            outcome="aborted" if code is None else "refused",
            detail=outcome,
            seconds=now - self._started,
            time=now,
            error_code=code,
        )
        observer = getattr(self.factory.wrappedFactory, "observer", None)
        if observer is None:
            log_transfer(record)
        else:
            transfer_ended(observer, record)


class TrustedProxyFactory(WrappingFactory["ProxiedConnection"]):
    """Wraps a factory's protocols in L{ProxiedConnection}s: a C{haproxy:} port.

    @param wrappedFactory: the factory of the protocol behind the header
        (a L{filexfer.ReceiverFactory}).
    @param trusted: the proxies' networks (C{"10.0.0.5/32"}, C{"fd00::/64"});
        a header is believed only from a peer inside one of them, and no
        other peer may connect.  None given: no peer but a UNIX socket's.
    @param clock: for the header timeout.
    @param timeout: seconds a trusted proxy has to send the whole header.
    @raise ValueError: a network is not an IP network or address.
    """

    protocol = ProxiedConnection
    noisy = False

    def __init__(
        self,
        wrappedFactory: Any,
        trusted: Iterable[str],
        *,
        clock: IReactorTime,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(wrappedFactory)
        self.trusted = parse_networks(trusted)
        self.clock = clock
        self.timeout = timeout

    def trusts(self, host: str | None) -> bool:
        """True when a connection from C{host} may send a header (None: a UNIX socket peer).

        A UNIX socket has no peer address: who may connect to it is decided
        by its file's permissions, so its peers are trusted.
        """
        return host is None or within(self.trusted, host)
