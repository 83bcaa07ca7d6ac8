"""systemd: socket activation (TCP and the TFTP datagram socket), READY=1/STOPPING=1, the unit.

No systemd runs here: C{systemd-socket-activate} passes sockets exactly as
systemd does (C{LISTEN_FDS}, C{LISTEN_PID}, C{LISTEN_FDNAMES}), and the
test binds the C{NOTIFY_SOCKET} it hands the service.  The unit files of
docs/deploy.md are checked with C{systemd-analyze verify}.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from twisted.internet import reactor
from twisted.python import usage
from twisted.python.systemd import ListenFDs
from twisted.trial import unittest

from filexfer._ports import StartupError
from filexfer._systemd import InheritedPort, inherited_descriptor, notify, parse_inherited
from filexfer.service import Options
from tests.helpers import (
    LOOPBACK,
    PROCESS_TIMEOUT,
    ROOT,
    ServerProcess,
    free_port,
    free_udp_port,
    payload,
    run_filexfer,
    sha256_file,
    twistd_command,
    write_file,
)


class ParseTests(unittest.TestCase):
    def test_index_and_name(self) -> None:
        """systemd:index=N is an index, systemd:name=NAME a FileDescriptorName."""
        self.assertEqual(parse_inherited("systemd:index=1"), 1)
        self.assertEqual(parse_inherited("systemd:name=tftp"), "tftp")

    def test_other_forms_are_refused(self) -> None:
        """Anything else is a ValueError that says the two forms."""
        for bad in ("udp:69", "systemd:", "systemd:index=x", "systemd:index=1:name=a", "1"):
            with self.assertRaisesRegex(ValueError, "systemd:index=N or systemd:name=NAME"):
                parse_inherited(bad)

    def test_options(self) -> None:
        """--tftp-listen is checked at parse time and excludes --tftp-port, --no-tftp, --workers."""
        options = Options()
        options.parseOptions(["--listen", "tcp:0", "--tftp-listen", "systemd:index=1"])
        self.assertEqual(options["tftp-listen"], "systemd:index=1")
        self.assertIsNone(options.tftp_port())
        for extra, complaint in (
            (["--tftp-listen", "udp:69"], "--tftp-listen: not a socket passed by systemd"),
            (["--tftp-listen", "systemd:index=1", "--tftp-port", "69"], "with --tftp-port"),
            (["--tftp-listen", "systemd:index=1", "--no-tftp"], "with --no-tftp"),
            (["--tftp-listen", "systemd:index=1", "--workers", "2"], "with --workers"),
        ):
            with self.assertRaisesRegex(usage.UsageError, complaint):
                Options().parseOptions(["--port", "8000", *extra])


class InheritedTests(unittest.TestCase):
    passed = ListenFDs([3, 4], ("tftp", "tcp"))

    def test_descriptor_by_index_and_name(self) -> None:
        """An index counts from the first passed socket; a name is its FileDescriptorName."""
        self.assertEqual(inherited_descriptor(1, self.passed), 4)
        self.assertEqual(inherited_descriptor("tftp", self.passed), 3)

    def test_missing_sockets_are_explained(self) -> None:
        """No such socket: the message says what systemd did pass, or that it passed none."""
        with self.assertRaisesRegex(LookupError, r"no socket with index 2: it passed 2 \(0=tftp"):
            inherited_descriptor(2, self.passed)
        with self.assertRaisesRegex(LookupError, "no socket with name 'udp'"):
            inherited_descriptor("udp", self.passed)
        with self.assertRaisesRegex(LookupError, "passed no sockets"):
            inherited_descriptor(0, ListenFDs([]))

    def test_a_stream_socket_is_not_taken_for_tftp(self) -> None:
        """A TCP socket where the datagram one was expected is a StartupError; it stays open."""
        stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(stream.close)
        port = InheritedPort(
            reactor, socket.SOCK_DGRAM, 0, None,
            option="--tftp-listen systemd:index=0", passed=ListenFDs([stream.fileno()]),
        )  # fmt: skip
        with self.assertRaisesRegex(StartupError, "^--tftp-listen systemd:index=0: .* datagram"):
            port.bind()
        self.assertEqual(stream.fileno() >= 0, True)  # not closed by the failed bind
        os.fstat(stream.fileno())

    def test_no_sockets_is_a_startup_error(self) -> None:
        """Without LISTEN_FDS the port cannot start; the message names the option."""
        port = InheritedPort(
            reactor, socket.SOCK_DGRAM, "tftp", None,
            option="--tftp-listen systemd:name=tftp", passed=ListenFDs([]),
        )  # fmt: skip
        with self.assertRaisesRegex(StartupError, "systemd:name=tftp: systemd passed no sockets"):
            port.bind()


class NotifyTests(unittest.TestCase):
    def listener(self, address: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.settimeout(10)
        return sock

    def test_sends_one_datagram(self) -> None:
        """The state is one datagram to the path in NOTIFY_SOCKET."""
        path = os.path.join(os.path.abspath(self.mktemp()))
        sock = self.listener(path)
        self.assertTrue(notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=serving")

    def test_abstract_socket(self) -> None:
        """A leading @ names a socket in Linux's abstract namespace."""
        name = f"filexfer-test-{os.getpid()}"
        sock = self.listener("\0" + name)
        self.assertTrue(notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(sock.recv(4096), b"STOPPING=1")

    def test_without_a_service_manager(self) -> None:
        """No NOTIFY_SOCKET: nothing is sent; a socket that is gone is logged, not raised."""
        self.assertFalse(notify("READY=1", {}))
        missing = os.path.join(os.path.abspath(self.mktemp()), "gone")
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": missing}))


# -- systemd-socket-activate ---------------------------------------------------------------

ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.integration
class SocketActivationTests(unittest.TestCase):
    def setUp(self) -> None:
        if ACTIVATE is None:
            raise unittest.SkipTest(
                "systemd-socket-activate is missing (scripts/install-test-tools installs systemd)"
            )
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.root = os.path.join(base, "root")
        self.notifications = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.notifications.close)
        # an abstract name (a path under the test's folder is too long for AF_UNIX)
        self.notify_name = f"@filexfer-test-{os.getpid()}-{id(self)}"
        self.notifications.bind("\0" + self.notify_name[1:])
        self.notifications.settimeout(PROCESS_TIMEOUT)

    def test_tcp_and_tftp_sockets_passed_by_systemd(self) -> None:
        """Sockets bound by systemd-socket-activate (UDP, then TCP) are served: READY=1 once
        both listen, an FX/1 upload and a TFTP upload are stored, SIGTERM sends
        STOPPING=1 and exits 0."""
        assert ACTIVATE is not None
        udp, tcp = free_udp_port(), free_port()
        service = twistd_command(
            "filexfer", "--listen", "systemd:domain=INET:name=tcp",
            "--tftp-listen", "systemd:name=tftp", "--root", self.root,
        )  # fmt: skip
        # -d applies to every socket of one systemd-socket-activate: the UDP one is
        # bound by the first, which passes it on to the second (as systemd would).
        # Each passes only the environment it is told to (-E), as systemd does.
        keep = [f"--setenv={name}" for name in ("PYTHONPATH", "PYTHONUNBUFFERED", "NOTIFY_SOCKET")]
        command = [
            ACTIVATE, "-d", "-l", f"{LOOPBACK}:{udp}", *keep, "--",
            ACTIVATE, "-l", f"{LOOPBACK}:{tcp}", "--fdname=tftp:tcp", *keep, "--",
            *service,
        ]  # fmt: skip
        server = ServerProcess(command, cwd=self.base, env={"NOTIFY_SOCKET": self.notify_name})
        self.addCleanup(server.stop)
        server.log.wait_for(rf"Listening on {re.escape(LOOPBACK)}:{udp} as 3")
        # a stray datagram wakes the first (it only starts its child on traffic);
        # the server ignores it (opcode 5, an ERROR) once it reads the socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:
            wake.sendto(b"\x00\x05\x00\x00\x00", (LOOPBACK, udp))
        self.assertEqual(self.notifications.recv(4096), b"READY=1\nSTATUS=serving")
        server.log.wait_for(
            rf"listening for TFTP on UDP on {re.escape(LOOPBACK)}:{udp}, passed by systemd "
            r"\(--tftp-listen systemd:name=tftp\)"
        )
        server.log.wait_for(rf"listening for TCP on {re.escape(LOOPBACK)}:{tcp}")

        source = write_file(os.path.join(self.base, "a.bin"), payload(300_000, seed=4))
        sent = run_filexfer("send", "--no-progress", source, f"{LOOPBACK}:{tcp}")
        self.assertEqual(sent.returncode, 0, sent.stderr + server.log.text())
        by_tftp = run_filexfer("send", "--no-progress", source, f"tftp://{LOOPBACK}:{udp}/t.bin")
        self.assertEqual(by_tftp.returncode, 0, by_tftp.stderr + server.log.text())
        self.assertEqual(sha256_file(os.path.join(self.root, "a.bin")), sha256_file(source))
        self.assertEqual(sha256_file(os.path.join(self.root, "t.bin")), sha256_file(source))

        server.signal(signal.SIGTERM)
        self.assertEqual(self.notifications.recv(4096), b"STOPPING=1\nSTATUS=draining")
        self.assertEqual(server.wait(30), 0, server.log.text())


