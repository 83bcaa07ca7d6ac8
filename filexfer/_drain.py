"""Graceful drain: a stop that lets the transfers in progress end (SIGTERM, then C{--grace}).

When the service stops (the first SIGTERM or SIGINT, or any other stop) it
first stops accepting: the TCP ports close (under systemd socket activation
systemd keeps the listening socket, so new connections wait in its queue
for the next instance), the TFTP request port is no longer read (a new
request waits in the socket's queue, and TFTP clients repeat their request
anyway), and workers are told to drain too.  Transfers in progress go on
for up to C{grace} seconds; those still running then are cut as a plain
shutdown cuts them (an FX/1 upload keeps its partial for a resume).  A
second SIGTERM or SIGINT cuts at once.  One line tells how many transfers
finished during the drain and how many were cut.

The signals are taken over from the reactor once it runs, so that the
first one stops the reactor without Twisted's re-raise of the signal: the
process exits 0 after a drain, as the service manager expects of a stop
it asked for.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any, Protocol

from attrs import frozen
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from filexfer._log import log
from filexfer._systemd import notify
from filexfer._types import IServiceReactor

DEFAULT_GRACE = 30.0
"""Seconds transfers in progress have to end after SIGTERM (C{--grace})."""

POLL = 0.1
"""Seconds between two looks at what is still in progress during a drain."""


class Intake(Protocol):
    """Something that takes in transfers, as the drain sees it."""

    def stop_accepting(self) -> object:
        """Take no new transfers; those in progress go on (may return a Deferred)."""

    def in_progress(self) -> int:
        """How many transfers (or workers) are still running."""

    def cut(self) -> object:
        """End what still runs, now."""


class TCPIntake:
    """The TCP receiver: its listening ports and its open connections."""

    def __init__(self, factory: Any, ports: Sequence[IService]) -> None:
        self.factory = factory
        self.ports = list(ports)

    def stop_accepting(self) -> Deferred[Any]:
        """Close the listening ports (their C{stopService} is safe to call again)."""
        return DeferredList([maybeDeferred(port.stopService) for port in self.ports])

    def in_progress(self) -> int:
        """Open connections, whatever their state (a handshake may become an upload)."""
        return len(self.factory.live)

    def cut(self) -> None:
        """Cut every upload still streaming (each logs one line; FX/1 keeps its partial)."""
        self.factory.shut_down()


class TFTPIntake:
    """The TFTP server: its request port and its transfers."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def stop_accepting(self) -> None:
        """Stop reading the request port; each transfer has a port of its own and goes on."""
        self.server.pause_requests()

    def in_progress(self) -> int:
        """Transfers running, and requests the storage is still starting."""
        return int(self.server.in_progress())

    def cut(self) -> Deferred[Any]:
        """End every transfer now (the client gets ERROR "server shutting down")."""
        return self.server.stop_transfers()


@frozen
class DrainReport:
    """How a drain ended: transfers that finished in it, transfers cut, seconds it took."""

    finished: int
    cut: int
    seconds: float


