"""Per-client roots: the client's directory name, and the kernel neighbour table's parsers."""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from filexfer.tftp._neighbours import (
    NeighbourTable,
    _read_proc_arp,
    candidates,
    client_key,
    parse_ip_neigh,
    parse_proc_arp,
)

PROC_ARP = """\
IP address       HW type     Flags       HW address            Mask     Device
192.0.2.7        0x1         0x2         52:54:00:AB:cd:01     *        eth0
192.0.2.8        0x1         0x0         00:00:00:00:00:00     *        eth0
192.0.2.9        0x1         0x6         52:54:00:12:34:56     *        eth0
"""

IP_NEIGH = """\
2001:db8::7 dev eth0 lladdr 52:54:00:ab:cd:02 REACHABLE
fe80::1 dev eth0 lladdr 52:54:00:00:00:01 router STALE
2001:db8::8 dev eth0  FAILED
2001:db8:0:0::9 dev eth0 lladdr 52:54:00:00:00:09 INCOMPLETE
"""


class ParserTests(unittest.TestCase):
    """The two tables' text formats."""

    def test_proc_arp(self) -> None:
        """Complete entries only (flag 0x2), MACs in lower case."""
        self.assertEqual(
            parse_proc_arp(PROC_ARP),
            {"192.0.2.7": "52:54:00:ab:cd:01", "192.0.2.9": "52:54:00:12:34:56"},
        )

    def test_ip_neigh(self) -> None:
        """Entries with lladdr, not FAILED or INCOMPLETE; addresses in canonical form."""
        self.assertEqual(
            parse_ip_neigh(IP_NEIGH),
            {"2001:db8::7": "52:54:00:ab:cd:02", "fe80::1": "52:54:00:00:00:01"},
        )

    def test_this_machine_s_table(self) -> None:
        """The real /proc/net/arp parses into IPv4 addresses and MACs."""
        for address, mac in parse_proc_arp(_read_proc_arp()).items():
            self.assertEqual(ipaddress.ip_address(address).version, 4)
            self.assertEqual(len(mac), 17)


class KeyTests(unittest.TestCase):
    """Which directory a client reads from."""

    def test_ip(self) -> None:
        """ip mode: the address; a mapped address is written as IPv4."""
        self.assertEqual(client_key("ip", "::ffff:192.0.2.7", None), "192.0.2.7")
        self.assertEqual(client_key("ip", "2001:DB8::7", None), "2001:db8::7")

    def test_mac(self) -> None:
        """mac mode: dnsmasq's 01-23-45-67-89-ab form; unknown MAC: no directory."""
        self.assertEqual(client_key("mac", "192.0.2.7", "52:54:00:ab:cd:01"), "52-54-00-ab-cd-01")
        self.assertIsNone(client_key("mac", "192.0.2.7", None))

    def test_candidates(self) -> None:
        """The client's copy first, then the shared root; a leading / is from the root."""
        self.assertEqual(candidates("/boot/x", "192.0.2.7"), ["192.0.2.7/boot/x", "/boot/x"])
        self.assertEqual(candidates("boot/x", None), ["boot/x"])


class TableTests(unittest.TestCase):
    """NeighbourTable.mac_for never fails: unknown is None."""

    def test_ipv4_from_proc(self) -> None:
        """An IPv4 client (also mapped) is looked up in /proc/net/arp."""
        table = NeighbourTable(Clock(), read_arp=lambda: PROC_ARP)  # type: ignore[arg-type]
        self.assertEqual(
            self.successResultOf(table.mac_for("::ffff:192.0.2.7")), "52:54:00:ab:cd:01"
        )
        self.assertIsNone(self.successResultOf(table.mac_for("192.0.2.8")))

    def test_ipv4_unreadable(self) -> None:
        """A table that cannot be read: None."""

        def broken() -> str:
            raise OSError("no procfs")

        table = NeighbourTable(Clock(), read_arp=broken)  # type: ignore[arg-type]
        self.assertIsNone(self.successResultOf(table.mac_for("192.0.2.7")))

    def test_ipv6_from_ip_neigh(self) -> None:
        """An IPv6 client is looked up with ip -6 neigh; a failed command gives None."""
        asked: list[str] = []

        def ip_neigh(address: str):  # type: ignore[no-untyped-def]
            asked.append(address)
            return succeed(IP_NEIGH.encode())

        table = NeighbourTable(Clock(), ip_neigh=ip_neigh)  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(table.mac_for("2001:db8:0::7")), "52:54:00:ab:cd:02")
        self.assertEqual(asked, ["2001:db8::7"])
        failing = NeighbourTable(Clock(), ip_neigh=lambda a: fail(OSError("no ip")))  # type: ignore[arg-type]
        self.assertIsNone(self.successResultOf(failing.mac_for("2001:db8::7")))
