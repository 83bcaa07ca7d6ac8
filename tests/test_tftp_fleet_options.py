"""The TFTP fleet options: every mistake is one line at start-up; --tftp-remap-test answers."""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial import unittest

from filexfer.service import Options
from filexfer.tftp._portrange import PortRange
from tests.helpers import run_filexfer, write_file


class OptionTests(unittest.TestCase):
    """Options.parseOptions with the fleet options."""

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--root", self.mktemp(), *args])
        return options

    def refused(self, words: str, *args: str) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*args)
        self.assertIn(words, str(caught.exception))

    def test_remap_error_has_line_number(self) -> None:
        """A rule file with an error is refused when the options are parsed, with its line."""
        rules = write_file(self.mktemp(), b"# rules\nr ^a b\nrx (unclosed\n")
        self.refused(f"--tftp-remap {rules}: line 3: unknown flag 'x'", "--tftp-remap", rules)
        self.refused("cannot read it", "--tftp-remap", "/nonexistent/rules")

    def test_port_range(self) -> None:
        """LOW:HIGH is parsed; a bad one, or one with --tftp-single-port, is refused."""
        options = self.parse("--tftp-port-range", "40000:40099")
        self.assertEqual(options["tftp-port-range-parsed"], PortRange(40000, 40099))
        self.refused("--tftp-port-range: the first port is above", "--tftp-port-range", "9:1")
        self.refused("with --tftp-single-port", "--tftp-port-range", "1:2", "--tftp-single-port")

    def test_quirks(self) -> None:
        """Rules from the command line and a file join; a bad one names itself."""
        path = write_file(self.mktemp(), b"# phones\n10.1.0.0/16 refuse=blksize\n")
        options = self.parse("--tftp-quirks", "10.2.0.0/16 mtu=1400", "--tftp-quirks-file", path)
        self.assertEqual(len(options["tftp-quirks-policy"].quirks), 2)
        self.refused("--tftp-quirks: line 1: 'colour'", "--tftp-quirks", "10.0.0.0/8 colour=red")

    def test_per_client_root_and_sources(self) -> None:
        """ip|mac only; a --tftp-source that does not import is refused at start-up."""
        self.refused("ip or mac", "--tftp-per-client-root", "hostname")
        self.refused("cannot import 'no_such_module'", "--tftp-source", "no_such_module:make")
        self.refused("expected PYTHON.PATH:FACTORY", "--tftp-source", "justaname")
        self.refused("an http:// or https:// URL", "--tftp-http", "ftp://x/")


class RemapTestCommandTests(unittest.TestCase):
    """filexfer serve --tftp-remap FILE --tftp-remap-test NAME: what an operator runs."""

    def test_mapped_and_refused(self) -> None:
        """It prints the result and the lines that made it (0), or the refusal (1)."""
        rules = write_file(
            os.path.abspath(self.mktemp()),
            b"r ^pxelinux.cfg/01-(.*)$ hosts/\\i/\\1\na \\.\\. no\\ dots\n",
        )
        result = run_filexfer(
            "serve", "--tftp-remap", rules, "--tftp-remap-test", "pxelinux.cfg/01-aa",
            "--client", "192.0.2.9", "--root", self.mktemp(),
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout,
            "'pxelinux.cfg/01-aa' from 192.0.2.9 -> 'hosts/192.0.2.9/aa' (rewritten by lines: 1)\n",
        )
        result = run_filexfer(
            "serve", "--tftp-remap", rules, "--tftp-remap-test", "a/../b", "--root", self.mktemp()
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("refused by line 2: no dots", result.stdout)

    def test_bad_file_at_start(self) -> None:
        """serve with a bad rule file exits 2 with one line naming the line; nothing listens."""
        rules = write_file(os.path.abspath(self.mktemp()), b"\n\nr (a b\n")
        result = run_filexfer("serve", "--tftp-remap", rules, "--root", self.mktemp())
        self.assertEqual(result.returncode, 2)
        self.assertIn("line 3: bad regular expression", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertNotIn("listening", result.stdout + result.stderr)
