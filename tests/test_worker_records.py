"""The first process ends the open transfers of a worker that is gone (fakes, Clock)."""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer._metrics import Metrics
from filexfer._records import Observers, TransferRecord
from filexfer._workers import CLOSE_WAIT, WorkerProcesses, _RecordLines


class Recorder:
    def __init__(self) -> None:
        self.records: list[TransferRecord] = []

    def transfer_started(self, protocol: str, direction: str) -> None:
        pass

    def transfer_ended(self, record: TransferRecord) -> None:
        self.records.append(record)


def _started(protocol: str, direction: str) -> bytes:
    return json.dumps({"started": [protocol, direction]}).encode() + b"\n"


def _ended(protocol: str, direction: str) -> bytes:
    record = TransferRecord(
        protocol=protocol, direction=direction, peer="1.2.3.4:5", path="a",
        outcome="stored", detail="ok", accepted=True,
    )  # fmt: skip
    return json.dumps({"ended": attrs.asdict(record)}).encode() + b"\n"


class WorkerGoneTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = Metrics()
        self.recorder = Recorder()
        self.lines = _RecordLines(Observers(self.metrics, self.recorder), 2, self.clock)
        self.transport = StringTransport()
        self.lines.makeConnection(self.transport)

    def active(self, protocol: str) -> float:
        return self.metrics.active.labels(protocol)._value.get()  # type: ignore[no-any-return]

    def feed(self) -> None:
        self.lines.dataReceived(
            _started("fx/1", "upload") + _started("fx/1", "upload") + _started("tftp", "download")
            + _ended("fx/1", "upload")
        )  # fmt: skip
        self.assertEqual((self.active("fx/1"), self.active("tftp")), (1, 1))

    def aborted(self) -> list[tuple[str, str, str, str, str, str, float]]:
        return [
            (r.protocol, r.direction, r.peer, r.path, r.outcome, r.detail, r.time)
            for r in self.recorder.records
            if r.outcome == "aborted"
        ]

    def test_channel_closed_ends_open_transfers_as_aborted(self) -> None:
        """A worker killed mid-transfer: its open transfers end as aborted; the gauge is 0."""
        self.feed()
        self.lines.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((self.active("fx/1"), self.active("tftp")), (0, 0))
        self.assertEqual(
            sorted(self.aborted()),
            [
                ("fx/1", "upload", "", "", "aborted", "worker 2 ended", 1000.0),
                ("tftp", "download", "", "", "aborted", "worker 2 ended", 1000.0),
            ],
        )
        transfers = self.metrics.transfers.labels("fx/1", "upload", "aborted")._value.get()
        self.assertEqual(transfers, 1)
        self.lines.close()  # once only
        self.assertEqual(len(self.aborted()), 2)

    def test_nothing_open_nothing_added(self) -> None:
        self.lines.dataReceived(_started("fx/1", "upload") + _ended("fx/1", "upload"))
        self.lines.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.aborted(), [])
        self.assertEqual(self.active("fx/1"), 0)

    def test_process_ended_closes_the_channel_soon(self) -> None:
        """The worker process ended but its socket is not closed: CLOSE_WAIT later it is."""
        self.feed()
        workers = WorkerProcesses(self.clock, 1, [], observer=self.metrics)  # type: ignore[arg-type]
        ended: Deferred[None] = Deferred()
        ended.addCallback(workers._ended, self.lines)
        ended.callback(None)
        self.assertEqual(self.active("fx/1"), 1)
        self.clock.advance(CLOSE_WAIT)
        self.assertEqual((self.active("fx/1"), self.active("tftp")), (0, 0))
        self.assertTrue(self.transport.disconnecting)
        self.lines.dataReceived(_ended("fx/1", "upload"))  # too late: not counted twice
        self.assertEqual(self.active("fx/1"), 0)

    def test_service_stop_closes_every_channel(self) -> None:
        """The first process stops: each worker's open transfers are ended."""
        self.feed()
        workers: Any = WorkerProcesses(self.clock, 1, [], observer=self.metrics)  # type: ignore[arg-type]
        workers._records.append(self.lines)
        workers.startService = lambda: None
        workers.running = True
        done = workers.stopService()
        self.successResultOf(done)
        self.assertEqual((self.active("fx/1"), self.active("tftp")), (0, 0))
