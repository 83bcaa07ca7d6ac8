"""The threaded sender (sendfile + hashing thread) over real loopback TCP."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, reactor
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
class HashingHeld:
    """The real reactor, except that the second job put in a thread (the hashing) waits.

    It runs only when the test calls L{release}.
    """

    def __init__(self) -> None:
        self.jobs = 0
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)

    def callInThread(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.jobs += 1
        if self.jobs == 2:
            self.held.append((work, args))
        else:
            reactor.callInThread(work, *args, **kwargs)

    def release(self) -> None:
        for work, args in self.held:
            reactor.callInThread(work, *args)


class Observed(SenderProtocol):
    """A SenderProtocol that tells the test when its connection is gone."""

    lost: defer.Deferred[None]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        super().connectionLost(reason)
        self.lost.callback(None)


class ThreadedSenderTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_receipt_before_own_hash_is_done(self) -> Any:
        """The server's `done` and close arriving before our hash is ready still verify."""
        root = os.path.abspath(self.mktemp())
        port = reactor.listenTCP(
            0, ReceiverFactory(DirectoryStorage(root), clock=reactor), interface=LOOPBACK
        )
        self.addCleanup(port.stopListening)
        source = write_file(os.path.join(root + "-src", "f.bin"), payload(3 << 20, seed=5))
        info = os.stat(source)
        clock = HashingHeld()
        with open(source, "rb") as handle:
            request = _wire.PutRequest("f.bin", info.st_size, None, info.st_mtime_ns)
            protocol = Observed(handle, info.st_size, request, None, clock, 60.0)
            protocol.lost = defer.Deferred()
            endpoint = endpoints.TCP4ClientEndpoint(reactor, LOOPBACK, port.getHost().port)
            yield endpoint.connect(Factory.forProtocol(lambda: protocol))
            yield protocol.lost  # done arrived and the server closed; our hash waits
            self.assertEqual(len(clock.held), 1, "the hashing job was not held")
            self.assertFalse(protocol.result.called, "decided before our own hash was done")
            clock.release()
            receipt = yield protocol.result
        self.assertEqual(receipt.sha256, sha256_file(source))
        self.assertEqual(receipt.path, "f.bin")