# -- the unit files of docs/deploy.md ------------------------------------------------------

DEPLOY = os.path.join(ROOT, "docs", "deploy.md")
UNIT_BLOCK = re.compile(r"^# (?P<name>filexfer[\w.@-]*\.(?:service|socket))\n", re.MULTILINE)
EXEC = "/opt/filexfer/bin/filexfer"
"""Where docs/deploy.md installs the command (a virtual environment)."""


def unit_files() -> dict[str, str]:
    """The ```ini blocks of docs/deploy.md whose first line is C{# NAME.service|socket}."""
    with open(DEPLOY, encoding="utf-8") as handle:
        text = handle.read()
    units = {}
    for block in re.findall(r"^```ini\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        named = UNIT_BLOCK.match(block)
        if named is not None:
            units[named["name"]] = block
    return units


class UnitFileTests(unittest.TestCase):
    def test_units_are_documented(self) -> None:
        """docs/deploy.md has the service and socket units, hardened, Type=notify."""
        units = unit_files()
        self.assertEqual(sorted(units), ["filexfer.service", "filexfer.socket"])
        service = units["filexfer.service"]
        for setting in (
            "Type=notify", "DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
            "StateDirectory=filexfer", "KillMode=mixed", "--grace 30",
            "--listen systemd:domain=INET6:index=0", "--tftp-listen systemd:index=1",
        ):  # fmt: skip
            self.assertIn(setting, service)
        grace = float(re.search(r"--grace (\d+)", service)[1])  # type: ignore[index]
        stop = float(re.search(r"TimeoutStopSec=(\d+)", service)[1])  # type: ignore[index]
        self.assertGreater(stop, grace, "systemd would kill the service during its drain")
        socket_unit = units["filexfer.socket"]
        streams = socket_unit.index("ListenStream=")
        self.assertLess(streams, socket_unit.index("ListenDatagram="), "index 0 must be TCP")

    def test_systemd_analyze_verify(self) -> None:
        """systemd-analyze verify finds nothing to say about the units."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is missing (installed with systemd)")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        for name, text in unit_files().items():
            # the command must exist for verify: the installed one, in place of /opt/...
            text = text.replace(EXEC, f"{sys.executable} -m filexfer")
            write_file(os.path.join(folder, name), text.encode())
        checked = subprocess.run(
            [analyze, "verify", "--man=no", *(os.path.join(folder, n) for n in unit_files())],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=folder,
        )
        said = [line for line in checked.stderr.splitlines() if folder in line]
        self.assertEqual((checked.returncode, said), (0, []), checked.stderr)
        security = subprocess.run(
            [analyze, "security", "--offline=yes", os.path.join(folder, "filexfer.service")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=folder,
        )
        exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
        self.assertIsNotNone(exposure, security.stdout + security.stderr)
        assert exposure is not None
        self.assertLessEqual(float(exposure[1]), 2.0, security.stdout)
