"""The event log (C{--event-log FILE}): one JSON object per line per transfer.

L{EventLog} is an L{ITransferObserver} that writes every
L{TransferRecord} as a line of JSON (L{TransferRecord.as_event}), flushed
at once, to a file opened for appending (or to standard output for C{-}).
L{EventLogService} opens it when the service starts and reopens it on
C{SIGHUP}, as C{logrotate} expects: rename the file, send C{SIGHUP}, and
the next line goes to a new file under the old name.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, TextIO

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer

from filexfer._log import log
from filexfer._ports import StartupError
from filexfer._records import ITransferObserver, TransferRecord

STDOUT = "-"
"""The C{--event-log} name of standard output."""


@implementer(ITransferObserver)
class EventLog:
    """Appends one JSON line per transfer record to C{path} (C{-}: standard output).

    Nothing is written until L{open}; L{reopen} switches to a file opened
    anew under the same name (a rotated file keeps what it got).  A
    relative C{path} is taken from the current directory at construction.
    """

    def __init__(self, path: str) -> None:
        self.path = path if path == STDOUT else os.path.abspath(path)
        self._file: TextIO | None = None

    def _open(self) -> TextIO:
        if self.path == STDOUT:
            # file descriptor 1 itself: twistd replaces sys.stdout with its log
            return open(1, "w", encoding="utf-8", closefd=False)
        return open(self.path, "a", encoding="utf-8")

    @property
    def is_open(self) -> bool:
        """Is there a file to write to?"""
        return self._file is not None

    def open(self) -> None:
        """Open the file for appending.

        @raise StartupError: it cannot be opened (the message names the option).
        """
        try:
            self._file = self._open()
        except OSError as error:
            raise StartupError(
                f"--event-log {self.path}: cannot open it: {error.strerror or error}"
            ) from None

    def reopen(self) -> None:
        """Go on in a file opened anew under the name; keep the old one if that fails."""
        if self.path == STDOUT or self._file is None:
            return
        try:
            fresh = self._open()
        except OSError as error:
            log.warn(
                "--event-log {path}: cannot reopen it ({why}): still writing to the old file",
                path=self.path,
                why=error.strerror or error,
            )
            return
        self._file.close()
        self._file = fresh
        log.info("--event-log {path}: reopened", path=self.path)

    def close(self) -> None:
        """Close the file (standard output stays open)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def transfer_started(self, protocol: str, direction: str) -> None:
        pass

    def transfer_ended(self, record: TransferRecord) -> None:
        if self._file is None:
            return
        # ASCII-only JSON: a peer's path with any character stays one valid line
        line = json.dumps(record.as_event(), separators=(",", ":")) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as error:
            log.warn(
                "--event-log {path}: cannot write: {why}",
                path=self.path,
                why=error.strerror or error,
            )


class EventLogService(Service):
    """Opens the event log with the service, reopens it on SIGHUP, closes it at the end."""

    def __init__(self, event_log: EventLog, reactor: IReactorFromThreads) -> None:
        self.event_log = event_log
        self.reactor = reactor
        self._previous: Any = None

    def bind(self) -> None:
        """Open the file now (idempotent): L{filexfer.service.bind_ports} reports a bad path."""
        if not self.event_log.is_open:
            self.event_log.open()

    def startService(self) -> None:
        self.bind()
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, signum: int, frame: Any) -> None:
        # a signal handler runs between two bytecodes: leave the work to the reactor
        self.reactor.callFromThread(self.event_log.reopen)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        self.event_log.close()