class Drain:
    """Stop accepting, wait up to C{grace} seconds for C{intakes} to empty, then cut the rest.

    @param clock: the reactor's clock (a L{twisted.internet.task.Clock} in tests).
    @param grace: seconds transfers have to end.
    @param intakes: what takes in transfers (counted in the report).
    @param helpers: other processes to drain and wait for (C{--workers}):
        waited for like transfers, not counted.
    """

    def __init__(
        self,
        clock: IReactorTime,
        grace: float,
        intakes: Sequence[Intake],
        helpers: Sequence[Intake] = (),
    ) -> None:
        self.clock = clock
        self.grace = grace
        self.intakes = list(intakes)
        self.helpers = list(helpers)
        self.report: DrainReport | None = None
        self._done: Deferred[DrainReport] | None = None
        self._began = 0.0
        self._at_start = 0
        self._cut_asked = False
        self._watch = LoopingCall(self._look)
        self._watch.clock = clock
        self._deadline: Any = None

    def transfers(self) -> int:
        """Transfers in progress now."""
        return sum(intake.in_progress() for intake in self.intakes)

    def start(self) -> Deferred[DrainReport]:
        """Begin (once; later calls return the same Deferred): fires with the L{DrainReport}."""
        if self._done is not None:
            return self._done
        self._done = Deferred()
        self._began = self.clock.seconds()
        for intake in self.intakes + self.helpers:
            intake.stop_accepting()
        self._at_start = self.transfers()
        if self._cut_asked:
            self._end(cut=True)
        elif not self._busy():
            self._end(cut=False)
        else:
            self._deadline = self.clock.callLater(self.grace, self._end, True)
            self._watch.start(POLL, now=False)
        return self._done

    def cut_now(self) -> None:
        """Cut what still runs: at once if draining, at the start otherwise (a second signal)."""
        self._cut_asked = True
        if self._done is not None and self.report is None:
            self._end(cut=True)

    def _busy(self) -> bool:
        return any(part.in_progress() for part in self.intakes + self.helpers)

    def _look(self) -> None:
        if not self._busy():
            self._end(cut=False)

    def _end(self, cut: bool) -> None:
        if self.report is not None:
            return
        if self._watch.running:
            self._watch.stop()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        left = self.transfers()
        if cut:
            for intake in self.intakes + self.helpers:
                intake.cut()
        self.report = DrainReport(
            finished=max(self._at_start - left, 0),
            cut=left,
            seconds=self.clock.seconds() - self._began,
        )
        assert self._done is not None
        self._done.callback(self.report)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class GracefulService(MultiService):
    """The service's top: its stop drains first (L{Drain}), then stops every child.

    Told to (L{take_over_process}), it also takes SIGTERM and SIGINT over
    once the reactor runs (first: stop with a drain; second: cut at once),
    and tells systemd C{READY=1} when the reactor runs with the ports open;
    C{STOPPING=1} is sent when the drain begins
    (L{filexfer._systemd.notify}; nothing without C{$NOTIFY_SOCKET}).

    @param relayed: a worker of C{--workers}: SIGUSR1 from the parent
        means drain (never escalating, since a terminal's Ctrl-C or systemd
        may have signalled the worker itself already) and SIGUSR2 means cut.
    """

    def __init__(self, reactor: IServiceReactor, grace: float, *, relayed: bool = False) -> None:
        super().__init__()
        self.reactor = reactor
        self.grace = grace
        self.relayed = relayed
        self.drain = Drain(reactor, grace, [])
        self.signalled: int | None = None
        self._stopping: Deferred[Any] | None = None

    def drain_with(self, intakes: Sequence[Intake], helpers: Sequence[Intake] = ()) -> None:
        """Say what the drain stops and waits for (call before the service stops)."""
        self.drain = Drain(self.reactor, self.grace, intakes, helpers)

    def take_over_process(self) -> None:
        """Handle the process's signals and tell systemd, once the reactor runs.

        For C{twistd filexfer} and C{filexfer serve}; a program that embeds
        the service keeps its own signal handling.
        """
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        handled = [signal.SIGTERM, signal.SIGINT]
        if self.relayed:
            handled += [signal.SIGUSR1, signal.SIGUSR2]
        for signum in handled:
            signal.signal(signum, self._handler)
        if not self.relayed:
            notify("READY=1\nSTATUS=serving")

    def _handler(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.signal_received, signum)

    def signal_received(self, signum: int) -> None:
        """A signal came (in the reactor thread): the first stops with a drain, the next cuts.

        SIGUSR1 (a worker told by its parent) only ever drains; SIGUSR2 always cuts.
        """
        name = signal.Signals(signum).name
        first = self.signalled is None
        if first:
            self.signalled = signum
            log.info(
                "{name}: stopping; transfers in progress have {grace:g} s to finish "
                "(a second SIGTERM or SIGINT cuts them)",
                name=name,
                grace=self.grace,
            )
            try:
                self.reactor.stop()  # the shutdown stops this service: the drain
            except ReactorNotRunning:
                pass  # already stopping: the drain runs
        if signum == signal.SIGUSR2 or (not first and signum != signal.SIGUSR1):
            log.info("{name}: cutting the transfers still in progress now", name=name)
            self.drain.cut_now()

    def stopService(self) -> Deferred[Any]:
        """Drain, log how it went, then stop the children (ports, pools, workers)."""
        if self._stopping is not None:
            return self._stopping
        if not self.relayed:
            notify("STOPPING=1\nSTATUS=draining")
        draining = self.drain.start()
        self._stopping = draining.addCallback(self._drained)
        return self._stopping

    def _drained(self, report: DrainReport) -> Deferred[Any]:
        if report.finished or report.cut:
            log.info(
                "drained: {finished} finished, {cut} cut, in {seconds:.1f} s",
                finished=_plural(report.finished, "transfer"),
                cut=report.cut,
                seconds=report.seconds,
            )
        else:
            log.info("drained: no transfer was in progress")
        return maybeDeferred(super().stopService)
