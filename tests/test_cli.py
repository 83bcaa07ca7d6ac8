"""The C{filexfer} command: argument parsing, file plans, messages, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys

from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer.cli import (
    Destination,
    ProgressBars,
    Sent,
    Transport,
    UserError,
    _build_parser,
    _needs_tls,
    _tftp_options,
    describe_failure,
    files_to_send,
    parse_command_line,
    parse_destination,
    send_all,
)
from filexfer.tcp.sender import SendError, ServerRefused

from .helpers import ROOT, child_env, free_port, run_filexfer, twistd_command, write_file


class ParseDestinationTests(unittest.TestCase):
    def test_host_port(self) -> None:
        """C{HOST:PORT} is TCP with no remote path."""
        self.assertEqual(
            parse_destination("127.0.0.1:8000"), Destination("tcp", "127.0.0.1", 8000, "")
        )
        self.assertEqual(
            parse_destination("example.org:1"), Destination("tcp", "example.org", 1, "")
        )

    def test_remote_dir(self) -> None:
        """C{HOST:PORT/dir} carries the remote directory."""
        self.assertEqual(
            parse_destination("host:9000/hosts/web1"),
            Destination("tcp", "host", 9000, "hosts/web1"),
        )
        self.assertEqual(parse_destination("host:9000/d/"), Destination("tcp", "host", 9000, "d/"))

    def test_ipv6(self) -> None:
        """C{[::1]:PORT} is an IPv6 address."""
        self.assertEqual(parse_destination("[::1]:8000"), Destination("tcp", "::1", 8000, ""))
        self.assertEqual(
            parse_destination("[fe80::1]:80/x"), Destination("tcp", "fe80::1", 80, "x")
        )

    def test_tftp(self) -> None:
        """C{tftp://host:port/name}; without a port TFTP's 69 is used."""
        self.assertEqual(
            parse_destination("tftp://10.0.0.1:6969/boot/pxe.0"),
            Destination("tftp", "10.0.0.1", 6969, "boot/pxe.0"),
        )
        self.assertEqual(
            parse_destination("tftp://host/name"), Destination("tftp", "host", 69, "name")
        )
        self.assertEqual(parse_destination("tftp://[::1]/n"), Destination("tftp", "::1", 69, "n"))

    def test_tftp_url_decoded(self) -> None:
        """A tftp:// name is percent-decoded and ;mode= is the mode (RFC 3617), as curl reads it."""
        self.assertEqual(
            parse_destination("tftp://h:6969/my%20file.txt"),
            Destination("tftp", "h", 6969, "my file.txt"),
        )
        self.assertEqual(
            parse_destination("tftp://h:6969/mode.txt;mode=netascii"),
            Destination("tftp", "h", 6969, "mode.txt", "netascii"),
        )
        self.assertEqual(parse_destination("tftp://h//boot.cfg").path, "/boot.cfg")

    def test_tftp_url_refused_is_usage(self) -> None:
        """A tftp:// URL the parser refuses is a usage error (status 2) with its reason."""
        for text, reason in (("tftp://h/x;mode=mail", "mode=mail"), ("tftp://h/a%00", "NUL")):
            error = self.assertRaises(UserError, parse_destination, text)
            self.assertEqual(error.status, 2, text)
            self.assertIn(reason, str(error))

    def test_mode(self) -> None:
        """--mode, else the URL's ;mode=, else octet; the two disagreeing is a usage error."""
        for argv, url, mode in (
            ([], "tftp://h/f", "octet"),
            ([], "tftp://h/f;mode=netascii", "netascii"),
            (["--mode", "netascii"], "tftp://h/f", "netascii"),
            (["--mode", "netascii"], "tftp://h/f;mode=netascii", "netascii"),
        ):
            for command in (["get", url], ["send", "f", url]):
                args = parse_command_line([*command, *argv])
                self.assertEqual(_tftp_options(args, parse_destination(url))["mode"], mode)
        args = parse_command_line(["get", "tftp://h/f;mode=octet", "--mode", "netascii"])
        error = self.assertRaises(
            UserError, _tftp_options, args, parse_destination("tftp://h/f;mode=octet")
        )
        self.assertEqual(error.status, 2)

    def test_url_host(self) -> None:
        """Printed tftp:// URLs bracket an IPv6 host (RFC 3986), as the user typed it."""
        from filexfer._log import format_address

        self.assertEqual(format_address("::1", 69), "[::1]:69")
        self.assertEqual(format_address("10.0.0.1", 69), "10.0.0.1:69")
        self.assertEqual(format_address("host", 69), "host:69")

    def test_bad(self) -> None:
        """Bad destinations are usage errors (status 2) with the text in the message."""
        for text in [
            "host",
            "host:",
            ":80",
            "host:port",
            "host:0",
            "host:70000",
            "ftp://h:1/x",
            "",
            "::1:80",
        ]:
            error = self.assertRaises(UserError, parse_destination, text)
            self.assertEqual(error.status, 2, text)


class DestinationPortTests(unittest.TestCase):
    def test_port_digits_bounded(self) -> None:
        """A port of 5,000 digits, or in other scripts' digits, is a usage error, not a crash."""
        for text in [
            "host:" + "9" * 5000,
            "tftp://host:" + "8" * 5000 + "/x",
            "host:\u0668\u0660",  # Arabic-Indic "80", which int() would take
            "host:000008000",
        ]:
            error = self.assertRaises(UserError, parse_destination, text)
            self.assertEqual(error.status, 2)


class FilesToSendTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        write_file(os.path.join(self.base, "tree", "a.txt"), b"a")
        write_file(os.path.join(self.base, "tree", "sub", "b.txt"), b"b")
        write_file(os.path.join(self.base, "tree", "sub", "deeper", "c.txt"), b"c")
        write_file(os.path.join(self.base, "single.bin"), b"s")

    def test_single_file(self) -> None:
        """A file is sent under its basename, below the remote directory if any."""
        single = os.path.join(self.base, "single.bin")
        self.assertEqual(list(files_to_send([single], "")), [(single, "single.bin")])
        self.assertEqual(list(files_to_send([single], "/in/box/")), [(single, "in/box/single.bin")])

    def test_directory(self) -> None:
        """A directory is walked; relative paths keep the directory's own name."""
        tree = os.path.join(self.base, "tree")
        plan = list(files_to_send([tree + "/"], "remote"))
        self.assertEqual(
            [remote for _, remote in plan],
            ["remote/tree/a.txt", "remote/tree/sub/b.txt", "remote/tree/sub/deeper/c.txt"],
        )
        for local, remote in plan:
            self.assertTrue(local.endswith(remote.removeprefix("remote/")))

    def test_missing(self) -> None:
        """A missing source is an error (status 1) naming it."""
        missing = os.path.join(self.base, "nope")
        error = self.assertRaises(UserError, list, files_to_send([missing], ""))
        self.assertEqual(error.status, 1)
        self.assertIn("nope", str(error))


class DescribeFailureTests(unittest.TestCase):
    def test_one_liners(self) -> None:
        """Every kind of failure is described in one line without a traceback."""
        cases = [
            (ConnectionRefusedError(), "connection refused"),
            (DNSLookupError("nowhere"), "resolve"),
            (TimeoutError(), "timed out"),
            (ServerRefused(409, "a.txt already exists"), "409 a.txt already exists"),
            (SendError("connection closed before confirming the upload"), "before confirming"),
            (UserError("x: no such file"), "no such file"),
            (RuntimeError("multi\nline\n  text"), "multi line text"),
            (KeyError(), "KeyError"),
        ]
        for error, expected in cases:
            text = describe_failure(Failure(error))
            self.assertIn(expected, text)
            self.assertNotIn("\n", text)
            self.assertNotIn("Traceback", text)


class SendAllTests(unittest.TestCase):
    """The one per-file loop every transport sends through."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.files = [write_file(os.path.join(base, name), b"x" * 3) for name in "abcd"]
        self.plan = [(local, os.path.basename(local)) for local in self.files]
        self.tried: list[str] = []

    def run_plan(
        self, failures: dict[str, Exception], outcome: str = "done"
    ) -> tuple[int, str, str]:
        """Send the plan through a transport that fails the named files; status, out, err."""

        async def send_one(local: str, remote: str, progress: object) -> Sent:
            self.tried.append(remote)
            if remote in failures:
                raise failures[remote]
            return Sent(f"there/{remote}", 3)

        out, err = io.StringIO(), io.StringIO()
        bars = ProgressBars(True, err)  # stderr is no terminal here: no bars
        running = send_all(self.plan, Transport(send_one, outcome), bars, out, err)
        status = self.successResultOf(ensureDeferred(running))
        return status, out.getvalue(), err.getvalue()

    def test_all_sent(self) -> None:
        """Every file sent: one stdout line each with the transport's outcome, status 0."""
        status, out, err = self.run_plan({})
        self.assertEqual(status, 0)
        self.assertEqual(err, "")
        self.assertEqual(
            out.splitlines(),
            [f"{local} -> there/{remote}: 3 bytes done" for local, remote in self.plan],
        )

    def test_no_outcome(self) -> None:
        """A transport without an outcome word ends the line at the byte count."""
        _, out, _ = self.run_plan({})
        self.assertTrue(out.splitlines()[0].endswith("there/a: 3 bytes done"))
        _, out, _ = self.run_plan({}, outcome="")
        self.assertTrue(out.splitlines()[0].endswith("there/a: 3 bytes"))

    def test_refusal_goes_on(self) -> None:
        """A file the server refuses is one stderr line; the others are still sent; status 1."""
        status, out, err = self.run_plan({"b": ServerRefused(409, "b already exists")})
        self.assertEqual(status, 1)
        self.assertEqual(self.tried, ["a", "b", "c", "d"])
        self.assertEqual(err, f"filexfer: {self.files[1]}: server refused: 409 b already exists\n")
        self.assertEqual(len(out.splitlines()), 3)

    def test_connection_failure_stops(self) -> None:
        """After a failure to reach the server (refused, no such host) the rest are not tried."""
        for error in (ConnectionRefusedError(), DNSLookupError("nowhere")):
            self.tried.clear()
            status, out, err = self.run_plan({"b": error})
            self.assertEqual(status, 1)
            self.assertEqual(self.tried, ["a", "b"])
            self.assertEqual(len(out.splitlines()), 1)
            self.assertEqual(len(err.splitlines()), 1)
            self.assertTrue(err.startswith(f"filexfer: {self.files[1]}: "), err)

    def test_vanished_file(self) -> None:
        """A file gone since the plan was made is one line, not a traceback; the rest go on."""
        os.remove(self.files[0])
        status, out, err = self.run_plan({})
        self.assertEqual(status, 1)
        self.assertEqual(self.tried, ["b", "c", "d"])
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn(self.files[0], err)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class ProgressBarsTests(unittest.TestCase):
    def test_bar_on_terminal(self) -> None:
        """On a terminal a file's bar learns a total reported late and is closed at the end."""
        screen = _Terminal()
        with ProgressBars(True, screen).for_file("f.bin", None) as progress:
            progress(512, 1024)
        self.assertIn("f.bin", screen.getvalue())
        self.assertIn("50%", screen.getvalue())

    def test_no_bar(self) -> None:
        """With --no-progress, or when stderr is no terminal, nothing is drawn."""
        for enabled, stream in [(False, _Terminal()), (True, io.StringIO())]:
            with ProgressBars(enabled, stream).for_file("f.bin", 10) as progress:
                progress(5, 10)
            self.assertEqual(stream.getvalue(), "")


class RetryOptionTests(unittest.TestCase):
    def parse(self, *argv: str) -> argparse.Namespace:
        return _build_parser().parse_args(["send", *argv, "f", "host:1"])

    def test_retry_for(self) -> None:
        """--retry-for takes seconds (0 included); send retries for 60 s by default."""
        self.assertEqual(self.parse().retry_for, 60.0)
        self.assertEqual(self.parse("--retry-for", "2.5").retry_for, 2.5)
        self.assertEqual(self.parse("--retry-for", "0").retry_for, 0.0)

    def test_retry_for_mistakes(self) -> None:
        """Negative, infinite or non-numeric --retry-for is a usage error."""
        for value in ("-1", "inf", "nan", "soon"):
            errors = io.StringIO()
            with self.assertRaises(SystemExit) as raised, contextlib.redirect_stderr(errors):
                self.parse("--retry-for", value)
            self.assertEqual(raised.exception.code, 2, value)
            self.assertIn("--retry-for", errors.getvalue())


class ServeCommandLineTests(unittest.TestCase):
    """C{filexfer serve} hands its arguments to the service's Options."""

    def test_options(self) -> None:
        """Every serve argument reaches the Options, in order, for the worker processes too."""
        root = os.path.abspath(self.mktemp())
        argv = ["--listen", "tcp6:0", "--listen=unix:/nowhere/fx.sock", "-r", root, "--no-tftp"]
        args = parse_command_line(["serve", *argv])
        self.assertEqual(args.command, "serve")
        self.assertEqual(args.options["listen"], ["tcp6:0", "unix:/nowhere/fx.sock"])
        self.assertEqual(args.options["root"], root)
        self.assertTrue(args.options["no-tftp"])
        self.assertIsNone(args.options["port"])
        self.assertEqual(args.options.argv, argv)

    def test_mistakes(self) -> None:
        """The Options' complaints, endpoints included, are usage mistakes (status 2)."""
        for argv in (["--bogus"], ["--port", "0"], ["--listen", "nonsense:1"], ["--version=x"]):
            error = self.assertRaises(UserError, parse_command_line, ["serve", *argv])
            self.assertEqual(error.status, 2, argv)
            self.assertTrue(str(error).startswith("serve: "), str(error))

    def test_other_commands_keep_strict_parsing(self) -> None:
        """send and get still reject arguments they do not know (status 2)."""
        errors = io.StringIO()
        with self.assertRaises(SystemExit) as raised, contextlib.redirect_stderr(errors):
            parse_command_line(["send", "f", "host:1", "--listen", "tcp:1"])
        self.assertEqual(raised.exception.code, 2)
        self.assertIn("unrecognized arguments: --listen tcp:1", errors.getvalue())

    def test_help_same_as_twistd(self) -> None:
        """C{filexfer serve --help} and C{twistd filexfer --help} list the same options."""
        ours = run_filexfer("serve", "--help")
        theirs = subprocess.run(
            twistd_command("filexfer", "--help"),
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
            cwd=ROOT,
        )
        self.assertEqual(ours.returncode, 0, ours.stderr)
        self.assertEqual(theirs.returncode, 0, theirs.stderr)
        self.assertTrue(ours.stdout.startswith("Usage: filexfer serve [options]\n"), ours.stdout)
        self.assertEqual(
            ours.stdout.split("\n", 1)[1].split(), theirs.stdout.split("\n", 1)[1].split()
        )
        self.assertEqual(run_filexfer("serve", "-h").stdout, ours.stdout)


class CommandTests(unittest.TestCase):
    """The command run as a real process (bounded in time)."""

    def assertOneLineError(self, stderr: str) -> None:
        self.assertNotIn("Traceback", stderr)
        self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
        self.assertTrue(stderr.startswith("filexfer: "), stderr)

    def test_help(self) -> None:
        """C{filexfer --help} lists the commands and exits 0."""
        result = run_filexfer("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for word in ("send", "get", "serve", "--version"):
            self.assertIn(word, result.stdout)

    def test_send_help(self) -> None:
        """C{filexfer send --help} documents its options and exits 0."""
        result = run_filexfer("send", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for word in ("--plain", "--token", "--no-progress", "DEST", "HOST:PORT", "tftp://"):
            self.assertIn(word, result.stdout)

    def test_serve_help(self) -> None:
        """C{filexfer serve --help} shows the server options and exits 0."""
        result = run_filexfer("serve", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for word in ("--port", "--root", "--listen", "--on-conflict", "--token-file", "--no-tftp"):
            self.assertIn(word, result.stdout)

    def test_usage_mistakes(self) -> None:
        """Usage mistakes exit 2 with one line on stderr and no traceback."""
        single = write_file(os.path.abspath(self.mktemp()), b"x")
        directory = os.path.dirname(single)
        for argv in [
            ("send", single, "not-a-destination"),
            ("send", single, "host:99999"),
            ("send", "--plain", directory, "127.0.0.1:1"),
            ("serve", "--bogus-option"),
            ("serve", "--on-conflict", "clobber"),
            ("serve", "--allow", "not-a-network"),
            ("serve", "--listen", "nonsense:1", "--no-tftp"),
        ]:
            result = run_filexfer(*argv)
            self.assertEqual(result.returncode, 2, (argv, result.stderr))
            self.assertOneLineError(result.stderr)

    def test_argparse_mistakes(self) -> None:
        """Mistakes argparse catches exit 2 with one line pointing at --help, no traceback."""
        for argv in [(), ("send",), ("frobnicate",), ("send", "--nope", "a", "b:1")]:
            result = run_filexfer(*argv)
            self.assertEqual(result.returncode, 2, argv)
            self.assertNotIn("Traceback", result.stderr)
            (line,) = result.stderr.strip().splitlines()
            self.assertIn("--help", line)

    def test_missing_file(self) -> None:
        """A missing file exits 1 with one line naming it."""
        result = run_filexfer("send", "--no-progress", "/nonexistent/file.bin", "127.0.0.1:1")
        self.assertEqual(result.returncode, 1)
        self.assertOneLineError(result.stderr)
        self.assertIn("/nonexistent/file.bin", result.stderr)

    def test_connection_refused(self) -> None:
        """Nothing listening: exit 1, one line saying the connection was refused."""
        single = write_file(os.path.abspath(self.mktemp()), b"x")
        result = run_filexfer("send", "--no-progress", single, f"127.0.0.1:{free_port()}")
        self.assertEqual(result.returncode, 1)
        self.assertOneLineError(result.stderr)
        self.assertIn("connection refused", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_version(self) -> None:
        """C{filexfer --version} prints the version and exits 0."""
        import filexfer

        result = run_filexfer("--version")
        self.assertEqual(result.returncode, 0)
        self.assertIn(filexfer.__version__, result.stdout)


class TLSLibrariesTests(unittest.TestCase):
    """Runs that do not use TLS keep pyOpenSSL (about 13 MiB) out of the process."""

    def test_needs_tls(self) -> None:
        """Of send and get, only send --tls needs the TLS libraries (serve's Options decide)."""
        self.assertFalse(_needs_tls(parse_command_line(["send", "f", "host:1"])))
        self.assertTrue(_needs_tls(parse_command_line(["send", "--tls", "f", "host:1"])))
        self.assertFalse(_needs_tls(parse_command_line(["get", "tftp://host/f"])))

    def test_importing_the_command_loads_no_tls(self) -> None:
        """Importing the command (TCP and TFTP code included) loads neither pyOpenSSL nor TCP."""
        code = (
            "import sys\n"
            "import filexfer.cli, filexfer.tftp.client, filexfer.tftp.server\n"
            "print('OpenSSL' in sys.modules, 'twisted.internet.posixbase' in sys.modules)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=child_env(),
        )
        self.assertEqual(result.stdout.split(), ["False", "False"], result.stderr)

    def test_reactor_without_tls_libraries(self) -> None:
        """Once kept out, the reactor starts without pyOpenSSL and TCP still works."""
        code = (
            "import sys\n"
            "from filexfer._tls import keep_tls_libraries_out\n"
            "keep_tls_libraries_out()\n"
            "from twisted.internet import reactor, tcp\n"
            "print(sys.modules.get('OpenSSL'), hasattr(reactor, 'connectTCP'))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.stdout.split(), ["None", "True"], result.stderr)


class TFTPUsageMistakesTests(unittest.TestCase):
    """Fresh-eyes findings on issue 10: TFTP options out of range are usage mistakes
    (exit 2, one line naming the option), and a host that does not resolve is
    reported as such by get, as by send, not as a local save error."""

    def test_out_of_range_options_exit_2(self) -> None:
        target = self.mktemp()
        for command, extra in (("get", [target]), ("send", [])):
            for option, value in (
                ("--blksize", "0"),
                ("--blksize", "65465"),
                ("--windowsize", "0"),
                ("--timeout", "0"),
                ("--timeout", "-1"),
                ("--timeout", "nan"),
                ("--timeout", "inf"),
            ):
                args = [command, option, value]
                if command == "send":
                    args += [__file__, "tftp://127.0.0.1:9/x"]
                else:
                    args += ["tftp://127.0.0.1:9/x", *extra]
                result = run_filexfer(*args)
                self.assertEqual(result.returncode, 2, (args, result.stderr))
                self.assertIn(option, result.stderr)
                self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)

    def test_get_unresolvable_host(self) -> None:
        local = self.mktemp()
        result = run_filexfer("get", "tftp://no-such-host.invalid:9/x", local)
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot resolve the host name", result.stderr)
        self.assertNotIn("cannot save", result.stderr)
        self.assertFalse(os.path.exists(local))
