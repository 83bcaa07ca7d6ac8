"""`--workers N`: several processes share the TCP and TFTP ports (SO_REUSEPORT)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from twisted.python import usage
from twisted.trial import unittest

from filexfer.service import Options
from tests.helpers import (
    LOOPBACK,
    ServerProcess,
    free_port,
    free_udp_port,
    payload,
    run_filexfer,
    sha256_file,
    twistd_command,
    visible_files,
    write_file,
)


def gone(pid: int, timeout: float) -> bool:
    """Wait (bounded) for process C{pid} to disappear; True when it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as status:
                if any(line.startswith("State:\tZ") for line in status):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


class WorkersTests(unittest.TestCase):
    def start(self) -> tuple[ServerProcess, int, int, str]:
        """twistd filexfer --workers 2; returns (server, TCP port, UDP port, root)."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        root = os.path.join(base, "root")
        tcp, udp = free_port(), free_udp_port()
        server = ServerProcess(
            twistd_command(
                "filexfer",
                "--port",
                str(tcp),
                "--tftp-port",
                str(udp),
                "--workers",
                "2",
                "--root",
                root,
            ),  # fmt: skip
            cwd=base,
        )
        self.addCleanup(server.stop)
        server.log.wait_for(rf"worker 1: .*listening for TCP on \[::\]:{tcp} .*shared")
        server.log.wait_for(rf"worker 1: .*listening for TFTP on UDP on \[::\]:{udp} .*shared")
        server.log.wait_for(rf"listening for TCP on \[::\]:{tcp} .*process {server.process.pid}")
        return server, tcp, udp, root

    def worker_pid(self, server: ServerProcess) -> int:
        """The process id of worker 1, from the log."""
        return int(server.log.wait_for(r"worker 1 started as process (\d+)").group(1))

    def test_two_processes_serve_and_stop_together(self) -> None:
        """Uploads and TFTP reads are served; stopping the first process stops the worker."""
        server, tcp, udp, root = self.start()
        worker = self.worker_pid(server)
        base = os.path.dirname(root)
        source = write_file(os.path.join(base, "f.bin"), payload(200_000, seed=2))
        for number in range(10):
            result = run_filexfer("send", "--no-progress", source, f"{LOOPBACK}:{tcp}/n{number}")
            self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(visible_files(root)), 10)
        copy = os.path.join(base, "copy.bin")
        got = run_filexfer("get", "--no-progress", f"tftp://{LOOPBACK}:{udp}/n3/f.bin", copy)
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertEqual(sha256_file(copy), sha256_file(source))
        self.assertEqual(server.log.count(r"stored as"), 10)

        server.signal(signal.SIGTERM)
        server.wait(30)
        self.assertTrue(gone(worker, 15), "the worker outlived the first process")

    def test_worker_stops_when_parent_is_killed(self) -> None:
        """kill -9 of the first process: the worker notices and stops by itself."""
        server, _, _, _ = self.start()
        worker = self.worker_pid(server)
        server.process.kill()
        server.wait(10)
        if not gone(worker, 15):
            subprocess.run(["kill", "-9", str(worker)], timeout=10)
            self.fail("the worker kept running after its parent was killed")

    def test_listen_cannot_be_shared(self) -> None:
        """--workers with --listen is a usage error: only --port and TFTP are shared."""
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--workers", "2", "--listen", "tcp:0"])
