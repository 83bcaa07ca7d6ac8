"""The threaded sender (one thread reads, hashes and sends) over real loopback TCP."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, reactor, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from filexfer import DirectoryStorage, ReceiverFactory
from filexfer.tcp import _wire
from filexfer.tcp.sender import SenderProtocol
from tests.helpers import LOOPBACK, payload, sha256_file, write_file


@implementer(IReactorThreads, IReactorTime)
class ReportHeld:
    """The real reactor, except that the sending thread's last report waits.

    That report (its C{finished} call) is held until the test calls
    L{release}; L{reported} is set when the thread has made it.
    """

    def __init__(self) -> None:
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.reported = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)

    def callFromThread(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if getattr(work, "__name__", "") == "_threads_finished":
            self.held.append((work, args))
            self.reported.set()
        else:
            reactor.callFromThread(work, *args, **kwargs)

    def release(self) -> None:
        for work, args in self.held:
            work(*args)


class Observed(SenderProtocol):
    """A SenderProtocol that tells the test when its connection is gone."""

    lost: defer.Deferred[None]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        super().connectionLost(reason)
        self.lost.callback(None)


class ThreadedSenderTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_receipt_before_own_hash_is_done(self) -> Any:
        """The server's `done` and close arriving before our thread has reported still verify."""
        root = os.path.abspath(self.mktemp())
        port = reactor.listenTCP(
            0, ReceiverFactory(DirectoryStorage(root), clock=reactor), interface=LOOPBACK
        )
        self.addCleanup(port.stopListening)
        source = write_file(os.path.join(root + "-src", "f.bin"), payload(3 << 20, seed=5))
        info = os.stat(source)
        clock = ReportHeld()
        with open(source, "rb") as handle:
            request = _wire.PutRequest("f.bin", info.st_size, None, info.st_mtime_ns)
            protocol = Observed(handle, info.st_size, request, None, clock, 60.0)
            protocol.lost = defer.Deferred()
            endpoint = endpoints.TCP4ClientEndpoint(reactor, LOOPBACK, port.getHost().port)
            yield endpoint.connect(Factory.forProtocol(lambda: protocol))
            yield protocol.lost  # done arrived and the server closed; our report waits
            yield threads.deferToThread(clock.reported.wait, 30)
            self.assertEqual(len(clock.held), 1, "the thread's report was not held")
            self.assertFalse(protocol.result.called, "decided before our own hash was done")
            clock.release()
            receipt = yield protocol.result
        self.assertEqual(receipt.sha256, sha256_file(source))
        self.assertEqual(receipt.path, "f.bin")
