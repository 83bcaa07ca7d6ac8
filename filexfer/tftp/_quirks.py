"""Switches for buggy TFTP clients, by network: a pure policy, no I/O.

Some clients ask for options they cannot handle: firmware that requests a
C{blksize} larger than its network's MTU and then cannot reassemble IP
fragments, or that crashes when C{blksize} is acknowledged at all
(tftpd-hpa's manual, C{--refuse} and C{--blocksize}); phones and switches
that lose the second datagram of a window.  Servers offer global switches
for them (tftpd-hpa C{-r}/C{-B}, atftpd C{--no-blksize}, dnsmasq
C{--tftp-mtu}); here they are chosen per client network, so that one bad
model does not slow the whole fleet.

One rule a line (C{--tftp-quirks}, repeatable, or C{--tftp-quirks-file}),
a network and settings separated by white space::

    10.20.0.0/16  refuse=blksize,tsize
    10.30.0.0/16  mtu=1400 windowsize=1
    2001:db8::/32 blksize=1024

C{refuse=NAME[,NAME...]} never acknowledges those options; C{blksize=N}
caps the block size; C{mtu=N} caps it at what fits in one IP packet of N
bytes (N - 32 for IPv4: 20 IP + 8 UDP + 4 TFTP; N - 52 for IPv6: 40 IPv6 +
8 UDP + 4 TFTP); C{windowsize=N} caps the window.  A client gets the rule
of the most specific network that contains it (longest prefix), or none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs

from filexfer._guard import Network, ipv4_form
from filexfer.tftp._packets import MAX_BLKSIZE, MAX_WINDOWSIZE, MIN_BLKSIZE, ServerCaps

IPV4_OVERHEAD = 32
"""Bytes of an IPv4 TFTP DATA packet that are not payload: 20 IP, 8 UDP, 4 TFTP."""
IPV6_OVERHEAD = 52
"""The same for IPv6: 40 IPv6, 8 UDP, 4 TFTP."""
OPTIONS = frozenset({"blksize", "windowsize", "timeout", "tsize"})
"""The options a rule may refuse (those the server negotiates)."""


class QuirkSyntaxError(ValueError):
    """A quirks rule that cannot be used; the message says which part and why."""


@attrs.frozen
class Quirk:
    """What one network's clients get: options refused, caps on blksize and windowsize."""

    network: Network
    refuse: frozenset[str] = frozenset()
    max_blksize: int | None = None
    max_windowsize: int | None = None

    def caps(self, base: ServerCaps) -> ServerCaps:
        """C{base} narrowed by this rule (a cap never raises the server's own)."""
        return attrs.evolve(
            base,
            max_blksize=min(base.max_blksize, self.max_blksize or MAX_BLKSIZE),
            max_windowsize=min(base.max_windowsize, self.max_windowsize or MAX_WINDOWSIZE),
            refused=base.refused | self.refuse,
        )


def _number(key: str, value: str, low: int, high: int) -> int:
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise QuirkSyntaxError(f"{key}={value!r}: must be a whole number from {low} to {high}")
    return int(value)


def parse_quirk(text: str) -> Quirk | None:
    """One rule (C{NETWORK KEY=VALUE ...}) as a L{Quirk}; None for a blank or comment line.

    @raise QuirkSyntaxError: a bad network, an unknown key or option, a
        value out of range, or C{mtu} together with C{blksize}.
    """
    fields = text.split("#", 1)[0].split()
    if not fields:
        return None
    try:
        network = ipaddress.ip_network(fields[0], strict=False)
    except ValueError:
        raise QuirkSyntaxError(f"{fields[0]!r} is not a network (e.g. 10.0.0.0/8)") from None
    if len(fields) == 1:
        raise QuirkSyntaxError(f"{fields[0]}: no settings (refuse=, blksize=, mtu=, windowsize=)")
    refuse: set[str] = set()
    blksize: int | None = None
    windowsize: int | None = None
    seen: set[str] = set()
    for field in fields[1:]:
        key, equals, value = field.partition("=")
        if not equals or key in seen:
            raise QuirkSyntaxError(f"{field!r}: expected KEY=VALUE, each key once")
        seen.add(key)
        if key == "refuse":
            names = {name.lower() for name in value.split(",") if name}
            unknown = sorted(names - OPTIONS)
            if unknown or not names:
                raise QuirkSyntaxError(f"refuse={value}: options are {', '.join(sorted(OPTIONS))}")
            refuse |= names
        elif key == "blksize":
            blksize = _number(key, value, MIN_BLKSIZE, MAX_BLKSIZE)
        elif key == "mtu":
            overhead = IPV4_OVERHEAD if network.version == 4 else IPV6_OVERHEAD
            low = overhead + MIN_BLKSIZE
            blksize = _number(key, value, low, MAX_BLKSIZE + overhead) - overhead
        elif key == "windowsize":
            windowsize = _number(key, value, 1, MAX_WINDOWSIZE)
        else:
            raise QuirkSyntaxError(f"{key!r}: unknown (refuse=, blksize=, mtu=, windowsize=)")
    if {"mtu", "blksize"} <= seen:
        raise QuirkSyntaxError("give mtu= or blksize=, not both")
    return Quirk(network, frozenset(refuse), blksize, windowsize)


@attrs.frozen
class QuirksPolicy:
    """Rules by network; L{caps_for} gives the caps one client negotiates under."""

    quirks: tuple[Quirk, ...] = ()

    @classmethod
    def parse(cls, lines: Iterable[str]) -> QuirksPolicy:
        """A policy from rule lines (a file's, or C{--tftp-quirks} values).

        @raise QuirkSyntaxError: the first bad line, its number (from 1) in the message.
        """
        quirks = []
        for number, line in enumerate(lines, start=1):
            try:
                quirk = parse_quirk(line)
            except QuirkSyntaxError as exc:
                raise QuirkSyntaxError(f"line {number}: {exc}") from None
            if quirk is not None:
                quirks.append(quirk)
        return cls(tuple(quirks))

    def for_client(self, host: str) -> Quirk | None:
        """The rule of the most specific network containing C{host}, or None."""
        try:
            address = ipaddress.ip_address(ipv4_form(host.split("%", 1)[0]))
        except ValueError:
            return None
        best: Quirk | None = None
        for quirk in self.quirks:
            if address.version == quirk.network.version and address in quirk.network:
                if best is None or quirk.network.prefixlen > best.network.prefixlen:
                    best = quirk
        return best

    def caps_for(self, host: str, base: ServerCaps) -> ServerCaps:
        """C{base}, narrowed by C{host}'s rule when it has one."""
        quirk = self.for_client(host)
        return base if quirk is None else quirk.caps(base)
