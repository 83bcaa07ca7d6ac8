"""send_file retries a busy (503) server with jittered exponential backoff, on a Clock."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial import unittest

from filexfer._guard import ConnectionLimits
from filexfer.storage import DirectoryStorage, Receipt
from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol
from filexfer.tcp.sender import RETRY_DEADLINE, ServerRefused, retry_wait, send_file
from filexfer.testing import InMemoryEndpoint

from .helpers import payload, sha256_bytes, visible_files, write_file
from .test_sender import RefusingEndpoint


class RetryWaitTests(unittest.TestCase):
    def test_doubles_from_the_hint(self) -> None:
        """Without jitter the waits double from the server's hint and stop growing at 30 s."""
        self.assertEqual([retry_wait(n, 2.0, 0.0) for n in range(6)], [2, 4, 8, 16, 30, 30])

    def test_without_a_hint(self) -> None:
        """A 503 without a hint starts from 1 s."""
        self.assertEqual([retry_wait(n, None, 0.0) for n in range(3)], [1, 2, 4])

    def test_never_shorter_than_the_hint(self) -> None:
        """A hint beyond the 30 s cap is still honoured."""
        self.assertEqual(retry_wait(0, 45.0, 0.0), 45.0)
        self.assertEqual(retry_wait(3, 45.0, 0.0), 45.0)

    def test_jitter_stretches(self) -> None:
        """The jitter stretches a wait by up to twice, never shortens it."""
        self.assertEqual(retry_wait(1, 2.0, 0.5), 6.0)
        self.assertLess(retry_wait(1, 2.0, 0.999), 8.0)

    def test_zero_hint_and_many_retries(self) -> None:
        """A zero hint still waits a little; a huge retry count does not overflow."""
        self.assertEqual(retry_wait(0, 0.0, 0.0), 0.1)
        self.assertEqual(retry_wait(10_000, 2.0, 0.0), 30.0)

    def test_default_deadline(self) -> None:
        """send_file retries for a minute unless told otherwise."""
        self.assertEqual(RETRY_DEADLINE, 60.0)


class Blocker(Protocol):
    """A client that connects and never sends its handshake: it holds a per-address slot."""


class RetryTests(unittest.TestCase):
    """send_file against an in-memory receiver whose one address slot may be taken."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.limits = ConnectionLimits(max_per_ip=1, retry_after=2)
        self.factory = ReceiverFactory(
            DirectoryStorage(self.root),
            clock=self.clock,
            limits=self.limits,
            handshake_timeout=1000.0,
        )
        self.endpoint = InMemoryEndpoint(self.factory, self.clock)
        self.local = os.path.abspath(self.mktemp())
        os.makedirs(self.local)
        self.retries: list[tuple[int, float]] = []

    def block(self) -> ReceiverProtocol:
        """Take the only slot with a connection stuck in its handshake."""
        server = self.factory.buildProtocol(None)
        server.makeConnection(StringTransport(peerAddress=iosim.FakeAddress()))
        self.assertEqual(self.limits.handshaking(None), 1)
        return server

    def send(self, data: bytes, name: str = "f.bin", **kwargs: Any) -> Deferred[Receipt]:
        path = write_file(os.path.join(self.local, name), data)
        kwargs.setdefault("jitter", lambda: 0.5)
        result = send_file(
            self.clock,
            self.endpoint,
            path,
            on_retry=lambda refusal, wait: self.retries.append((refusal.code, wait)),
            **kwargs,
        )
        self.flush()
        return result

    def flush(self) -> None:
        for pump in self.endpoint.pumps:
            pump.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def test_busy_then_free(self) -> None:
        """A 503 is retried after the hinted, jittered wait, and the retry stores the file."""
        blocker = self.block()
        result = self.send(b"abc")
        self.assertNoResult(result)
        self.assertEqual(self.retries, [(503, 3.0)])  # hint 2 s, stretched by 1 + 0.5
        self.advance(2.99)
        self.assertEqual(len(self.endpoint.pumps), 1, "retried before the wait was over")
        blocker.connectionLost()
        self.advance(0.01)
        self.assertEqual(len(self.endpoint.pumps), 2)
        self.assertEqual(self.successResultOf(result), Receipt(3, sha256_bytes(b"abc"), "f.bin"))
        self.assertEqual(self.limits.open, 0)

    def test_gives_up_at_the_deadline(self) -> None:
        """While the server stays busy the last try is at the deadline; its 503 is the result."""
        self.block()
        result = self.send(b"abc", retry_deadline=10.0, jitter=lambda: 0.0)
        for _ in range(3):
            self.advance(self.retries[-1][1])
        failure = self.failureResultOf(result, ServerRefused)
        self.assertEqual((failure.value.code, failure.value.retry_after), (503, 2.0))
        self.assertEqual(self.retries, [(503, 2.0), (503, 4.0), (503, 4.0)])  # the last cut short
        self.assertEqual(self.clock.seconds(), 10.0)
        self.assertEqual(len(self.endpoint.pumps), 4)

    def test_no_retry_without_deadline(self) -> None:
        """retry_deadline=0 makes a single attempt."""
        self.block()
        failure = self.failureResultOf(self.send(b"abc", retry_deadline=0), ServerRefused)
        self.assertEqual(failure.value.code, 503)
        self.assertEqual((self.retries, len(self.endpoint.pumps)), ([], 1))

    def test_other_refusals_not_retried(self) -> None:
        """A refusal other than 503 (here a missing token, 401) fails at once."""
        self.send(b"abc", name="ok.bin")
        self.factory.token = "tok"
        result = send_file(self.clock, self.endpoint, os.path.join(self.local, "ok.bin"))
        self.flush()
        self.assertEqual(self.failureResultOf(result, ServerRefused).value.code, 401)
        self.assertEqual(self.retries, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused_connection_not_retried(self) -> None:
        """A refused connection means nothing listens there: it fails at once."""
        attempts: list[Factory] = []

        class Counting(RefusingEndpoint):
            def connect(self, factory: Factory) -> Deferred[Protocol]:
                attempts.append(factory)
                return super().connect(factory)

        path = write_file(os.path.join(self.local, "a"), b"a")
        result = send_file(self.clock, Counting(), path)
        self.failureResultOf(result)
        self.assertEqual((len(attempts), self.clock.getDelayedCalls()), (1, []))

    def test_cancel_while_waiting(self) -> None:
        """Cancelling during a wait stops the retries and leaves no timer behind."""
        blocker = self.block()
        result = self.send(b"abc")
        result.cancel()
        self.failureResultOf(result, CancelledError)
        blocker.connectionLost()
        self.advance(1000)
        self.assertEqual(len(self.endpoint.pumps), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hundred_at_once_from_one_address(self) -> None:
        """100 sends that all connect before any handshake: the refused retry until all land."""
        self.limits.max_per_ip = 64
        jitters = iter([(n % 10) / 10 for n in range(1000)])
        results = []
        for index in range(100):
            path = write_file(os.path.join(self.local, f"{index}.bin"), payload(100, seed=index))
            results.append(
                send_file(
                    self.clock,
                    self.endpoint,
                    path,
                    jitter=lambda: next(jitters),
                    on_retry=lambda refusal, wait: self.retries.append((refusal.code, wait)),
                )
            )
        self.assertEqual(self.limits.handshaking(None), 64)
        self.flush()
        self.assertEqual(len(self.retries), 36)
        for _ in range(100):
            if all(result.called for result in results):
                break
            self.advance(0.5)
        for index, result in enumerate(results):
            receipt = self.successResultOf(result)
            self.assertEqual(receipt.sha256, sha256_bytes(payload(100, seed=index)))
        self.assertEqual(len(visible_files(self.root)), 100)
        self.assertEqual(self.limits.open, 0)
