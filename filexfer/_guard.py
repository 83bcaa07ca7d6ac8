"""Who may connect, and how many at once: plain bookkeeping, no I/O."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from filexfer._errors import TransferError
from filexfer.tcp._wire import encode_retry_hint

RETRY_AFTER = 2.0
"""Seconds a peer refused with 503 is told to wait before it tries again."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def canonical_host(host: str | None) -> str | None:
    """L{ipv4_form} of C{host}; None (a UNIX socket) stays None."""
    return None if host is None else ipv4_form(host)


def ipv4_form(host: str) -> str:
    """C{host} with an IPv4-mapped IPv6 address (C{::ffff:a.b.c.d}) written as IPv4.

    A dual-stack port sees IPv4 clients as mapped addresses: counted, allowed
    and logged under their IPv4 form, one client is one address whichever
    port it came in by.
    """
    if not host[:7].lower() == "::ffff:":
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else host


def parse_networks(texts: Iterable[str]) -> list[Network]:
    """C{["10.0.0.0/8", "::1"]} -> networks (host bits allowed: C{10.1.2.3/8} is C{10.0.0.0/8}).

    @raise ValueError: a text is not an IPv4 or IPv6 network or address.
    """
    return [ipaddress.ip_network(text, strict=False) for text in texts]


def within(networks: Iterable[Network], host: str) -> bool:
    """True when the address C{host} (text) is in one of C{networks}.

    An IPv6 scope id (C{%eth0}) is ignored, an IPv4-mapped address is
    matched as IPv4 (L{ipv4_form}), and a host that is not an IP address is
    in no network.
    """
    try:
        address = ipaddress.ip_address(ipv4_form(host.split("%", 1)[0]))
    except ValueError:
        return False
    return any(address in network for network in networks)


class AccessPolicy:
    """Allow only peers inside the given networks (everyone when none are given)."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: list[Network] = parse_networks(networks)

    def allows(self, host: str | None) -> bool:
        """True when C{host} (an IP address text, or None for UNIX sockets) may connect."""
        if not self.networks or host is None:
            return True
        return within(self.networks, host)


class ConnectionLimits:
    """Counts open connections in total, and per peer address those still in a handshake.

    The per-address cap is there against peers that hold slots without
    getting anywhere (idle sockets, handshakes dripped a byte at a time), so
    a connection counts against its address only until L{handshake_done}:
    many transfers in progress from one address (a build farm behind one NAT)
    are normal.  The total cap counts every connection until L{leave}.

    @param retry_after: the seconds a refused peer is told to wait.
    """

    def __init__(
        self,
        max_connections: int | None = None,
        max_per_ip: int | None = None,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.retry_after = retry_after
        self._hosts: dict[object, str | None] = {}
        self._handshaking: dict[object, str | None] = {}
        self._per_host: Counter[str | None] = Counter()

    @property
    def open(self) -> int:
        """How many connections are counted in."""
        return len(self._hosts)

    def handshaking(self, host: str | None) -> int:
        """How many connections from C{host} are counted in and still in their handshake."""
        return self._per_host[host]

    def enter(self, connection: object, host: str | None) -> TransferError | None:
        """Count C{connection} in, or return the 503 that refuses it."""
        host = canonical_host(host)
        if self.max_connections is not None and len(self._hosts) >= self.max_connections:
            return self._busy("too many connections")
        if self.max_per_ip is not None and self._per_host[host] >= self.max_per_ip:
            return self._busy("too many connections from your address")
        self._hosts[connection] = host
        self._handshaking[connection] = host
        self._per_host[host] += 1
        return None

    def handshake_done(self, connection: object) -> None:
        """C{connection} finished its handshake: it no longer counts against its address."""
        if connection in self._handshaking:
            self._uncount(self._handshaking.pop(connection))

    def leave(self, connection: object) -> None:
        """Count C{connection} out (a no-op for one that was never counted in)."""
        self.handshake_done(connection)
        self._hosts.pop(connection, None)

    def _uncount(self, host: str | None) -> None:
        self._per_host[host] -= 1
        if not self._per_host[host]:
            del self._per_host[host]

    def _busy(self, reason: str) -> TransferError:
        return TransferError(503, encode_retry_hint(reason, self.retry_after))
