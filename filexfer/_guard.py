"""Who may connect, and how many at once: plain bookkeeping, no I/O."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from filexfer._errors import TransferError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessPolicy:
    """Allow only peers inside the given networks (everyone when none are given)."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allows(self, host: str | None) -> bool:
        """True when C{host} (an IP address text, or None for UNIX sockets) may connect."""
        if not self.networks or host is None:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class ConnectionLimits:
    """Counts open connections, in total and per peer address."""

    def __init__(self, max_connections: int | None = None, max_per_ip: int | None = None) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self._hosts: dict[object, str | None] = {}
        self._per_host: Counter[str | None] = Counter()

    @property
    def open(self) -> int:
        """How many connections are counted in."""
        return len(self._hosts)

    def enter(self, connection: object, host: str | None) -> TransferError | None:
        """Count C{connection} in, or return the 503 that refuses it."""
        if self.max_connections is not None and len(self._hosts) >= self.max_connections:
            return TransferError(503, "too many connections; try again later")
        if self.max_per_ip is not None and self._per_host[host] >= self.max_per_ip:
            return TransferError(503, "too many connections from your address")
        self._hosts[connection] = host
        self._per_host[host] += 1
        return None

    def leave(self, connection: object) -> None:
        """Count C{connection} out (a no-op for one that was never counted in)."""
        if connection in self._hosts:
            host = self._hosts.pop(connection)
            self._per_host[host] -= 1
            if not self._per_host[host]:
                del self._per_host[host]
