"""tftpd-hpa remap rules (in.tftpd --map-file): the file format, the flags, the bounds."""

from __future__ import annotations

import itertools

from twisted.trial import unittest

from filexfer.tftp._remap import (
    RemapGaveUp,
    RemapRefused,
    RemapRules,
    RemapSyntaxError,
    address_hex,
    load_rules,
    parse_rules,
)

# tftp-hpa's tftpd/sample.rules, the example its manual page's FILENAME
# REMAPPING section describes (flags r g i e a, \0, escaped \\ and \#).
SAMPLE_RULES = r"""
#
# Sample rule file for the -m (remapping option)
#
ri	^[a-z]:				# Remove "drive letters"
rg	\\		/		# Convert backslashes to slashes
rg	\#		@		# Convert hash marks to @ signs
rg	/../		/..no../	# Convert /../ to /..no../
e	^ok/				# These are always ok
r	^[^/]		/\0		# Convert non-absolute filenames
a	/\.				# Reject requests for hidden files
"""


def _map(rules: RemapRules, name: str, kind: str = "read", client: str = "192.0.2.169") -> str:
    return rules.apply(name, kind=kind, client=client).name  # type: ignore[arg-type]


class SampleRulesTests(unittest.TestCase):
    """The sample rule file that ships with tftp-hpa behaves as its comments say."""

    def setUp(self) -> None:
        self.rules = parse_rules(SAMPLE_RULES)

    def test_drive_letter_and_backslashes(self) -> None:
        """C:\\boot\\pxelinux.0 (a Windows client) becomes /boot/pxelinux.0."""
        self.assertEqual(_map(self.rules, "C:\\boot\\pxelinux.0"), "/boot/pxelinux.0")

    def test_hash_marks(self) -> None:
        """'#' (escaped as \\# in the rule) becomes '@'."""
        self.assertEqual(_map(self.rules, "/a#b#c"), "/a@b@c")

    def test_dot_dot(self) -> None:
        """/../ is defused, and the result is then refused as hidden (/.)."""
        with self.assertRaises(RemapRefused) as caught:
            _map(self.rules, "/x/../etc/passwd")
        self.assertEqual(caught.exception.line, 11)

    def test_e_ends_processing(self) -> None:
        """ok/ names stop at the e rule: not made absolute, not refused."""
        self.assertEqual(_map(self.rules, "ok/.hidden"), "ok/.hidden")

    def test_relative_made_absolute(self) -> None:
        """r ^[^/] /\\0 puts a slash in front."""
        self.assertEqual(_map(self.rules, "pxelinux.cfg/default"), "/pxelinux.cfg/default")

    def test_hidden_refused(self) -> None:
        """a /\\. refuses hidden files, with the default message."""
        with self.assertRaises(RemapRefused) as caught:
            _map(self.rules, "/.ssh/id_rsa")
        self.assertIn("access denied", caught.exception.message)

    def test_which_lines_changed_it(self) -> None:
        """The result names the lines that rewrote the name (for --tftp-remap-test)."""
        result = self.rules.apply("C:\\x", kind="read", client="192.0.2.1")
        self.assertEqual(result.lines, (5, 6))


