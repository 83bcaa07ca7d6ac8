"""Graceful drain (filexfer._drain): SIGTERM stops accepting, lets transfers end, cuts the rest.

The drain's logic runs on a L{Clock} with fake intakes; the integration
tests hold real uploads (a raw FX/1 sender and a raw TFTP reader that the
test drives block by block) in a real C{twistd filexfer} and C{--workers}.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock
from twisted.trial import unittest

from filexfer._drain import POLL, Drain, DrainReport, GracefulService
from filexfer.service import Options
from filexfer.tcp import _wire
from tests.helpers import (
    LOOPBACK,
    ServerProcess,
    free_port,
    free_udp_port,
    payload,
    read_line,
    run_filexfer,
    sha256_bytes,
    start_serve,
    start_twistd,
    start_twistd_tftp,
    state_files,
    twistd_command,
    upload_holding,
    write_file,
)

# -- the drain on a clock ----------------------------------------------------------------


class FakeIntake:
    """An intake with C{running} transfers, recording what the drain asked of it."""

    def __init__(self, running: int) -> None:
        self.running = running
        self.accepting = True
        self.cuts = 0

    def stop_accepting(self) -> None:
        self.accepting = False

    def in_progress(self) -> int:
        return self.running

    def cut(self) -> None:
        self.cuts += 1
        self.running = 0


class DrainTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def reports(self, drain: Drain) -> list[DrainReport]:
        seen: list[DrainReport] = []
        drain.start().addCallback(seen.append)
        return seen

    def test_nothing_in_progress_ends_at_once(self) -> None:
        """With no transfer running the drain stops accepting and ends without waiting."""
        intake = FakeIntake(0)
        seen = self.reports(Drain(self.clock, 30, [intake]))
        self.assertEqual(seen, [DrainReport(finished=0, cut=0, seconds=0.0)])
        self.assertFalse(intake.accepting)
        self.assertEqual(intake.cuts, 0)

    def test_transfers_that_finish_in_time_are_not_cut(self) -> None:
        """Transfers that end within the grace are counted as finished; nothing is cut."""
        tcp, tftp = FakeIntake(2), FakeIntake(1)
        seen = self.reports(Drain(self.clock, 30, [tcp, tftp]))
        self.assertFalse(tcp.accepting or tftp.accepting)
        self.clock.advance(5)
        self.assertEqual(seen, [])
        tcp.running, tftp.running = 0, 0
        self.clock.advance(POLL)
        (report,) = seen
        self.assertEqual((report.finished, report.cut), (3, 0))
        self.assertAlmostEqual(report.seconds, 5 + POLL)
        self.assertEqual(tcp.cuts + tftp.cuts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no deadline left behind

    def test_grace_ends_with_a_cut(self) -> None:
        """At the end of the grace what still runs is cut and counted as cut."""
        intake = FakeIntake(3)
        seen = self.reports(Drain(self.clock, 30, [intake]))
        self.clock.advance(10)
        intake.running = 1  # two finished
        self.clock.advance(19.9)
        self.assertEqual(seen, [])
        self.clock.advance(0.1)
        self.assertEqual(intake.cuts, 1)
        self.assertEqual((seen[0].finished, seen[0].cut, seen[0].seconds), (2, 1, 30.0))

    def test_cut_now_during_the_drain(self) -> None:
        """cut_now (a second signal) cuts at once, before the grace ends."""
        intake = FakeIntake(2)
        drain = Drain(self.clock, 30, [intake])
        seen = self.reports(drain)
        self.clock.advance(1)
        drain.cut_now()
        self.assertEqual(intake.cuts, 1)
        self.assertEqual((seen[0].finished, seen[0].cut), (0, 2))
        drain.cut_now()  # a third signal: nothing more
        self.assertEqual(intake.cuts, 1)

    def test_cut_asked_before_the_drain_starts(self) -> None:
        """A second signal before the shutdown reached the service: the drain cuts as it starts."""
        intake = FakeIntake(1)
        drain = Drain(self.clock, 30, [intake])
        drain.cut_now()
        self.assertEqual(intake.cuts, 0)
        seen = self.reports(drain)
        self.assertEqual((intake.cuts, seen[0].cut), (1, 1))

    def test_helpers_are_waited_for_not_counted(self) -> None:
        """Workers are drained and waited for, but they are not transfers."""
        intake, workers = FakeIntake(0), FakeIntake(2)
        seen = self.reports(Drain(self.clock, 30, [intake], helpers=[workers]))
        self.assertFalse(workers.accepting)
        self.clock.advance(1)
        self.assertEqual(seen, [])
        workers.running = 0
        self.clock.advance(POLL)
        self.assertEqual((seen[0].finished, seen[0].cut), (0, 0))

    def test_start_twice_is_one_drain(self) -> None:
        """A second start returns the same Deferred (the stop may be asked twice)."""
        drain = Drain(self.clock, 30, [FakeIntake(1)])
        self.assertIs(drain.start(), drain.start())


class StoppingReactor(Clock):
    """A clock whose C{stop} is counted (a reactor stopped twice raises, as Twisted's does)."""

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0
        self.later: list[Any] = []

    def stop(self) -> None:
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning()

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)

    def callWhenRunning(self, f: Any, *args: Any) -> None:
        self.later.append((f, args))


