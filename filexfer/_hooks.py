"""The post-transfer hook (C{--on-stored COMMAND}): a process per stored file.

Like rsyncd's C{post-xfer exec} and tusd's post-finish hook: after each
upload stored under its final name, L{OnStored} runs the operator's
command with the facts in C{FILEXFER_*} environment variables.  The
command line is the operator's (split once at start-up, as a shell would
split words, with L{shlex.split}); nothing a client chose is ever part of
it, and no shell runs it.  The client's path reaches the hook only as the
value of an environment variable.

Hooks are bounded: at most C{concurrency} run at once, at most
L{MAX_WAITING} wait (more are dropped, with a warning), and one that runs
past C{timeout} seconds gets C{SIGTERM}, then C{SIGKILL} L{KILL_GRACE}
seconds later.  Each hook starts in a session (and process group) of its
own (through L{LAUNCHER}), and those signals go to the whole group, so
that what the hook started (a shell script's C{sleep}) ends with it.  When
the service stops, hooks still waiting are not run (one line names them)
and the groups of those running get C{SIGTERM}.  A hook's exit status, its
output (up to L{MAX_OUTPUT_LINES} lines) and a timeout are logged; none of
it ever holds up a transfer.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._log import log
from filexfer._ports import StartupError
from filexfer._records import ITransferObserver, TransferRecord
from filexfer._text import escape
from filexfer._types import IServiceReactor

MAX_WAITING = 1000
"""Stored files whose hook may wait for a free slot; past that a hook is dropped (and logged)."""

KILL_GRACE = 5.0
"""Seconds between a timed-out hook's SIGTERM and its SIGKILL."""

MAX_OUTPUT_LINES = 20
"""Lines of a hook's output logged per run; the rest is read and dropped."""

MAX_NAMES_LOGGED = 10
"""Paths named in the one line about hooks not run at stop; the rest are counted."""

LAUNCHER = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"
"""Python code run with C{-c} before the hook: a new session (and process group), then exec.

Twisted's C{spawnProcess} has no pre-exec hook, and C{setsid(1)} is not
everywhere; the service's own interpreter is.
"""


def launch_argv(argv: list[str]) -> list[str]:
    """The argument list that runs C{argv} (C{argv[0]} a path) in a process group of its own."""
    return [sys.executable, "-c", LAUNCHER, *argv]


def _killpg(pgid: int, signum: int) -> None:
    os.killpg(pgid, signum)


def signal_group(pid: int, signum: int) -> None:
    """Send C{signum} to the process group C{pid} leads; to C{pid} alone if none yet.

    (The launcher may not have called C{setsid} yet; a group already gone is ignored.)
    """
    try:
        _killpg(pid, signum)
    except ProcessLookupError:
        try:
            os.kill(pid, signum)
        except OSError:
            pass
    except OSError:
        pass


def parse_command(text: str) -> list[str]:
    """The operator's C{--on-stored} text as an argument list; the program is looked up on $PATH.

    The program comes back as an absolute path: hooks run in the root, so a
    relative C{./hook.sh} is resolved against the directory the service
    started in, where the operator meant it.

    @raise StartupError: empty, unbalanced quotes, or no such program.
    """
    try:
        argv = shlex.split(text)
    except ValueError as error:
        raise StartupError(f"--on-stored: {error}") from None
    if not argv:
        raise StartupError("--on-stored: the command is empty")
    program = shutil.which(argv[0])
    if program is None:
        raise StartupError(f"--on-stored: {argv[0]}: no such executable program")
    return [os.path.abspath(program), *argv[1:]]


def hook_environment(record: TransferRecord, root: str) -> dict[str, str]:
    """The C{FILEXFER_*} variables a hook gets for a stored file (see docs/usage.md).

    C{FILEXFER_PATH} is the stored file's absolute path; C{FILEXFER_NAME}
    the same relative to the root.
    """
    assert record.stored_path is not None
    return {
        "FILEXFER_PATH": os.path.join(root, record.stored_path),
        "FILEXFER_NAME": record.stored_path,
        "FILEXFER_ROOT": root,
        "FILEXFER_SIZE": str(record.size),
        "FILEXFER_SHA256": record.sha256 or "",
        "FILEXFER_BLAKE3": record.blake3 or "",
        "FILEXFER_PEER": record.peer,
        "FILEXFER_PROTOCOL": record.protocol,
        "FILEXFER_RESUMED_OFFSET": str(record.resumed_offset),
    }


