"""Client quirks by network: the policy's rules and their effect on option negotiation."""

from __future__ import annotations

from twisted.trial import unittest

from filexfer.tftp._packets import ServerCaps, negotiate
from filexfer.tftp._quirks import QuirksPolicy, QuirkSyntaxError, parse_quirk

_ASKED = (("blksize", "8192"), ("tsize", "0"), ("windowsize", "16"), ("timeout", "3"))


class ParseTests(unittest.TestCase):
    """The rule lines."""

    def test_mtu_ipv4_and_ipv6(self) -> None:
        """mtu=1500 gives blksize 1468 on IPv4 (tftpd-hpa's manual) and 1448 on IPv6."""
        self.assertEqual(parse_quirk("10.0.0.0/8 mtu=1500").max_blksize, 1468)  # type: ignore[union-attr]
        self.assertEqual(parse_quirk("2001:db8::/32 mtu=1500").max_blksize, 1448)  # type: ignore[union-attr]

    def test_all_keys(self) -> None:
        """refuse, blksize and windowsize are read; comments are not."""
        quirk = parse_quirk("192.0.2.0/24 refuse=TSIZE,blksize windowsize=1 blksize=512 # old")
        assert quirk is not None
        self.assertEqual(quirk.refuse, frozenset({"tsize", "blksize"}))
        self.assertEqual((quirk.max_blksize, quirk.max_windowsize), (512, 1))
        self.assertIsNone(parse_quirk("   # only a comment"))

    def test_mistakes(self) -> None:
        """Each mistake is named; a policy's message names the line."""
        for line, words in [
            ("10.0.0.0/33 mtu=1500", "not a network"),
            ("10.0.0.0/8", "no settings"),
            ("10.0.0.0/8 mtu=20", "from 40"),
            ("10.0.0.0/8 refuse=rollover", "options are"),
            ("10.0.0.0/8 colour=red", "unknown"),
            ("10.0.0.0/8 mtu=1500 blksize=512", "not both"),
            ("10.0.0.0/8 windowsize=1 windowsize=2", "each key once"),
        ]:
            with self.assertRaises(QuirkSyntaxError) as caught:
                parse_quirk(line)
            self.assertIn(words, str(caught.exception), line)
        with self.assertRaises(QuirkSyntaxError) as caught:
            QuirksPolicy.parse(["# fine", "10.0.0.0/8 blksize=7"])
        self.assertIn("line 2:", str(caught.exception))


class PolicyTests(unittest.TestCase):
    """Which rule a client gets, and what negotiation then grants."""

    def setUp(self) -> None:
        self.policy = QuirksPolicy.parse(
            [
                "10.0.0.0/8 windowsize=4",
                "10.1.0.0/16 refuse=blksize,tsize",
                "10.2.0.0/16 mtu=1400",
            ]
        )

    def test_longest_prefix_wins(self) -> None:
        """10.1.2.3 gets the /16 rule, not the /8 one; outsiders get none."""
        quirk = self.policy.for_client("10.1.2.3")
        assert quirk is not None
        self.assertEqual(quirk.refuse, frozenset({"blksize", "tsize"}))
        self.assertIsNone(self.policy.for_client("192.0.2.1"))
        self.assertIsNone(self.policy.for_client("not an address"))

    def test_mapped_address(self) -> None:
        """A dual-stack socket's ::ffff:10.2.0.9 is the IPv4 client 10.2.0.9."""
        quirk = self.policy.for_client("::ffff:10.2.0.9")
        assert quirk is not None
        self.assertEqual(quirk.max_blksize, 1368)

    def test_refused_options_not_acknowledged(self) -> None:
        """A refused option is left out of the OACK and reported; the others still negotiate."""
        caps = self.policy.caps_for("10.1.0.5", ServerCaps())
        got = negotiate(_ASKED, caps, kind="read", file_size=100)
        self.assertEqual(dict(got.options), {"windowsize": "16", "timeout": "3"})
        self.assertEqual(got.refused, ("blksize", "tsize"))
        self.assertEqual(got.blksize, 512)

    def test_mtu_caps_blksize(self) -> None:
        """mtu=1400 grants at most 1368 bytes a block."""
        got = negotiate(_ASKED, self.policy.caps_for("10.2.3.4", ServerCaps()), kind="read")
        self.assertEqual(got.blksize, 1368)
        self.assertEqual(dict(got.options)["blksize"], "1368")

    def test_caps_never_raise_the_server_s(self) -> None:
        """A rule's cap above the server's own leaves the server's."""
        base = ServerCaps(max_windowsize=2)
        self.assertEqual(self.policy.caps_for("10.9.9.9", base).max_windowsize, 2)
        got = negotiate(_ASKED, self.policy.caps_for("10.9.9.9", ServerCaps()), kind="read")
        self.assertEqual(got.windowsize, 4)

    def test_no_rule_no_change(self) -> None:
        """A client outside every network negotiates under the server's caps."""
        base = ServerCaps()
        self.assertIs(self.policy.caps_for("192.0.2.1", base), base)
