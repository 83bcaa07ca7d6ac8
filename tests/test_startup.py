"""Start-up with real processes: mistakes are one line, --port is dual-stack, the log is plain.

Every mistake is tried with C{filexfer serve} and with C{twistd -n
filexfer} (and a busy port with the daemonised C{twistd filexfer} too):
one line on stderr naming the option and the problem, a non-zero status,
no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.trial import unittest

from filexfer.service import Options
from tests.helpers import (
    LOOPBACK,
    PROCESS_TIMEOUT,
    ServerProcess,
    child_env,
    free_port,
    mount_tmpfs,
    run_filexfer,
    twistd_command,
    write_file,
)


def run_twistd(*args: str, cwd: str, daemon: bool = False) -> subprocess.CompletedProcess[str]:
    """C{twistd [-n] --pidfile= ARGS} to completion, bounded in time."""
    command = twistd_command(*args)
    if daemon:
        command.remove("-n")
        command[command.index("--pidfile=")] = f"--pidfile={os.path.join(cwd, 'fx.pid')}"
        command.insert(command.index("filexfer"), f"--logfile={os.path.join(cwd, 'fx.log')}")
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        env=child_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def busy_tcp_port() -> socket.socket:
    """A listening IPv4 socket on a free port (close it when done)."""
    sock = socket.socket()
    sock.bind(("", 0))
    sock.listen()
    return sock


def busy_udp_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("", 0))
    return sock


class OneLineMistakesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    def assertOneLine(
        self, result: subprocess.CompletedProcess[str], *needles: str, who: str = ""
    ) -> None:
        """Non-zero status, one line on stderr holding every needle, no traceback."""
        context = f"{who}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        self.assertNotEqual(result.returncode, 0, context)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, context)
        for needle in needles:
            self.assertIn(needle, lines[0], context)
        self.assertNotIn("Traceback", result.stdout + result.stderr, context)

    def both(self, *args: str, needles: tuple[str, ...], daemon: bool = False) -> None:
        """C{filexfer serve ARGS} and C{twistd -n filexfer ARGS} fail in one line."""
        self.assertOneLine(run_filexfer("serve", *args, cwd=self.base), *needles, who="serve")
        twistd = run_twistd("filexfer", *args, cwd=self.base)
        self.assertOneLine(twistd, *needles, who="twistd -n")
        if daemon:
            daemonised = run_twistd("filexfer", *args, cwd=self.base, daemon=True)
            self.assertOneLine(daemonised, *needles, who="twistd (daemon)")
            self.assertNotIn("b'", daemonised.stderr)

    def test_root_is_a_file(self) -> None:
        """--root naming a file: not a FileExistsError traceback."""
        path = write_file(os.path.join(self.base, "afile"), b"x")
        port = str(free_port())
        self.both("--root", path, "--port", port, needles=("--root", "not a directory"))
        below = os.path.join(path, "sub")
        self.both("--root", below, "--port", port, needles=("--root", "not a directory"))

    def test_root_not_writable(self) -> None:
        """A root on a read-only file system: not a PermissionError/OSError traceback."""
        mount = os.path.join(self.base, "ro")
        os.makedirs(mount)
        why_not = mount_tmpfs(self, mount, "ro,size=1m")
        if why_not is not None:
            raise unittest.SkipTest(f"cannot mount a read-only tmpfs: {why_not}")
        port = str(free_port())
        for root in (mount, os.path.join(mount, "new")):
            self.both("--root", root, "--port", port, needles=("--root", "cannot store there"))

    def test_bad_port_values(self) -> None:
        """--port 70000, --port abc and friends name the option."""
        for args, needle in [
            (("--port", "70000"), "--port"),
            (("--port", "abc"), "--port"),
            (("--tftp-port", "0"), "--tftp-port"),
            (("--max-size", "lots"), "--max-size"),
            (("--idle-timeout", "nan"), "--idle-timeout"),
            (("--on-conflict", "clobber"), "--on-conflict"),
            (("--allow", "not-a-net"), "--allow"),
            (("--listen", "bogus:1"), "--listen"),
            (("--token-file", "/no/such/token"), "--token-file"),
        ]:
            self.both(*args, "--root", os.path.join(self.base, "r"), needles=(needle,))

    def test_busy_tcp_port(self) -> None:
        """A busy TCP port: one line under serve, twistd -n and the daemonised twistd."""
        with busy_tcp_port() as busy:
            port = str(busy.getsockname()[1])
            root = os.path.join(self.base, "r")
            self.both(
                "--port", port, "--root", root,
                needles=(f"--port {port}", "TCP", "in use"), daemon=True,
            )  # fmt: skip
            self.both(
                "--listen", f"tcp:{port}", "--no-tftp", "--root", root,
                needles=(f"--listen tcp:{port}", "in use"),
            )  # fmt: skip

    def test_busy_udp_port(self) -> None:
        """A busy UDP port says it is UDP, for TFTP, and which option chose it."""
        with busy_udp_port() as busy:
            port = str(busy.getsockname()[1])
            root = os.path.join(self.base, "r")
            tcp = str(free_port())
            self.both(
                "--port", tcp, "--tftp-port", port, "--root", root,
                needles=(f"--tftp-port {port}", "TFTP", "UDP", "in use"), daemon=True,
            )  # fmt: skip


class DualStackTests(unittest.TestCase):
    def setUp(self) -> None:
        if not socket.has_ipv6:
            raise unittest.SkipTest("no IPv6 here")
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.root = os.path.join(self.base, "root")
        self.source = write_file(os.path.join(self.base, "image.bin"), b"x" * 5000)

    def serve(self, *args: str, twistd: bool = False) -> ServerProcess:
        if twistd:
            command = twistd_command("filexfer", "--root", self.root, *args)
        else:
            command = [sys.executable, "-m", "filexfer", "serve", "--root", self.root, *args]
        server = ServerProcess(command, cwd=self.base)
        self.addCleanup(server.stop)
        server.log.wait_for(r"listening for TCP on \[::\]:\d+ \(IPv4 and IPv6\)")
        return server

    def send(self, destination: str) -> None:
        result = run_filexfer("send", "--no-progress", self.source, destination)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_port_serves_ipv4_and_ipv6(self) -> None:
        """--port: the README's '[::1]:PORT' and 127.0.0.1 both reach TCP and TFTP."""
        port = free_port()
        server = self.serve("--port", str(port))
        server.log.wait_for(rf"listening for TFTP on UDP on \[::\]:{port} \(IPv4 and IPv6\)")
        self.send(f"[::1]:{port}/six/")
        self.send(f"{LOOPBACK}:{port}/four/")
        self.send(f"tftp://[::1]:{port}/tftp6.bin")
        self.send(f"tftp://{LOOPBACK}:{port}/tftp4.bin")
        self.assertEqual(
            sorted(os.listdir(self.root)),
            [".filexfer", "four", "six", "tftp4.bin", "tftp6.bin"],
        )
        server.log.wait_for(r"fx/1 127\.0\.0\.1:\d+ 'four/image.bin'")  # not [::ffff:127.0.0.1]
        self.assertEqual(server.log.count(r"::ffff:"), 0, server.log.text())

    def test_listen_tcp6_beside_port(self) -> None:
        """--listen tcp6:P beside --port P is not 'address in use': --port serves it already."""
        port = free_port()
        server = self.serve("--port", str(port), "--listen", f"tcp6:{port}", twistd=True)
        server.log.wait_for(rf"--listen tcp6:{port}: already served by --port {port}")
        self.send(f"[::1]:{port}/six/")

    def test_startup_log(self) -> None:
        """The start-up log names the root and every address, without object reprs."""
        port = free_port()
        server = self.serve("--port", str(port))
        server.log.wait_for(rf"storing into {self.root}$")
        server.log.wait_for(rf"listening for TFTP on UDP on \[::\]:{port}")
        self.send(f"{LOOPBACK}:{port}/a/")
        server.log.wait_for(r"stored as 'a/image.bin'")
        self.assertNotIn(" object at 0x", server.log.text())
        self.assertNotIn("Starting factory", server.log.text())


class TokenAndTFTPTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.root = os.path.join(self.base, "root")
        self.source = write_file(os.path.join(self.base, "f.bin"), b"y" * 3000)

    def serve(self, *args: str) -> tuple[ServerProcess, int]:
        port = free_port()
        command = [sys.executable, "-m", "filexfer", "serve", "--root", self.root]
        server = ServerProcess([*command, "--port", str(port), *args], cwd=self.base)
        self.addCleanup(server.stop)
        server.log.wait_for(r"listening for TFTP on UDP")
        return server, port

    def test_token_refuses_tftp_writes_and_warns(self) -> None:
        """With --token, a TFTP upload is refused and start-up says why."""
        server, port = self.serve("--token", "s3cret")
        server.log.wait_for(r"--token is set and TFTP cannot carry it: TFTP uploads are refused")
        server.log.wait_for(r"TFTP downloads need none")
        result = run_filexfer("send", "--no-progress", self.source, f"tftp://{LOOPBACK}:{port}/")
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.root, "f.bin")))

    def test_token_with_explicit_tftp_writes(self) -> None:
        """--tftp-allow-write-without-token accepts TFTP uploads, with a warning."""
        server, port = self.serve("--token", "s3cret", "--tftp-allow-write-without-token")
        server.log.wait_for(r"anyone who reaches UDP port \d+ may upload")
        result = run_filexfer("send", "--no-progress", self.source, f"tftp://{LOOPBACK}:{port}/")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(os.path.exists(os.path.join(self.root, "f.bin")))


class HelpTests(unittest.TestCase):
    def test_examples_on_their_own_lines(self) -> None:
        """serve --help shows each example on a line of its own."""
        text = str(Options())
        lines = text.splitlines()
        examples = [line for line in lines if line.strip().startswith(("twistd -n", "filexfer "))]
        self.assertGreaterEqual(len(examples), 3, text)
        for line in examples:
            self.assertEqual(line.count("twistd -n"), 1 if "twistd" in line else 0, text)
        result = run_filexfer("serve", "--help")
        self.assertIn("\n  twistd -n --pidfile= filexfer --port 8000", result.stdout)
        self.assertIn("--tftp-allow-write-without-token", result.stdout)