class FlagTests(unittest.TestCase):
    """Each flag of the manual page."""

    def test_i_case_insensitive(self) -> None:
        """i: the match ignores case."""
        rules = parse_rules("ri ^pxelinux boot/pxelinux\n")
        self.assertEqual(_map(rules, "PXELinux.0"), "boot/pxelinux.0")
        self.assertEqual(_map(parse_rules("r ^pxelinux boot\n"), "PXELinux.0"), "PXELinux.0")

    def test_r_without_g_replaces_once(self) -> None:
        """r alone replaces the first match only; rg every one."""
        self.assertEqual(_map(parse_rules("r a b\n"), "aaa"), "baa")
        self.assertEqual(_map(parse_rules("rg a b\n"), "aaa"), "bbb")

    def test_s_restarts(self) -> None:
        """s: after a match, processing starts again from the first rule."""
        rules = parse_rules("r ^x y\nrs ^a x\n")
        # a -> x (line 2), restart: x -> y (line 1), line 2 no longer matches
        self.assertEqual(_map(rules, "abc"), "ybc")

    def test_G_and_P(self) -> None:
        """G rules apply to reads only, P rules to writes only."""
        rules = parse_rules("rG ^ get/\nrP ^ put/\n")
        self.assertEqual(_map(rules, "f", kind="read"), "get/f")
        self.assertEqual(_map(rules, "f", kind="write"), "put/f")

    def test_4_and_6(self) -> None:
        """4 and 6 rules apply to IPv4 or IPv6 clients; mapped addresses are IPv4."""
        rules = parse_rules("r4 ^ v4/\nr6 ^ v6/\n")
        self.assertEqual(_map(rules, "f", client="192.0.2.1"), "v4/f")
        self.assertEqual(_map(rules, "f", client="::ffff:192.0.2.1"), "v4/f")
        self.assertEqual(_map(rules, "f", client="2001:db8::1"), "v6/f")

    def test_inverse(self) -> None:
        """~ acts when the regex does not match: refuse everything outside boot/."""
        rules = parse_rules("a~ ^boot/ only\\ boot/\\ is\\ served\n")
        self.assertEqual(_map(rules, "boot/x"), "boot/x")
        with self.assertRaises(RemapRefused) as caught:
            _map(rules, "etc/x")
        self.assertEqual(caught.exception.message, "only boot/ is served")

    def test_a_message_uses_groups(self) -> None:
        """The replacement of an a rule is the refusal's message, with \\1."""
        rules = parse_rules(r"a ^secret/(.*) no\ \1" + "\n")
        with self.assertRaises(RemapRefused) as caught:
            _map(rules, "secret/key")
        self.assertEqual(caught.exception.message, "no key")


class ReplacementTests(unittest.TestCase):
    """The escapes of a replacement pattern."""

    def test_client_address(self) -> None:
        """\\i is the client's address, \\x the same in hexadecimal (manual's examples)."""
        rules = parse_rules(r"r ^ \i/" + "\n" + r"r ^ \x-" + "\n")
        self.assertEqual(_map(rules, "cfg", client="192.0.2.169"), "C00002A9-192.0.2.169/cfg")
        self.assertEqual(address_hex("2001:db8::1"), "20010DB8000000000000000000000001")
        self.assertEqual(
            _map(rules, "c", client="2001:db8::1"), "20010DB8" + "0" * 23 + "1-2001:db8::1/c"
        )

    def test_groups_and_whole_match(self) -> None:
        """\\0 is the whole match, \\1-\\9 the groups; an unmatched group is empty."""
        rules = parse_rules(r"r ^([a-z]+)-([0-9]+)(x)? \2_\1[\0]\3" + "\n")
        self.assertEqual(_map(rules, "host-42.cfg"), "42_host[host-42].cfg")

    def test_case_changes(self) -> None:
        """\\U and \\L change the case of what follows, \\E stops it."""
        rules = parse_rules(r"r ^(mac)-([a-f0-9]+) \U\1\E-\2\L-X" + "\n")
        self.assertEqual(_map(rules, "mac-ab12"), "MAC-ab12-x")

    def test_escaped_space_backslash_hash(self) -> None:
        """\\<space>, \\\\ and \\# are literal in a replacement."""
        rules = parse_rules(r"r ^x a\ b\\c\#d" + "\n")
        self.assertEqual(_map(rules, "x"), "a b\\c#d")

    def test_posix_leftmost_longest(self) -> None:
        """Alternatives match the longest, as POSIX regexec does (Python's re takes the first)."""
        self.assertEqual(_map(parse_rules("r (a|ab) X\n"), "abc"), "Xc")