class _HookRun(ProcessProtocol):
    """One hook process: logs its output and how it ended."""

    def __init__(self, hooks: OnStored, name: str) -> None:
        self.hooks = hooks
        self.name = name
        self.lines = 0
        self.partial = b""
        self.timer: IDelayedCall | None = None
        self.killer: IDelayedCall | None = None
        self.timed_out = False
        self.pid: int | None = None
        self.exited = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = getattr(self.transport, "pid", None)
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-4096:]
        for line in lines:
            self._say(line)

    def _say(self, line: bytes) -> None:
        self.lines += 1
        if self.lines <= MAX_OUTPUT_LINES:
            text = escape(line.decode("utf-8", "replace"))
            log.info("--on-stored {name!r}: {line}", name=self.name, line=text)

    def time_out(self) -> None:
        self.timer = None
        self.timed_out = True
        log.warn(
            "--on-stored {name!r}: still running after {seconds:g}s: stopping it",
            name=self.name,
            seconds=self.hooks.timeout,
        )
        self._signal(signal.SIGTERM)
        self.killer = self.hooks.reactor.callLater(KILL_GRACE, self._signal, signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        """Signal the hook's whole process group (what it started too)."""
        if self.pid is not None:
            signal_group(self.pid, signum)

    def stop(self) -> None:
        """The service stops: SIGTERM to the hook's group."""
        if self.pid is not None and not self.exited:
            self._signal(signal.SIGTERM)

    def processExited(self, reason: Failure) -> None:
        self.exited = True
        self.hooks.runs.discard(self)
        # a timed-out hook's group still gets its SIGKILL: a child may outlive the hook
        calls = (self.timer,) if self.timed_out else (self.timer, self.killer)
        for call in calls:
            if call is not None and call.active():
                call.cancel()
        if self.partial:
            self._say(self.partial)
            self.partial = b""
        status = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        if self.timed_out:
            log.warn("--on-stored {name!r}: timed out and stopped", name=self.name)
        elif signum is not None:
            log.warn(
                "--on-stored {name!r}: killed by signal {signum}", name=self.name, signum=signum
            )
        elif status:
            log.warn(
                "--on-stored {name!r}: failed with exit status {status}",
                name=self.name,
                status=status,
            )
        self.hooks.ended()


@implementer(ITransferObserver)
class OnStored:
    """Runs C{argv} after each stored upload, bounded in concurrency and time.

    @param reactor: spawns the processes and times them.
    @param argv: the command (from L{parse_command}); run in C{root}.
    @param root: the storage root (absolute).
    @param concurrency: hooks running at once; more wait (up to L{MAX_WAITING}).
    @param timeout: seconds a hook may run before it is stopped.
    """

    def __init__(
        self,
        reactor: IServiceReactor,
        argv: list[str],
        root: str,
        *,
        concurrency: int = 4,
        timeout: float = 60.0,
    ) -> None:
        self.reactor = reactor
        self.argv = argv
        self.root = root
        self.concurrency = concurrency
        self.timeout = timeout
        self.running = 0
        self.waiting: collections.deque[TransferRecord] = collections.deque()
        self.runs: set[_HookRun] = set()
        self.stopped = False

    def transfer_started(self, protocol: str, direction: str) -> None:
        pass

    def transfer_ended(self, record: TransferRecord) -> None:
        if record.outcome != "stored" or record.stored_path is None:
            return
        if self.stopped:
            log.warn("--on-stored: the service is stopping: not run for {name!r}",
                     name=record.stored_path)  # fmt: skip
            return
        if len(self.waiting) >= MAX_WAITING:
            log.warn(
                "--on-stored: {waiting} hooks waiting already: not run for {name!r}",
                waiting=len(self.waiting),
                name=record.stored_path,
            )
            return
        self.waiting.append(record)
        self._next()

    def ended(self) -> None:
        """A hook process has exited: its slot is free."""
        self.running -= 1
        self._next()

    def _next(self) -> None:
        while self.waiting and self.running < self.concurrency:
            self._run(self.waiting.popleft())

    def _run(self, record: TransferRecord) -> None:
        assert record.stored_path is not None
        env = dict(os.environ)
        env.update(hook_environment(record, self.root))
        run = _HookRun(self, record.stored_path)
        try:
            argv = launch_argv(self.argv)
            self.reactor.spawnProcess(
                run, argv[0], argv, env=env, path=self.root,
                childFDs={0: "w", 1: "r", 2: "r"},
            )  # fmt: skip
        except Exception as error:  # e.g. no more processes (EAGAIN)
            log.warn("--on-stored: cannot start it: {error}", error=error)
            return
        self.running += 1
        self.runs.add(run)
        run.timer = self.reactor.callLater(self.timeout, run.time_out)

    def status(self) -> dict[str, Any]:
        """Running and waiting hooks (for tests and logs)."""
        return {"running": self.running, "waiting": len(self.waiting)}

    def stop(self) -> None:
        """The service stops: hooks waiting are not run (one line), running ones get SIGTERM."""
        self.stopped = True
        if self.waiting:
            names = [record.stored_path for record in self.waiting]
            self.waiting.clear()
            shown = ", ".join(repr(name) for name in names[:MAX_NAMES_LOGGED])
            more = len(names) - MAX_NAMES_LOGGED
            log.warn(
                "--on-stored: the service is stopping: {count} not run, for {names}{more}",
                count=len(names),
                names=shown,
                more=f" and {more} more" if more > 0 else "",
            )
        for run in list(self.runs):
            run.stop()


class OnStoredService(Service):
    """Stops the hooks (L{OnStored.stop}) when the service stops."""

    def __init__(self, hooks: OnStored) -> None:
        self.hooks = hooks

    def stopService(self) -> None:
        self.hooks.stop()
        super().stopService()
