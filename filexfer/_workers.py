"""Several processes serving the same ports, to use every core (C{--workers N}).

Each process opens the TCP port given by C{--port} and the TFTP port with
C{SO_REUSEPORT} (dual-stack, like C{--port} alone: see L{filexfer._ports}),
so the kernel spreads new connections and requests across them.  The first
process starts the others (C{python -m filexfer serve
... --worker-of PID}), forwards their log lines, and stops them when it
stops: its drain (L{filexfer._drain}) tells them to drain too (SIGUSR1),
waits for them, and tells them to cut (SIGUSR2) when its grace ends.  A
worker whose parent disappears stops by itself.

When the service observes transfers (C{--metrics}, C{--event-log},
C{--on-stored}), each worker sends its transfer records to the first
process over a socket on its file descriptor L{RECORDS_FD}
(L{RecordsToParent}), and the first process hands them to its own
observers (L{_RecordLines}): one process counts, writes and runs hooks for
all of them.  The first process also counts each worker's transfers started
and not yet ended: when a worker's records socket closes (it was killed, or
it ended) or the first process stops, each still open is ended with a record
of outcome C{aborted} (detail C{worker N ended}), so that
C{filexfer_active_transfers} and the event log stay true.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import sys
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorSocket, IReactorTime
from twisted.internet.protocol import ProcessProtocol, Protocol, ServerFactory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._log import log
from filexfer._ports import ListeningPort
from filexfer._records import ITransferObserver, TransferRecord
from filexfer._types import IServiceReactor

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")
"""The time stamp a worker puts before its log lines (ours has one already)."""

CLOSE_WAIT = 1.0
"""Seconds after a worker ended that its records socket may still be read before it is closed."""

STOP_GRACE = 10.0
"""Seconds a worker has to stop after SIGTERM before it is killed."""

RECORDS_FD = 3
"""A worker's file descriptor to the first process, for its transfer records."""


class SharedStreamPort(ListeningPort):
    """Listen for TCP on all addresses (IPv4 and IPv6), on a port shared with other workers."""

    def __init__(self, reactor: IReactorSocket, port: int, factory: Any, backlog: int) -> None:
        super().__init__(
            reactor,
            socket.SOCK_STREAM,
            port,
            factory,
            option=f"--port {port}",
            backlog=backlog,
            reuse_port=True,
        )
        self.factory = factory


class SharedDatagramPort(ListeningPort):
    """Serve UDP on a port shared with the other workers (all interfaces unless given one)."""

    def __init__(self, reactor: IReactorSocket, port: int, protocol: Any, interface: str) -> None:
        super().__init__(
            reactor,
            socket.SOCK_DGRAM,
            port,
            protocol,
            option=f"--tftp-port {port}",
            interface=interface,
            reuse_port=True,
        )
        self.protocol = protocol


class _WorkerOutput(ProcessProtocol):
    """Forwards a worker's log lines and tells when it has ended."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            text = _TIMESTAMP.sub("", line.decode("utf-8", "replace"), count=1)
            log.info("worker {n}: {line}", n=self.number, line=text)

    def processEnded(self, reason: Failure) -> None:
        log.info("worker {n} ended: {why}", n=self.number, why=reason.getErrorMessage())
        self.ended.callback(None)


class WorkerProcesses(Service):
    """Starts C{count} more copies of this server and stops them with it."""

    def __init__(
        self,
        reactor: IServiceReactor,
        count: int,
        serve_argv: list[str],
        observer: ITransferObserver | None = None,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.serve_argv = serve_argv
        self.observer = observer
        """Given the workers' transfer records, when the service observes transfers."""
        self._workers: list[tuple[Any, _WorkerOutput]] = []
        self._records: list[_RecordLines] = []

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.count + 1):
            output = _WorkerOutput(number)
            argv = [sys.executable, "-m", "filexfer", "serve", *self.serve_argv]
            argv += ["--worker-of", str(os.getpid())]
            child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
            env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
            ours = theirs = None
            if self.observer is not None:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                child_fds[RECORDS_FD] = theirs.fileno()
            process = self.reactor.spawnProcess(
                output, sys.executable, argv, env=env, childFDs=child_fds
            )
            observer = self.observer
            if ours is not None and theirs is not None and observer is not None:
                theirs.close()
                lines = _RecordLines(observer, number, self.reactor)
                self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _Giving(lines))
                ours.close()  # the reactor reads its own copy
                self._records.append(lines)
                output.ended.addCallback(self._ended, lines)
            log.info("worker {n} started as process {pid}", n=number, pid=process.pid)
            self._workers.append((process, output))

    def _ended(self, result: object, lines: _RecordLines) -> object:
        """A worker ended: its records socket is read a little longer, then closed."""
        if not lines.closed:
            lines.close_wait = self.reactor.callLater(CLOSE_WAIT, lines.close)
        return result

    # -- as the drain sees it (filexfer._drain.Intake) ---------------------------------

    def stop_accepting(self) -> None:
        """Tell each worker to drain (SIGUSR1: a drain that a second one does not escalate)."""
        for process, output in self._workers:
            if not output.ended.called:
                _signal(process, signal.SIGUSR1)

    def in_progress(self) -> int:
        """Workers still running."""
        return sum(1 for _, output in self._workers if not output.ended.called)

    def cut(self) -> None:
        """Tell each worker to cut its transfers now (SIGUSR2)."""
        for process, output in self._workers:
            if not output.ended.called:
                _signal(process, signal.SIGUSR2)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        waits = []
        for process, output in self._workers:
            if not output.ended.called:
                _signal(process, signal.SIGTERM)
                killer = self.reactor.callLater(STOP_GRACE, _signal, process, signal.SIGKILL)
                output.ended.addBoth(_cancel, killer)
                waits.append(output.ended)
        self._workers = []
        records, self._records = self._records, []
        stopped: Deferred[Any] = DeferredList(waits) if waits else succeed(None)
        return stopped.addCallback(_close_all, records)