class SyntaxErrorTests(unittest.TestCase):
    """A bad file is refused when read, with the line number."""

    def assertLine(self, text: str, line: int, words: str) -> None:
        with self.assertRaises(RemapSyntaxError) as caught:
            parse_rules(text)
        self.assertEqual(caught.exception.line, line)
        self.assertIn(f"line {line}:", str(caught.exception))
        self.assertIn(words, str(caught.exception))

    def test_unknown_flag(self) -> None:
        """An unknown flag."""
        self.assertLine("# ok\nr a b\nrq a b\n", 3, "unknown flag 'q'")

    def test_bad_regex(self) -> None:
        """A regex that does not compile."""
        self.assertLine("\n\nr (unclosed x\n", 3, "bad regular expression")

    def test_no_regex(self) -> None:
        """Flags and nothing else."""
        self.assertLine("r\n", 1, "no regular expression")

    def test_bad_combination(self) -> None:
        """Flags tftpd-hpa refuses together (r with ~, a with s, ...)."""
        self.assertLine("r~ a b\n", 1, "r and ~")
        self.assertLine("as a\n", 1, "a and s")

    def test_missing_group(self) -> None:
        """\\2 in a replacement of a regex with one group."""
        self.assertLine(r"r (a) \2" + "\n", 1, "\\2")

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 names the line of the first bad byte."""
        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(b"r a b\n# fine\nr \xff c\n")
        with self.assertRaises(RemapSyntaxError) as caught:
            load_rules(path)
        self.assertEqual(caught.exception.line, 3)

    def test_comments_and_blank_lines(self) -> None:
        """Comments (also after a rule) and blank lines are not rules."""
        rules = parse_rules("# c\n\n   \nr a b # comment\n")
        self.assertEqual(len(rules.rules), 1)
        self.assertEqual(rules.rules[0].line, 4)


class BoundsTests(unittest.TestCase):
    """Rules that would not end, or a regex that would run for hours, give up quickly."""

    def test_steps(self) -> None:
        """rg that always matches (tftpd-hpa's deadman case) gives up after max_steps."""
        rules = parse_rules("rg a a\n")
        with self.assertRaises(RemapGaveUp) as caught:
            _map(rules, "a")
        self.assertIn("1024 steps", str(caught.exception))

    def test_restart_loop(self) -> None:
        """s rules that restart each other forever give up too."""
        rules = parse_rules("rs ^a b\nrs ^b a\n")
        with self.assertRaises(RemapGaveUp):
            _map(rules, "a")

    def test_growing_name(self) -> None:
        """A rule that doubles the name stops at MAX_NAME characters, not at memory's end."""
        rules = parse_rules(r"rg ^(.+)$ \1\1" + "\n")
        with self.assertRaises(RemapGaveUp) as caught:
            _map(rules, "ab")
        self.assertIn("longer than 4096", str(caught.exception))

    def test_long_input(self) -> None:
        """A name longer than MAX_NAME is not given to the rules."""
        with self.assertRaises(RemapGaveUp):
            _map(parse_rules("r a b\n"), "a" * 5000)

    def test_slow_regex(self) -> None:
        """(a|aa)+$ over 40 a's and a '!' (hours of backtracking) stops at the time budget."""
        rules = parse_rules("r (a|aa)+$ x\n")
        with self.assertRaises(RemapGaveUp) as caught:
            _map(rules, "a" * 40 + "!")
        self.assertIn("line 1", str(caught.exception))

    def test_budget_is_for_the_whole_name(self) -> None:
        """Once the budget is spent, the next rule is not run: the clock is consulted per match."""
        ticks = itertools.count(0, 0.06)
        rules = parse_rules("r a b\nr b c\nr c d\n")
        rules = RemapRules(rules.rules, clock=lambda: next(ticks))
        with self.assertRaises(RemapGaveUp) as caught:
            _map(rules, "a")
        self.assertIn("took longer than 0.1s", str(caught.exception))
