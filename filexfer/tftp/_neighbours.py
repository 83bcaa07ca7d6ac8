"""Per-client roots (C{--tftp-per-client-root ip|mac}) and the kernel's neighbour table.

dnsmasq's C{--tftp-unique-root=ip|mac} serves each client from a
directory named after it under the root; so does this server: a read of
C{NAME} by a client is served from C{ROOT/KEY/NAME} when that file exists,
else from C{ROOT/NAME} (the shared root).  C{KEY} is the client's address
(C{192.0.2.7}, C{2001:db8::7}; an IPv4-mapped address is written as IPv4)
or its hardware address written as dnsmasq writes it (C{01-23-45-67-89-ab},
lower case).

A client's hardware address is only known for a neighbour on a directly
attached network: the kernel's table (C{/proc/net/arp} for IPv4, C{ip -6
neigh} for IPv6, which has no procfs file) holds it once the client's
datagrams arrived.  The parsers here are pure; L{NeighbourTable} reads.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from typing import Literal

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.utils import getProcessOutput

from filexfer._guard import ipv4_form

Mode = Literal["ip", "mac"]
MODES: tuple[Mode, ...] = ("ip", "mac")
PROC_ARP = "/proc/net/arp"
IP_COMMAND_TIMEOUT = 1.0
"""Seconds C{ip -6 neigh} may take before the shared root is used instead."""

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NO_MAC = "00:00:00:00:00:00"


def _canonical(host: str) -> str:
    return str(ipaddress.ip_address(ipv4_form(host.split("%", 1)[0])))


def parse_proc_arp(text: str) -> dict[str, str]:
    """C{/proc/net/arp} as {IPv4 address: MAC (lower case, colons)}.

    Incomplete entries (flags 0x0, an all-zero address) are left out.
    """
    table: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        address, _, flags, mac = fields[:4]
        mac = mac.lower()
        if _MAC.match(mac) and mac != _NO_MAC and int(flags, 16) & 0x2:
            table[address] = mac
    return table


def parse_ip_neigh(text: str) -> dict[str, str]:
    """C{ip neigh show} output as {address: MAC}; entries without C{lladdr} are left out."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if "lladdr" not in fields or not fields:
            continue
        index = fields.index("lladdr") + 1
        if index < len(fields) and _MAC.match(fields[index].lower()):
            if fields[-1] in ("FAILED", "INCOMPLETE"):
                continue
            try:
                table[_canonical(fields[0])] = fields[index].lower()
            except ValueError:
                continue
    return table


def client_key(mode: Mode, host: str, mac: str | None) -> str | None:
    """The directory name of a client under the root, or None when it has none.

    C{ip}: the address (IPv4-mapped written as IPv4); C{mac}: the hardware
    address as dnsmasq writes it (C{01-23-45-67-89-ab}), None when unknown.
    """
    if mode == "ip":
        try:
            return _canonical(host)
        except ValueError:
            return None
    return mac.replace(":", "-") if mac is not None else None


_MAC_DIRECTORY = re.compile(r"[0-9a-f]{2}(-[0-9a-f]{2}){5}", re.IGNORECASE)


def is_client_directory(component: str) -> bool:
    """Is C{component} a per-client directory's name (an IP address, or a MAC as dnsmasq writes it)?

    Such directories belong to one client each: reached through the shared
    root they would hand one device another's files (per-device configs
    often hold credentials).
    """
    if _MAC_DIRECTORY.fullmatch(component):
        return True
    try:
        ipaddress.ip_address(component)
    except ValueError:
        return False
    return True


def candidates(path: str, key: str | None) -> list[str]:
    """The paths to try for a read of C{path}, in order: the client's, then the shared one."""
    relative = path.lstrip("/")
    return [f"{key}/{relative}", path] if key else [path]


class NeighbourTable:
    """Look a client's hardware address up in the kernel's neighbour table.

    @param reactor: runs C{ip -6 neigh} and times it out.
    @param read_arp: returns the text of C{/proc/net/arp} (injectable).
    @param ip_neigh: returns a Deferred of C{ip -6 neigh show to ADDR}'s
        output (injectable); by default the C{ip} command is run.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        read_arp: Callable[[], str] | None = None,
        ip_neigh: Callable[[str], Deferred[bytes]] | None = None,
    ) -> None:
        self.reactor = reactor
        self.read_arp = read_arp if read_arp is not None else _read_proc_arp
        self.ip_neigh = ip_neigh if ip_neigh is not None else self._run_ip

    def mac_for(self, host: str) -> Deferred[str | None]:
        """The MAC of C{host}, or None when the kernel does not know it (never fails)."""
        try:
            address = _canonical(host)
        except ValueError:
            return succeed(None)
        if ":" not in address:
            try:
                return succeed(parse_proc_arp(self.read_arp()).get(address))
            except OSError:
                return succeed(None)
        looking = self.ip_neigh(address)
        found: Deferred[str | None] = looking.addCallback(_mac_in, address)
        return found.addErrback(lambda _: None)

    def _run_ip(self, address: str) -> Deferred[bytes]:
        running: Deferred[bytes] = getProcessOutput(
            "ip", ["-6", "neigh", "show", "to", address], env=dict(os.environ), reactor=self.reactor
        )
        assert IReactorTime.providedBy(self.reactor)
        return running.addTimeout(IP_COMMAND_TIMEOUT, self.reactor)


def _mac_in(output: bytes, address: str) -> str | None:
    return parse_ip_neigh(output.decode("ascii", "replace")).get(address)


def _read_proc_arp() -> str:
    with open(PROC_ARP, encoding="ascii", errors="replace") as handle:
        return handle.read()