def _close_all(result: object, records: list[_RecordLines]) -> object:
    """The workers have ended: end what their records left open."""
    for lines in records:
        lines.close()
    return result


def _cancel(result: object, call: Any) -> object:
    if call.active():
        call.cancel()
    return result


def _signal(process: Any, signum: int) -> None:
    try:
        process.signalProcess(signum)
    except Exception:  # already gone
        pass


class ParentWatch(Service):
    """In a worker: stop the reactor when the parent that started it is gone."""

    def __init__(self, reactor: IServiceReactor, parent: int) -> None:
        self.reactor = reactor
        self.parent_pid = parent
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._loop.start(1.0, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if os.getppid() != self.parent_pid:
            log.warn("the parent process {pid} is gone: stopping", pid=self.parent_pid)
            self.reactor.stop()


class _Giving(ServerFactory):
    """The factory of an adopted socket: it gives the one protocol made for it."""

    def __init__(self, protocol: Protocol) -> None:
        self.given = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.given


class _Forwarding(Protocol):
    """A worker's end of the records socket; C{lost} fires when it is closed."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.lost.called:
            self.lost.callback(None)


class _RecordLines(LineReceiver):
    """In the first process: a worker's records, one JSON line each, handed to the observer."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(
        self, observer: ITransferObserver, number: int = 0, clock: IReactorTime | None = None
    ) -> None:
        self.observer = observer
        self.number = number
        self.clock = clock
        self.open: collections.Counter[tuple[str, str]] = collections.Counter()
        """The worker's transfers started and not ended yet, by (protocol, direction)."""
        self.closed = False
        self.close_wait: IDelayedCall | None = None

    def lineReceived(self, line: bytes) -> None:
        if self.closed:
            return
        try:
            message = json.loads(line)
            if "started" in message:
                protocol, direction = message["started"]
                self.observer.transfer_started(protocol, direction)
                self.open[protocol, direction] += 1
            else:
                record = TransferRecord(**message["ended"])
                key = (record.protocol, record.direction)
                if record.accepted and self.open[key] > 0:
                    self.open[key] -= 1
                self.observer.transfer_ended(record)
        except Exception:
            log.failure("a worker sent a transfer record that cannot be read")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.close()

    def close(self) -> None:
        """The worker is gone (or the service stops): end its open transfers as aborted."""
        if self.closed:
            return
        self.closed = True
        if self.close_wait is not None and self.close_wait.active():
            self.close_wait.cancel()
        if self.transport is not None:
            self.transport.loseConnection()
        left = sorted(self.open.elements())
        self.open.clear()
        if not left:
            return
        log.warn(
            "worker {n} ended with {count} transfers in progress: counted as aborted",
            n=self.number,
            count=len(left),
        )
        now = self.clock.seconds() if self.clock is not None else 0.0
        for protocol, direction in left:
            record = TransferRecord(
                protocol=protocol, direction=direction, peer="", path="",
                outcome="aborted", detail=f"worker {self.number} ended",
                time=now, accepted=True,
            )  # fmt: skip
            try:
                self.observer.transfer_ended(record)
            except Exception:
                log.failure("a transfer observer failed")


@implementer(ITransferObserver)
class RecordsToParent(Service):
    """In a worker: send every transfer record to the first process (on L{RECORDS_FD}).

    The socket is adopted by the reactor, so a busy first process never
    blocks the worker: lines wait in the transport's buffer.
    """

    def __init__(self, reactor: IReactorSocket, fd: int = RECORDS_FD) -> None:
        self.reactor = reactor
        self.fd = fd
        self._protocol: _Forwarding | None = None

    def startService(self) -> None:
        super().startService()
        connected = _Forwarding()
        self.reactor.adoptStreamConnection(self.fd, socket.AF_UNIX, _Giving(connected))
        os.close(self.fd)  # the reactor has its own copy
        self._protocol = connected

    def stopService(self) -> Deferred[None]:
        """Stopped last (it is the service's first child): send what is buffered, then close."""
        super().stopService()
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.transport is None or protocol.lost.called:
            return succeed(None)
        protocol.transport.loseConnection()  # after the buffered lines are written
        return protocol.lost

    def _send(self, message: dict[str, Any]) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.write(json.dumps(message).encode() + b"\n")

    def transfer_started(self, protocol: str, direction: str) -> None:
        self._send({"started": [protocol, direction]})

    def transfer_ended(self, record: TransferRecord) -> None:
        self._send({"ended": attrs.asdict(record)})