class Child(Service):
    """A child service that records when it was stopped."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def stopService(self) -> None:
        super().stopService()
        self.log.append("child stopped")


class GracefulServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = StoppingReactor()
        self.intake = FakeIntake(1)

    def service(self, relayed: bool = False) -> GracefulService:
        top = GracefulService(self.reactor, 30.0, relayed=relayed)  # type: ignore[arg-type]
        top.drain_with([self.intake])
        return top

    def test_children_stop_after_the_drain(self) -> None:
        """The ports, pools and workers stop only once the transfers have ended."""
        events: list[str] = []
        top = self.service()
        Child(events).setServiceParent(top)
        top.startService()
        stopped: Deferred[Any] = top.stopService()
        self.assertFalse(self.intake.accepting)
        self.assertEqual(events, [])
        self.intake.running = 0
        self.reactor.advance(POLL)
        self.assertEqual(events, ["child stopped"])
        self.assertEqual(self.successResultOf(stopped), [(True, None)])

    def test_first_signal_stops_second_cuts(self) -> None:
        """SIGTERM stops the reactor (which drains); a second signal cuts what runs."""
        top = self.service()
        top.startService()
        top.signal_received(signal.SIGTERM)
        self.assertEqual(self.reactor.stops, 1)
        top.stopService()  # what the reactor's shutdown does
        self.assertEqual(self.intake.cuts, 0)
        top.signal_received(signal.SIGINT)
        self.assertEqual(self.intake.cuts, 1)
        self.assertEqual(self.reactor.stops, 1)

    def test_relayed_drain_never_escalates(self) -> None:
        """In a worker SIGUSR1 (the parent's drain) twice is still a drain; SIGUSR2 cuts."""
        top = self.service(relayed=True)
        top.startService()
        top.signal_received(signal.SIGUSR1)
        top.stopService()
        top.signal_received(signal.SIGUSR1)
        self.assertEqual(self.intake.cuts, 0)
        top.signal_received(signal.SIGUSR2)
        self.assertEqual(self.intake.cuts, 1)

    def test_signal_while_already_stopping(self) -> None:
        """A first signal after a stop begun elsewhere does not fail on the stopped reactor."""
        top = self.service()
        top.startService()
        self.reactor.stop()
        top.stopService()
        top.signal_received(signal.SIGTERM)  # ReactorNotRunning is expected and ignored
        self.assertEqual(self.intake.cuts, 0)

    def test_signals_are_taken_only_when_asked(self) -> None:
        """Embedding code keeps its signal handlers: only take_over_process installs ours."""
        top = self.service()
        top.startService()
        self.assertEqual(self.reactor.later, [])
        top.take_over_process()
        self.assertEqual(len(self.reactor.later), 1)


class GraceOptionTests(unittest.TestCase):
    def test_default_and_value(self) -> None:
        """--grace is 30 seconds unless given; it takes decimals."""
        options = Options()
        options.parseOptions(["--root", self.mktemp()])
        self.assertEqual(options["grace"], 30.0)
        options = Options()
        options.parseOptions(["--root", self.mktemp(), "--grace", "2.5"])
        self.assertEqual(options["grace"], 2.5)

    def test_bad_values(self) -> None:
        """A grace that is not a positive number is a usage error naming --grace."""
        from twisted.python import usage

        for bad in ("0", "-1", "nan", "x"):
            options = Options()
            with self.assertRaisesRegex(usage.UsageError, "--grace"):
                options.parseOptions(["--grace", bad])


# -- real processes ------------------------------------------------------------------------


SIZE = 100_000
HELD = 40_000


def fx1_request(name: str) -> _wire.PutRequest:
    """An FX/1 upload of SIZE bytes of As with a trailer (the test sends them)."""
    return _wire.PutRequest(name, SIZE, None, 1_650_000_000 * 10**9, trailer=True)


def finish_upload(sock: socket.socket) -> bytes:
    """Send the rest of the As and the trailer; the server's last line."""
    sock.sendall(b"A" * (SIZE - HELD))
    sock.sendall(f"SHA256: {sha256_bytes(b'A' * SIZE)}\n".encode())
    return read_line(sock)


def finish_while_draining(
    testcase: unittest.TestCase,
    server: ServerProcess,
    sock: socket.socket,
    signum: int,
    stopping: str,
    meanwhile: Any = None,
) -> None:
    """Send C{signum}; once the log matches C{stopping} (and C{meanwhile} ran), send the
    rest of the held upload: it is stored (C{done}) and the server exits 0."""
    server.signal(signum)
    server.log.wait_for(stopping)
    if meanwhile is not None:
        meanwhile()
    done = finish_upload(sock)
    testcase.assertTrue(done.startswith(f"done {SIZE} ".encode()), done)
    testcase.assertEqual(server.wait(30), 0, server.log.text())


def refused(port: int) -> bool:
    """Does a new TCP connection to C{port} fail (or get closed without a word)?"""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(_wire.encode_put(fx1_request("late.bin")))
            return read_line(sock) == b""
    except OSError:
        return True


@pytest.mark.integration
class TwistdDrainTests(unittest.TestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.root = os.path.join(base, "root")

    def test_upload_in_flight_finishes_after_sigterm(self) -> None:
        """SIGTERM while an FX/1 upload streams: new connections are refused, the upload
        finishes and is stored, the log says 1 drained and 0 cut, twistd exits 0."""
        server = start_twistd(self, self.root)
        sock = upload_holding(self.root, server.port, fx1_request("slow.bin"), HELD)
        self.addCleanup(sock.close)

        def no_new_connection() -> None:
            self.assertTrue(refused(server.port), "a new connection was accepted while draining")

        finish_while_draining(
            self, server, sock, signal.SIGTERM,
            r"SIGTERM: stopping; transfers in progress have 30 s to finish", no_new_connection,
        )  # fmt: skip
        server.log.wait_for(r"drained: 1 transfer finished, 0 cut, in ")
        with open(os.path.join(self.root, "slow.bin"), "rb") as handle:
            self.assertEqual(handle.read(), b"A" * SIZE)

    def test_filexfer_serve_drains_on_ctrl_c(self) -> None:
        """filexfer serve: SIGINT (Ctrl-C) drains the same way; the upload finishes, exit 0."""
        server = start_serve(self, self.root)
        sock = upload_holding(self.root, server.port, fx1_request("serve.bin"), HELD)
        self.addCleanup(sock.close)
        finish_while_draining(self, server, sock, signal.SIGINT, r"SIGINT: stopping; .* 30 s")
        server.log.wait_for(r"drained: 1 transfer finished, 0 cut")

    def test_second_sigterm_cuts_at_once_and_the_partial_resumes(self) -> None:
        """A second SIGTERM cuts the held upload at once (exit 0, 1 cut); its partial stays
        and the same upload resumes from it on the next server."""
        server = start_twistd(self, self.root)
        sock = upload_holding(self.root, server.port, fx1_request("cut.bin"), HELD)
        self.addCleanup(sock.close)
        server.signal(signal.SIGTERM)
        server.log.wait_for(r"SIGTERM: stopping")
        server.signal(signal.SIGTERM)
        self.assertEqual(server.wait(30), 0, server.log.text())
        server.log.wait_for(r"SIGTERM: cutting the transfers still in progress now")
        server.log.wait_for(r"drained: 0 transfers finished, 1 cut, in ")
        server.log.wait_for(r"'cut\.bin' .*cut by shutdown after 40000 of 100000 bytes")
        (partial,) = state_files(self.root, "partial")
        self.assertEqual(
            os.path.getsize(os.path.join(self.root, ".filexfer", "partial", partial)), HELD
        )
        again = start_twistd(self, self.root)
        local = write_file(os.path.join(self.base, "cut.bin"), b"A" * SIZE)
        os.utime(local, ns=(1_650_000_000 * 10**9, 1_650_000_000 * 10**9))
        sent = run_filexfer("send", "--no-progress", local, f"{LOOPBACK}:{again.port}")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        again.log.wait_for(rf"'cut\.bin' .*resumed at byte {HELD}, stored as 'cut\.bin'")

    def test_tftp_transfer_in_flight_finishes_and_requests_wait(self) -> None:
        """SIGTERM while a TFTP download is between blocks: it completes; a request
        sent during the drain is never answered by this server."""
        os.makedirs(self.root)
        content = payload(1000, seed=3)  # two blocks of 512
        write_file(os.path.join(self.root, "boot.img"), content)
        server, udp = start_twistd_tftp(self, self.root, self.base)
        reader = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(reader.close)
        reader.settimeout(10)
        reader.sendto(b"\x00\x01boot.img\x00octet\x00", (LOOPBACK, udp))
        first, transfer_port = reader.recvfrom(1024)
        self.assertEqual(first[:4], b"\x00\x03\x00\x01")
        server.signal(signal.SIGTERM)
        server.log.wait_for(r"SIGTERM: stopping")
        late = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(late.close)
        late.sendto(b"\x00\x01boot.img\x00octet\x00", (LOOPBACK, udp))
        received = first[4:]
        block = 1
        while True:  # acknowledge block by block to the end (bounded: 2 blocks)
            reader.sendto(struct.pack("!HH", 4, block), transfer_port)
            if len(received) == 1000 or block > 4:
                break
            data, _ = reader.recvfrom(1024)
            if struct.unpack("!HH", data[:4]) == (3, block + 1):
                block += 1
                received += data[4:]
        self.assertEqual(received, content)
        self.assertEqual(server.wait(30), 0, server.log.text())
        server.log.wait_for(r"drained: 1 transfer finished, 0 cut")
        late.setblocking(False)
        with self.assertRaises(BlockingIOError):
            late.recv(1024)  # the server is gone and never answered it


def owner_of_connection(server_port: int, client_port: int) -> int | None:
    """The process id holding the server side of a loopback TCP connection (from /proc)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                local, remote = fields[1], fields[2]
                if (
                    int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
        except OSError:
            continue
    return None


@pytest.mark.integration
class WorkersDrainTests(unittest.TestCase):
    def test_parent_passes_the_drain_to_its_worker(self) -> None:
        """--workers 2: SIGTERM to the first process drains the worker too; an upload held
        by the worker finishes, the worker logs it drained, everything exits 0."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        root = os.path.join(base, "root")
        tcp = free_port()
        command = twistd_command(
            "filexfer", "--port", str(tcp), "--tftp-port", str(free_udp_port()),
            "--workers", "2", "--root", root,
        )  # fmt: skip
        server = ServerProcess(command, cwd=base)
        self.addCleanup(server.stop)
        worker = int(server.log.wait_for(r"worker 1 started as process (\d+)").group(1))
        server.log.wait_for(rf"worker 1: .*listening for TCP on \[::\]:{tcp} .*shared")
        server.log.wait_for(rf"listening for TCP on \[::\]:{tcp} .*process {server.process.pid}")
        held = None
        for attempt in range(64):  # the kernel spreads connections: find one the worker holds
            os.makedirs(os.path.join(root, ".filexfer", "partial"), exist_ok=True)
            for name in os.listdir(os.path.join(root, ".filexfer", "partial")):
                os.unlink(os.path.join(root, ".filexfer", "partial", name))
            sock = upload_holding(root, tcp, fx1_request(f"w{attempt}.bin"), HELD)
            if owner_of_connection(tcp, sock.getsockname()[1]) == worker:
                held = sock
                break
            sock.close()
        self.assertIsNotNone(held, "no connection reached the worker")
        assert held is not None
        self.addCleanup(held.close)
        finish_while_draining(self, server, held, signal.SIGTERM, r"worker 1: .*SIGUSR1: stopping")
        server.log.wait_for(r"worker 1: .*drained: 1 transfer finished, 0 cut")
        server.log.wait_for(r"worker 1 ended: A process has ended without apparent errors")
