"""The TFTP retransmission timer (RFC 6298 style) and the answers to repeats, on a clock.

Issue 10 items 3 and 4: the timeout follows the transfer's round trips
(whatever C{timeout} a client asks for, which only bounds the backoff), a
retransmitted packet gives no sample (Karn), the retry budget is time, and
a repeat of the block just acknowledged is answered at once on both ends.
Everything runs on L{task.Clock} or L{FakeUDPNetwork}: no sockets, no sleeps.
"""

from __future__ import annotations

import os
import random
from typing import Any, cast

from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial import unittest

from filexfer.testing import FakeUDPNetwork, FakeUDPPort, MemoryStorage
from filexfer.tftp import TFTPServerProtocol, download, upload
from filexfer.tftp import _packets as p
from filexfer.tftp._window import RTO_FLOOR, Retransmitter, RoundTrip

CLIENT = ("127.0.0.1", 50000)


class RoundTripTests(unittest.TestCase):
    """RFC 6298 2.2-2.3 and 5.5, with our floor and ceiling."""

    def test_before_any_sample(self) -> None:
        """The timeout is the initial one until a round trip is measured (RFC 6298 2.1)."""
        rtt = RoundTrip(1.0, 0.1, 6.0)
        self.assertEqual((rtt.rto, rtt.srtt, rtt.samples), (1.0, None, 0))

    def test_first_and_later_samples(self) -> None:
        """SRTT = R, RTTVAR = R/2 first; then 7/8 and 3/4 smoothing; RTO = SRTT + 4 RTTVAR."""
        rtt = RoundTrip(1.0, 0.01, 60.0)
        rtt.sample(0.2)
        self.assertAlmostEqual(rtt.srtt or 0, 0.2)
        self.assertAlmostEqual(rtt.rttvar, 0.1)
        self.assertAlmostEqual(rtt.rto, 0.6)
        rtt.sample(0.4)
        self.assertAlmostEqual(rtt.rttvar, 0.75 * 0.1 + 0.25 * 0.2)
        self.assertAlmostEqual(rtt.srtt or 0, 0.875 * 0.2 + 0.125 * 0.4)
        self.assertAlmostEqual(rtt.rto, 0.225 + 4 * 0.125)

    def test_floor_and_ceiling(self) -> None:
        """A loopback round trip gives the floor; a very slow one the ceiling."""
        rtt = RoundTrip(1.0, RTO_FLOOR, 6.0)
        rtt.sample(0.0001)
        self.assertEqual(rtt.rto, RTO_FLOOR)
        rtt.sample(100.0)
        self.assertEqual(rtt.rto, 6.0)

    def test_backoff_doubles_up_to_the_ceiling(self) -> None:
        """Each timeout doubles the timeout, up to the ceiling; a sample recomputes it."""
        rtt = RoundTrip(0.1, 0.1, 1.0)
        seen = []
        for _ in range(6):
            rtt.back_off()
            seen.append(round(rtt.rto, 3))
        self.assertEqual(seen, [0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
        rtt.sample(0.001)
        self.assertEqual(rtt.rto, 0.1)

    def test_bounds_checked(self) -> None:
        """A floor above the initial timeout, or an initial above the ceiling, is refused."""
        self.assertRaises(ValueError, RoundTrip, 1.0, 2.0, 6.0)
        self.assertRaises(ValueError, RoundTrip, 7.0, 0.1, 6.0)


class RetransmitterTests(unittest.TestCase):
    """The timer on a clock: when it resends, when it samples, when it gives up."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.resends: list[float] = []
        self.gave_up: list[float] = []

    def timer(self, rtt: RoundTrip, budget: float) -> Retransmitter:
        def resend() -> int:
            self.resends.append(round(self.clock.seconds(), 6))
            return 2

        def give_up() -> None:
            self.gave_up.append(round(self.clock.seconds(), 6))

        return Retransmitter(self.clock, rtt, budget, resend, give_up)

    def run_out(self) -> None:
        for _ in range(1000):
            calls = self.clock.getDelayedCalls()
            if not calls:
                return
            when = min(call.getTime() for call in calls)
            self.clock.advance(max(0.0, when - self.clock.seconds()))

    def test_backoff_and_budget_in_time(self) -> None:
        """Resends at 0.1, 0.3, 0.7 s (doubling, capped at 0.4); given up at the 1 s budget."""
        timer = self.timer(RoundTrip(0.1, 0.1, 0.4), budget=1.0)
        timer.progress(sent=1)
        self.run_out()
        self.assertEqual(self.resends, [0.1, 0.3, 0.7])
        self.assertEqual(self.gave_up, [1.0])
        self.assertEqual(timer.retransmissions, 6)  # what resend() said it sent

    def test_progress_restarts_the_budget(self) -> None:
        """Progress before the budget runs out starts it again."""
        timer = self.timer(RoundTrip(0.5, 0.1, 0.5), budget=1.0)
        timer.progress()
        self.clock.advance(0.9)
        timer.progress()
        self.clock.advance(0.9)
        self.assertEqual(self.gave_up, [])
        self.run_out()
        self.assertEqual(self.gave_up, [1.9])

    def test_sample_shrinks_the_armed_timer(self) -> None:
        """A first sample of 10 ms brings the 1 s initial timeout down to the floor at once."""
        rtt = RoundTrip(1.0, 0.1, 1.0)
        timer = self.timer(rtt, budget=6.0)
        timer.progress(sent=0)
        self.clock.advance(0.01)
        timer.progress(answered=0, sent=1)
        self.assertEqual(rtt.samples, 1)
        self.assertAlmostEqual(rtt.rto, 0.1)
        self.clock.advance(0.1)
        self.assertEqual(self.resends, [0.11])

    def test_karn_no_sample_after_a_timeout(self) -> None:
        """An answer to a packet that was resent on timeout is not a sample (Karn's rule)."""
        rtt = RoundTrip(0.2, 0.1, 1.0)
        timer = self.timer(rtt, budget=6.0)
        timer.progress(sent=1)
        self.clock.advance(0.2)
        self.assertEqual(self.resends, [0.2])
        self.clock.advance(0.05)
        timer.progress(answered=1)
        self.assertEqual(rtt.samples, 0)
        self.assertEqual(rtt.rto, 0.4)  # the backed-off timeout stays until a sample

    def test_karn_no_sample_after_a_go_back(self) -> None:
        """Nor is an answer after a resend outside a timeout (a window sent again)."""
        rtt = RoundTrip(0.2, 0.1, 1.0)
        timer = self.timer(rtt, budget=6.0)
        timer.progress(sent=4)
        timer.resent(3)
        self.clock.advance(0.01)
        timer.progress(answered=4)
        self.assertEqual((rtt.samples, timer.retransmissions), (0, 3))

    def test_one_packet_timed_at_a_time(self) -> None:
        """A packet sent while another is timed is not timed; the first one's answer samples."""
        rtt = RoundTrip(1.0, 0.001, 1.0)
        timer = self.timer(rtt, budget=6.0)
        timer.progress(sent=1)
        self.clock.advance(0.03)
        timer.progress(sent=2)
        self.clock.advance(0.01)
        timer.progress(answered=2)
        self.assertEqual(rtt.samples, 1)
        self.assertAlmostEqual(rtt.srtt or 0, 0.04)


class _Peer(DatagramProtocol):
    """A TFTP server played by the test: it records what reaches it, answers nothing."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Any]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append((datagram, addr))


class ClientAnswersRepeatsTests(unittest.TestCase):
    """The client's download side answers a repeat of what it just acknowledged at once."""

    def setUp(self) -> None:
        self.net = FakeUDPNetwork()
        self.listener = _Peer()
        self.net.listenUDP(69, self.listener)
        self.tid = _Peer()
        self.tid_port = self.net.listenUDP(0, self.tid)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.target = os.path.join(folder, "f")

    def client_port(self) -> FakeUDPPort:
        self.net.flush()
        ((request, client),) = self.listener.received
        self.assertEqual(p.decode(request).__class__, p.ReadRequest)
        port = self.net.port_at(client)
        assert port is not None
        return port

    def wait(self, seconds: float) -> None:
        """Let C{seconds} pass in 10 ms steps, so that the client's timers fire on time."""
        for _ in range(round(seconds / 0.01)):
            self.net.advance(0.01)

    def from_server(self, packet: p.Packet) -> list[p.Packet]:
        """The server's TID sends C{packet}; return what the client sends back at once."""
        client = self.client_port()
        del self.tid.received[:]
        self.tid_port.write(p.encode(packet), (client.interface or "127.0.0.1", client.number))
        self.net.flush()
        return [p.decode(datagram) for datagram, _ in self.tid.received]

    def test_repeated_data_reacked_at_once(self) -> None:
        """Our ACK 1 was lost and the server repeats DATA 1 every 0.2 s: each gets ACK 1 now."""
        result = download(self.net, "127.0.0.1", 69, "f", self.target, timeout=1.0)
        self.assertEqual(self.from_server(p.Data(1, b"a" * 512)), [p.Ack(1)])
        for _ in range(3):
            self.wait(0.2)
            self.assertEqual(self.from_server(p.Data(1, b"a" * 512)), [p.Ack(1)])
        self.assertEqual(self.from_server(p.Data(2, b"end")), [p.Ack(2)])
        self.assertEqual(self.successResultOf(result), 515)

    def test_repeated_oack_reacked_at_once(self) -> None:
        """Our ACK 0 was lost and the server repeats its OACK: ACK 0 goes again at once."""
        result = download(self.net, "127.0.0.1", 69, "f", self.target, timeout=1.0)
        oack = p.OptionAck({"tsize": "3"})
        self.assertEqual(self.from_server(oack), [p.Ack(0)])
        self.wait(0.2)
        self.assertEqual(self.from_server(oack), [p.Ack(0)])
        self.net.advance(0.01)  # a copy of it, inside the guard: not answered twice
        self.assertEqual(self.from_server(oack), [])
        self.assertEqual(self.from_server(p.Data(1, b"end")), [p.Ack(1)])
        self.assertEqual(self.successResultOf(result), 3)


class LossAtLanSpeedTests(unittest.TestCase):
    """Issue 10 item 4 on a simulated link: 5 % loss, 5 % duplication, jitter that reorders."""

    def setUp(self) -> None:
        self.net = FakeUDPNetwork(latency=0.0002, jitter=0.001, loss=0.05, duplicate=0.05, seed=7)
        self.storage = MemoryStorage()
        self.data = random.Random(10).randbytes(300 * 1024)
        self.server = TFTPServerProtocol(storage=self.storage, reactor=self.net)
        self.net.listenUDP(69, self.server)
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def logged(self, protocol: str) -> LogEvent:
        """The server's log line for its one transfer, once its last packets are through."""
        for _ in range(100_000):
            calls = self.net.getDelayedCalls()
            if not calls:
                break
            self.net.advance(max(0.0, min(c.getTime() for c in calls) - self.net.seconds()))
        (event,) = [e for e in self.events if e.get("protocol") == protocol]
        return event

    def test_curl_like_timeout_6_download(self) -> None:
        """A 300 KB lock-step download asking timeout 6 ends in seconds, not minutes.

        Before, every lost DATA or ACK cost the 6 s the client asked for (about
        150 s in all); now a loss costs about the 0.1 s floor.  The transfer's
        retransmission count is in its log line.
        """
        self.storage.files["f.bin"] = self.data
        target = self.mktemp()
        result = download(
            self.net, "127.0.0.1", 69, "f.bin", target, blksize=1428, windowsize=1, timeout=6
        )
        began = self.net.seconds()
        self.assertTrue(self.net.run_until(result))
        self.assertEqual(self.successResultOf(result), len(self.data))
        self.assertLess(self.net.seconds() - began, 10.0)
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), self.data)
        event = self.logged("tftp-rrq")
        self.assertGreater(event["retransmissions"], 0)
        self.assertLess(event["retransmissions"], 60)

    def test_curl_like_timeout_6_upload(self) -> None:
        """The same upload (the server receives, the client sends) ends in seconds too."""
        source = os.path.abspath(self.mktemp())
        with open(source, "wb") as handle:
            handle.write(self.data)
        result = upload(
            self.net, "127.0.0.1", 69, source, "up.bin", blksize=1428, windowsize=1, timeout=6
        )
        began = self.net.seconds()
        self.assertTrue(self.net.run_until(result))
        self.assertEqual(self.successResultOf(result), len(self.data))
        self.assertLess(self.net.seconds() - began, 10.0)
        self.assertEqual(self.storage.files["up.bin"], self.data)
        self.assertIn("retransmissions", self.logged("tftp-wrq"))

    def test_retransmissions_attribute(self) -> None:
        """Each transfer counts the datagrams it sent again; the log line says the same."""
        self.storage.files["f.bin"] = self.data
        target = self.mktemp()
        result = download(self.net, "127.0.0.1", 69, "f.bin", target, windowsize=8)
        transfers: list[Any] = []
        original = self.server._listen

        def spy(transfer: Any, request: bytes) -> None:
            transfers.append(transfer)
            original(transfer, request)

        self.server._listen = spy  # type: ignore[method-assign]
        self.assertTrue(self.net.run_until(result))
        (transfer,) = transfers
        sent = [datagram for datagram, _ in transfer.port.sent]  # the OACK, then DATA
        self.assertGreater(transfer.retransmissions, 0)
        self.assertEqual(transfer.retransmissions, len(sent) - len(set(sent)))
        self.assertEqual(self.logged("tftp-rrq")["retransmissions"], transfer.retransmissions)
