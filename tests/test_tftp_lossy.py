"""Our TFTP client and server through a seeded, lossy UDP relay on loopback.

The relay drops 10 % of datagrams, duplicates 5 %, delays every datagram by
1 ms and holds back 5 % of them 1-4 ms longer, so that later datagrams
overtake them. Transfers in both
directions must finish intact, and the DATA packets sent more than once
must stay near what the losses force: no retransmission storm.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from filexfer import DirectoryStorage
from filexfer.tftp import TFTPServerProtocol, download, upload
from tests.helpers import LOOPBACK, payload, sha256_bytes, sha256_file

Address = tuple[str, int]
LOSS = 0.10
DUPLICATE = 0.05
DELAY = 0.001
REORDER = 0.05
REORDER_DELAY = (0.001, 0.004)
TIMEOUT = 0.05  # retransmission timeout for both ends: keeps the test short
RETRIES = 30


class _Leg(DatagramProtocol):
    """One relay socket: hands what it receives to the relay."""

    def __init__(self, relay: LossyRelay, name: str) -> None:
        self.relay = relay
        self.name = name

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.relay.received(self, datagram, (addr[0], addr[1]))


class LossyRelay:
    """Sits between one client and the server, impairing every datagram.

    The client talks to C{front}; the relay talks to the server from
    C{back}. For each transfer port (TID) the server opens, the relay opens
    a mirror port, so the client sees a TID of its own to lock onto.
    """

    def __init__(self, server: Address, seed: int) -> None:
        self.server = server
        self.random = random.Random(seed)
        self.client: Address | None = None
        self.front = _Leg(self, "front")
        self.back = _Leg(self, "back")
        self.mirrors: dict[Address, _Leg] = {}  # server TID -> our port facing the client
        self.ports: list[Any] = []
        self.pending: set[Any] = set()
        self.data_sent: dict[str, int] = {"to-server": 0, "to-client": 0}
        self.blocks_seen: dict[str, set[int]] = {"to-server": set(), "to-client": set()}
        self.dropped = 0

    def start(self) -> Address:
        """Listen; return the address the client should use as the server."""
        self.ports.append(reactor.listenUDP(0, self.back, interface=LOOPBACK))
        front = reactor.listenUDP(0, self.front, interface=LOOPBACK)
        self.ports.append(front)
        return (LOOPBACK, front.getHost().port)

    def stop(self) -> defer.Deferred[Any]:
        """Cancel pending deliveries and close every port."""
        for call in list(self.pending):
            if call.active():
                call.cancel()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    def received(self, leg: _Leg, datagram: bytes, source: Address) -> None:
        if leg is self.back:
            self._from_server(datagram, source)
        else:
            self.client = source
            target = self.server
            for tid, mirror in self.mirrors.items():
                if mirror is leg:
                    target = tid
            self._impair(self.back, datagram, target, "to-server")

    def _from_server(self, datagram: bytes, tid: Address) -> None:
        mirror = self.mirrors.get(tid)
        if mirror is None:
            mirror = self.mirrors[tid] = _Leg(self, f"mirror-{tid[1]}")
            self.ports.append(reactor.listenUDP(0, mirror, interface=LOOPBACK))
        assert self.client is not None
        self._impair(mirror, datagram, self.client, "to-client")

    def _impair(self, leg: _Leg, datagram: bytes, target: Address, direction: str) -> None:
        if datagram[:2] == b"\x00\x03":  # DATA: count what the sender sent
            self.data_sent[direction] += 1
            self.blocks_seen[direction].add(int.from_bytes(datagram[2:4], "big"))
        copies = 2 if self.random.random() < DUPLICATE else 1
        for _ in range(copies):
            if self.random.random() < LOSS:
                self.dropped += 1
                continue
            delay = DELAY
            if self.random.random() < REORDER:
                delay += self.random.uniform(*REORDER_DELAY)
            call = reactor.callLater(delay, self._deliver, leg, datagram, target)
            self.pending.add(call)

    def _deliver(self, leg: _Leg, datagram: bytes, target: Address) -> None:
        self.pending = {call for call in self.pending if call.active()}
        if leg.transport is not None:
            leg.transport.write(datagram, target)

    def retransmitted(self, direction: str) -> float:
        """DATA packets sent more than once, as a share of the distinct blocks."""
        distinct = len(self.blocks_seen[direction])
        return (self.data_sent[direction] - distinct) / distinct


class LossyRelayTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.server = TFTPServerProtocol(
            storage=DirectoryStorage(self.root), reactor=reactor, timeout=TIMEOUT, retries=RETRIES
        )
        port = reactor.listenUDP(0, self.server, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        self.server_address = (LOOPBACK, port.getHost().port)

    @defer.inlineCallbacks
    def round_trip(self, seed: int, size: int, **options: Any) -> Any:
        """Upload then download C{size} bytes through a fresh relay; return the relays."""
        data = payload(size, seed=seed)
        local = os.path.abspath(self.mktemp())
        os.makedirs(local)
        source = os.path.join(local, "source.bin")
        with open(source, "wb") as handle:
            handle.write(data)
        relays = []
        for direction in ("up", "down"):
            relay = LossyRelay(self.server_address, seed=seed * 10 + len(relays))
            host, port = relay.start()
            self.addCleanup(relay.stop)
            relays.append(relay)
            common = {"timeout": TIMEOUT, "retries": RETRIES, **options}
            if direction == "up":
                sent = yield upload(reactor, host, port, source, "f.bin", **common)
                self.assertEqual(sent, size)
                self.assertEqual(sha256_file(os.path.join(self.root, "f.bin")), sha256_bytes(data))
            else:
                copy = os.path.join(local, "copy.bin")
                got = yield download(reactor, host, port, "f.bin", copy, **common)
                self.assertEqual(got, size)
                self.assertEqual(sha256_file(copy), sha256_bytes(data))
        return relays

    @defer.inlineCallbacks
    def test_lockstep_through_loss(self) -> Any:
        """Lock-step (blksize 512): intact both ways; resends stay near the loss rate."""
        up, down = yield self.round_trip(seed=1, size=128 * 1024, blksize=512, windowsize=1)
        # A block is resent when its DATA or its ACK is lost: about 1/0.9^2 - 1 = 23 %.
        self.assertGreater(up.dropped, 0)
        self.assertLess(up.retransmitted("to-server"), 0.45)
        self.assertLess(down.retransmitted("to-client"), 0.45)

    @defer.inlineCallbacks
    def test_windowed_through_loss(self) -> Any:
        """Windowed (blksize 1428, window 8): intact both ways; no retransmission storm."""
        up, down = yield self.round_trip(seed=2, size=1024 * 1024, blksize=1428, windowsize=8)
        # A loss costs at most the rest of its window (go-back-N): bounded by the window.
        self.assertLess(up.retransmitted("to-server"), 8 * LOSS * 2)
        self.assertLess(down.retransmitted("to-client"), 8 * LOSS * 2)
