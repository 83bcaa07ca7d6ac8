"""tftp:// URLs (RFC 3617): the one parser both `filexfer get` and `send` use."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from filexfer.tftp import TFTPURL, BadURL, format_tftp_url, parse_tftp_url


class ParseTests(unittest.TestCase):
    def test_percent_decoding(self) -> None:
        """The name is percent-decoded, as curl does: my%20file.txt asks for 'my file.txt'."""
        cases = {
            "tftp://h:6969/my%20file.txt": "my file.txt",
            "tftp://h/d%C3%A9j%C3%A0.cfg": "déjà.cfg",
            "tftp://h/a%2Fb": "a/b",
            "tftp://h/100%25": "100%",
            "tftp://h/x%3Bmode=netascii": "x;mode=netascii",
            "tftp://h/q%3F%23": "q?#",
            "tftp://h/plain/dir/name.bin": "plain/dir/name.bin",
        }
        self.assertEqual({url: parse_tftp_url(url).name for url in cases}, cases)

    def test_mode_parameter(self) -> None:
        """;mode=netascii|octet (any case) is the mode, not part of the name."""
        self.assertEqual(
            parse_tftp_url("tftp://h:1/mode.txt;mode=netascii"),
            TFTPURL("h", 1, "mode.txt", "netascii"),
        )
        self.assertEqual(parse_tftp_url("tftp://h/f;MODE=Octet"), TFTPURL("h", 69, "f", "octet"))
        self.assertEqual(parse_tftp_url("tftp://h/my%20f;mode=netascii").name, "my f")
        self.assertEqual(parse_tftp_url("tftp://h/f").mode, None)

    def test_other_semicolons_stay_in_the_name(self) -> None:
        """A ';' that does not start the mode parameter at the end is part of the name."""
        self.assertEqual(parse_tftp_url("tftp://h/a;b.txt"), TFTPURL("h", 69, "a;b.txt"))
        self.assertEqual(parse_tftp_url("tftp://h/a;mode=octet/b").name, "a;mode=octet/b")

    def test_hosts_and_ports(self) -> None:
        """IPv6 in brackets, names, IPv4; 69 when no port is named; no name is ''."""
        self.assertEqual(parse_tftp_url("tftp://[::1]:6969/n"), TFTPURL("::1", 6969, "n"))
        self.assertEqual(parse_tftp_url("tftp://[fe80::1]/n"), TFTPURL("fe80::1", 69, "n"))
        self.assertEqual(parse_tftp_url("TFTP://host"), TFTPURL("host", 69, ""))
        self.assertEqual(parse_tftp_url("tftp://10.0.0.1:1/"), TFTPURL("10.0.0.1", 1, ""))

    def test_leading_slash_of_the_name(self) -> None:
        """The first / only separates the host: tftp://h//boot.cfg asks for /boot.cfg."""
        self.assertEqual(parse_tftp_url("tftp://h//boot.cfg").name, "/boot.cfg")
        self.assertEqual(parse_tftp_url("tftp://h/%2Fboot.cfg").name, "/boot.cfg")

    def test_refused(self) -> None:
        """Unusable URLs are BadURL with a one-line reason naming what is wrong."""
        cases = {
            "http://h/x": "not a tftp:// URL",
            "tftp:/h/x": "not a tftp:// URL",
            "tftp:///x": "bad host",
            "tftp://h:0/x": "bad port",
            "tftp://h:70000/x": "bad port",
            "tftp://h:" + "9" * 5000 + "/x": "bad host",
            "tftp://h:\u0668\u0660/x": "bad host",
            "tftp://[::1/x": "bad host",
            "tftp://h/x;mode=mail": "unknown ;mode=mail",
            "tftp://h/x;mode=": "unknown ;mode=",
            "tftp://h/x?y": "write it %3F",
            "tftp://h/x#y": "write it %23",
            "tftp://h/%FF": "not UTF-8",
            "tftp://h/a%00b": "NUL",
        }
        for url, reason in cases.items():
            error = self.assertRaises(BadURL, parse_tftp_url, url)
            self.assertIn(reason, str(error), url)
            self.assertNotIn("\n", str(error))


class FormatTests(unittest.TestCase):
    def test_encodes_what_needs_it(self) -> None:
        """A printed URL percent-encodes spaces, %, ;, ?, # and non-ASCII; / stays."""
        self.assertEqual(
            format_tftp_url("h", 69, "my file;x?#100%/déjà"),
            "tftp://h:69/my%20file%3Bx%3F%23100%25/d%C3%A9j%C3%A0",
        )

    def test_mode_and_ipv6(self) -> None:
        """netascii is written as ;mode=netascii (octet is the default); IPv6 in brackets."""
        self.assertEqual(
            format_tftp_url("::1", 6969, "a.txt", "netascii"),
            "tftp://[::1]:6969/a.txt;mode=netascii",
        )
        self.assertEqual(format_tftp_url("::1", 6969, "a.txt", "octet"), "tftp://[::1]:6969/a.txt")
        self.assertEqual(str(TFTPURL("h", 7, "/boot.cfg")), "tftp://h:7//boot.cfg")

    @given(
        name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")),
        mode=st.sampled_from([None, "netascii"]),
    )
    def test_round_trip(self, name: str, mode: str | None) -> None:
        """Any name (and mode) formatted and parsed back is the same name."""
        self.assertEqual(
            parse_tftp_url(format_tftp_url("host", 69, name, mode)), TFTPURL("host", 69, name, mode)
        )
