"""L{Backlog}: what an upload that stores in the background shares, whatever the store.

One job at a time runs in the background (a batch written to disk, a part
sent to an object store); while too much waits behind it the producer
registered with the upload (the socket, a TFTP transfer) is paused, and it
is resumed once the backlog has drained.  L{filexfer.storage._upload.Upload}
and L{filexfer.storage.s3.S3Upload} are both one of these.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProducer, IPushProducer


class Backlog:
    """The producer, the job in flight, and who waits for it to end."""

    def __init__(self) -> None:
        self._in_flight: Deferred[Any] | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self._producer: IPushProducer | None = None
        self._paused = False

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Pause C{producer} (a push producer) while too many bytes wait to be stored."""
        self._producer = cast(IPushProducer, producer)  # a transport: it pauses and resumes

    def unregisterProducer(self) -> None:
        """Leave the producer alone from now on."""
        self._producer = None
        self._paused = False

    def _pause(self) -> None:
        """Too much waits: pause the producer (once)."""
        if self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

    def _settled(self, resume: bool) -> None:
        """A job ended: resume the producer if C{resume}; wake the waiters when none runs."""
        if self._paused and resume:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()  # the next write() raises any error
        if self._in_flight is None:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _idle(self) -> Deferred[None]:
        """Fires once no job runs (every byte handed over is stored, or failed)."""
        if self._in_flight is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter
