"""Who may connect and how many at once (filexfer._guard)."""

from __future__ import annotations

from twisted.trial import unittest

from filexfer._guard import AccessPolicy, ConnectionLimits
from filexfer._log import describe_peer
from filexfer.tcp._wire import parse_retry_hint


class AccessPolicyTests(unittest.TestCase):
    def test_everyone_without_networks(self) -> None:
        """With no networks every address (and a UNIX socket's None) is allowed."""
        policy = AccessPolicy()
        for host in ["10.1.2.3", "::1", "203.0.113.9", None]:
            self.assertTrue(policy.allows(host))

    def test_ipv4(self) -> None:
        """IPv4 addresses are checked against IPv4 networks."""
        policy = AccessPolicy(["10.0.0.0/8", "192.168.1.7"])
        self.assertTrue(policy.allows("10.255.0.1"))
        self.assertTrue(policy.allows("192.168.1.7"))
        self.assertFalse(policy.allows("192.168.1.8"))
        self.assertFalse(policy.allows("11.0.0.1"))

    def test_ipv6(self) -> None:
        """IPv6 addresses are checked against IPv6 networks, scope ids ignored."""
        policy = AccessPolicy(["::1/128", "fd00::/8"])
        self.assertTrue(policy.allows("::1"))
        self.assertTrue(policy.allows("fd12:3456::1"))
        self.assertTrue(policy.allows("fd00::1%eth0"))
        self.assertFalse(policy.allows("2001:db8::1"))
        self.assertFalse(policy.allows("127.0.0.1"))

    def test_ipv4_mapped(self) -> None:
        """An IPv4-mapped IPv6 peer (dual-stack socket) matches the IPv4 network."""
        policy = AccessPolicy(["127.0.0.0/8"])
        self.assertTrue(policy.allows("::ffff:127.0.0.1"))
        self.assertFalse(policy.allows("::ffff:10.0.0.1"))

    def test_non_strict_networks(self) -> None:
        """A network with host bits set is accepted as its network."""
        policy = AccessPolicy(["10.1.2.3/8"])
        self.assertTrue(policy.allows("10.9.9.9"))

    def test_garbage_host_refused(self) -> None:
        """A host that is not an IP address is refused when networks are set."""
        self.assertFalse(AccessPolicy(["0.0.0.0/0"]).allows("example.org"))

    def test_bad_network(self) -> None:
        """A bad network description raises ValueError."""
        self.assertRaises(ValueError, AccessPolicy, ["not-a-network"])


