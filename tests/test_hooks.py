"""--on-stored hooks, deterministically: process groups, timeouts and the stop (fakes, Clock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer import _hooks
from filexfer._hooks import KILL_GRACE, LAUNCHER, OnStored, OnStoredService
from filexfer._records import TransferRecord


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[Any] = []

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, signum: Any) -> None:
        self.signals.append(signum)


class FakeReactor(Clock):
    """A Clock whose spawnProcess records what it would run."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, str, list[str]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        transport = FakeTransport(1000 + len(self.spawned))
        protocol.makeConnection(transport)
        self.spawned.append((protocol, executable, args))
        return transport


def stored(name: str) -> TransferRecord:
    return TransferRecord(
        protocol="fx/1", direction="upload", peer="127.0.0.1:1", path=name,
        outcome="stored", detail="ok", stored_path=name, size=1,
    )  # fmt: skip


class HookGroupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.killed: list[tuple[int, int]] = []
        self.patch(_hooks, "_killpg", lambda pgid, signum: self.killed.append((pgid, signum)))
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def hooks(self, **kwargs: Any) -> OnStored:
        return OnStored(self.reactor, ["/bin/hook", "x"], "/root", **kwargs)  # type: ignore[arg-type]

    def test_spawned_through_the_session_launcher(self) -> None:
        """The hook runs as `python -c LAUNCHER /bin/hook x`: a session of its own."""
        self.hooks().transfer_ended(stored("a"))
        ((_, executable, args),) = self.reactor.spawned
        self.assertEqual(executable, sys.executable)
        self.assertEqual(args, [sys.executable, "-c", LAUNCHER, "/bin/hook", "x"])

    def test_timeout_signals_the_whole_group(self) -> None:
        """Past the timeout: TERM to the group, KILL to the group 5 s later, even if the
        hook itself has exited by then (its children may not have)."""
        hooks = self.hooks(timeout=10.0)
        hooks.transfer_ended(stored("a"))
        ((run, _, _),) = self.reactor.spawned
        self.reactor.advance(10.0)
        self.assertEqual(self.killed, [(1000, signal.SIGTERM)])
        run.processExited(Failure(ProcessTerminated(signal=signal.SIGTERM)))
        self.reactor.advance(KILL_GRACE)
        self.assertEqual(self.killed, [(1000, signal.SIGTERM), (1000, signal.SIGKILL)])
        self.assertEqual(run.transport.signals, [])  # never the leader alone

    def test_group_not_made_yet_signals_the_process(self) -> None:
        """If the launcher has not called setsid yet, the process itself gets the signal."""
        sent: list[tuple[int, int]] = []

        def no_group(pgid: int, signum: int) -> None:
            raise ProcessLookupError

        self.patch(_hooks, "_killpg", no_group)
        self.patch(_hooks.os, "kill", lambda pid, signum: sent.append((pid, signum)))
        _hooks.signal_group(1234, signal.SIGTERM)
        self.assertEqual(sent, [(1234, signal.SIGTERM)])

    def test_stop_logs_waiting_and_terms_running(self) -> None:
        """At stop: waiting hooks are not run (one bounded line), running groups get TERM."""
        hooks = self.hooks(concurrency=1)
        service = OnStoredService(hooks)
        service.startService()
        for number in range(13):
            hooks.transfer_ended(stored(f"f{number}"))
        self.assertEqual(hooks.status(), {"running": 1, "waiting": 12})
        service.stopService()
        self.assertEqual(self.killed, [(1000, signal.SIGTERM)])
        self.assertEqual(hooks.status()["waiting"], 0)
        lines = [e for e in self.events if "not run, for" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["count"], 12)
        self.assertIn("'f1'", lines[0]["names"])
        self.assertNotIn("'f11'", lines[0]["names"])
        self.assertEqual(lines[0]["more"], " and 2 more")
        # the running one exits: nothing more starts
        ((run, _, _),) = self.reactor.spawned
        run.processExited(Failure(ProcessTerminated(signal=signal.SIGTERM)))
        hooks.transfer_ended(stored("late"))
        self.assertEqual(len(self.reactor.spawned), 1)
        self.reactor.advance(KILL_GRACE * 100)
        self.assertEqual(self.killed, [(1000, signal.SIGTERM)])


class LauncherTests(unittest.TestCase):
    def test_launcher_makes_a_new_group_and_execs(self) -> None:
        """The launcher (a real, quick process) runs the program as leader of its own group."""
        out = subprocess.run(
            [sys.executable, "-c", LAUNCHER, "/bin/sh", "-c", 'echo "$$ $(ps -o pgid= -p $$)"'],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        pid, pgid = out.stdout.split()
        self.assertEqual(pid, pgid)
        self.assertNotEqual(int(pgid), os.getpgrp())