class ConnectionLimitsTests(unittest.TestCase):
    def test_counts_in_and_out(self) -> None:
        """enter counts a connection in, leave counts it out, back to zero."""
        limits = ConnectionLimits()
        a, b = object(), object()
        self.assertIsNone(limits.enter(a, "10.0.0.1"))
        self.assertIsNone(limits.enter(b, "10.0.0.1"))
        self.assertEqual(limits.open, 2)
        limits.leave(a)
        limits.leave(b)
        self.assertEqual(limits.open, 0)
        self.assertEqual(dict(limits._per_host), {})

    def test_total_limit(self) -> None:
        """Past max_connections enter returns a 503 and does not count it."""
        limits = ConnectionLimits(max_connections=2)
        first, second, third = object(), object(), object()
        self.assertIsNone(limits.enter(first, "a"))
        self.assertIsNone(limits.enter(second, "b"))
        error = limits.enter(third, "c")
        assert error is not None
        self.assertEqual(error.code, 503)
        self.assertEqual(limits.open, 2)
        limits.leave(third)  # never counted in: a no-op
        self.assertEqual(limits.open, 2)
        limits.leave(first)
        self.assertIsNone(limits.enter(third, "c"))

    def test_per_ip_limit(self) -> None:
        """Past max_per_ip one address gets 503 while others still get in."""
        limits = ConnectionLimits(max_per_ip=1)
        one, two, three = object(), object(), object()
        self.assertIsNone(limits.enter(one, "10.0.0.1"))
        error = limits.enter(two, "10.0.0.1")
        assert error is not None
        self.assertEqual(error.code, 503)
        self.assertIsNone(limits.enter(three, "10.0.0.2"))
        limits.leave(one)
        self.assertIsNone(limits.enter(two, "10.0.0.1"))

    def test_leave_twice(self) -> None:
        """Leaving twice does not drive counts negative."""
        limits = ConnectionLimits(max_per_ip=1)
        conn = object()
        limits.enter(conn, "h")
        limits.leave(conn)
        limits.leave(conn)
        self.assertEqual(limits.open, 0)
        self.assertIsNone(limits.enter(object(), "h"))

    def test_per_ip_counts_handshakes_only(self) -> None:
        """A connection past its handshake frees its address's slot but stays in the total."""
        limits = ConnectionLimits(max_per_ip=2)
        first, second, third = object(), object(), object()
        self.assertIsNone(limits.enter(first, "10.0.0.1"))
        self.assertIsNone(limits.enter(second, "10.0.0.1"))
        self.assertIsNotNone(limits.enter(third, "10.0.0.1"))
        limits.handshake_done(first)
        self.assertEqual(limits.handshaking("10.0.0.1"), 1)
        self.assertIsNone(limits.enter(third, "10.0.0.1"))
        self.assertEqual(limits.open, 3)
        self.assertEqual(limits.handshaking("10.0.0.1"), 2)

    def test_total_counts_everyone(self) -> None:
        """max_connections counts connections past their handshake too."""
        limits = ConnectionLimits(max_connections=2, max_per_ip=2)
        first, second = object(), object()
        self.assertIsNone(limits.enter(first, "h"))
        limits.handshake_done(first)
        self.assertIsNone(limits.enter(second, "h"))
        limits.handshake_done(second)
        error = limits.enter(object(), "h")
        assert error is not None
        self.assertEqual(error.code, 503)

    def test_leave_after_handshake(self) -> None:
        """handshake_done twice, then leave: every count is back to zero, none negative."""
        limits = ConnectionLimits(max_per_ip=1)
        conn, other = object(), object()
        limits.enter(conn, "h")
        limits.enter(other, "h2")
        limits.handshake_done(conn)
        limits.handshake_done(conn)
        limits.leave(conn)
        limits.leave(other)
        limits.handshake_done(other)
        self.assertEqual(limits.open, 0)
        self.assertEqual((limits.handshaking("h"), limits.handshaking("h2")), (0, 0))
        self.assertEqual(dict(limits._per_host), {})

    def test_refusals_say_when_to_retry(self) -> None:
        """Both 503s end with the retry hint, in seconds."""
        limits = ConnectionLimits(max_connections=2, max_per_ip=1, retry_after=3)
        limits.enter(object(), "h")
        per_ip = limits.enter(object(), "h")
        limits.enter(object(), "h2")
        total = limits.enter(object(), "h3")
        assert per_ip is not None and total is not None
        self.assertEqual(per_ip.reason, "too many connections from your address; retry in 3 s")
        self.assertEqual(parse_retry_hint(total.reason), 3.0)


class MappedAddressTests(unittest.TestCase):
    def test_limits_count_mapped_as_ipv4(self) -> None:
        """A v4 client seen as ::ffff:a.b.c.d on a dual-stack port counts under a.b.c.d."""
        limits = ConnectionLimits(max_per_ip=2)
        self.assertIsNone(limits.enter(object(), "192.0.2.7"))
        self.assertIsNone(limits.enter(object(), "::ffff:192.0.2.7"))
        refused = limits.enter(object(), "::FFFF:192.0.2.7")
        self.assertIsNotNone(refused)
        self.assertEqual(limits.handshaking("192.0.2.7"), 2)
        self.assertIsNone(limits.enter(object(), "2001:db8::1"))

    def test_log_shows_mapped_as_ipv4(self) -> None:
        """The transfer log writes [::ffff:a.b.c.d]:port as a.b.c.d:port."""
        self.assertEqual(describe_peer(("::ffff:127.0.0.1", 4000)), "127.0.0.1:4000")
        self.assertEqual(describe_peer(("::1", 4000)), "[::1]:4000")
        self.assertEqual(describe_peer(("10.0.0.1", 5)), "10.0.0.1:5")
