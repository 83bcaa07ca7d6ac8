"""One TransferRecord per transfer, and what the metrics, the event log and the hook make of it.

Deterministic: the TCP receiver in memory, the TFTP server on the fake UDP
network, the metrics parsed from prometheus_client's own text output, the
event log in a temporary file.
"""

from __future__ import annotations

import json
import os

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from filexfer._eventlog import EventLog
from filexfer._hooks import hook_environment, parse_command
from filexfer._metrics import Metrics
from filexfer._records import ITransferObserver, Observers, TransferRecord
from filexfer.storage import DirectoryStorage
from filexfer.testing import FakeUDPNetwork, InMemoryReceiver, MemoryStorage
from filexfer.tftp import TFTPServerProtocol
from filexfer.tftp.client import download, upload

from .helpers import payload, sha256_bytes, write_file


@implementer(ITransferObserver)
class Recorder:
    """Keeps what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def transfer_started(self, protocol: str, direction: str) -> None:
        self.events.append(("started", (protocol, direction)))

    def transfer_ended(self, record: TransferRecord) -> None:
        self.events.append(("ended", record))

    @property
    def records(self) -> list[TransferRecord]:
        return [r for kind, r in self.events if kind == "ended"]  # type: ignore[misc]


def _record(**changes: object) -> TransferRecord:
    fields: dict[str, object] = {
        "protocol": "fx/1",
        "direction": "upload",
        "peer": "192.0.2.7:40001",
        "path": "secret/name.bin",
        "outcome": "stored",
        "detail": "stored as 'secret/name.bin'",
        "nbytes": 1000,
        "seconds": 2.0,
        "time": 1_700_000_000.25,
        "stored_path": "secret/name.bin",
        "size": 1500,
        "sha256": "ab" * 32,
        "resumed_offset": 500,
        "accepted": True,
    }
    fields.update(changes)
    return TransferRecord(**fields)  # type: ignore[arg-type]


class TCPRecordTests(unittest.TestCase):
    """The TCP receiver announces an accepted upload and ends every connection with one record."""

    def test_stored_upload(self) -> None:
        """An FX/1 upload: started, then a stored record with the receipt's facts."""
        recorder = Recorder()
        storage = DirectoryStorage(os.path.abspath(self.mktemp()), "rename")
        receiver = InMemoryReceiver(storage, observer=recorder)
        data = payload(70_000)
        local = write_file(os.path.join(self.mktemp(), "f.bin"), data)
        receipt = self.successResultOf(receiver.send_file(local, name="in/f.bin"))
        self.assertEqual(recorder.events[0], ("started", ("fx/1", "upload")))
        [record] = recorder.records
        self.assertEqual(
            (record.outcome, record.stored_path, record.sha256, record.size, record.nbytes),
            ("stored", receipt.path, sha256_bytes(data), 70_000, 70_000),
        )
        self.assertEqual(
            (record.path, record.accepted, record.error_code), ("in/f.bin", True, None)
        )

    def test_refused_upload(self) -> None:
        """A refused request: no start, one refused record with the code, not accepted."""
        recorder = Recorder()
        receiver = InMemoryReceiver(observer=recorder, token="s3cret")
        local = write_file(os.path.join(self.mktemp(), "f.bin"), b"x" * 10)
        self.failureResultOf(receiver.send_file(local, name="f.bin", token="wrong"))
        self.assertEqual([kind for kind, _ in recorder.events], ["ended"])
        [record] = recorder.records
        self.assertEqual(
            (record.outcome, record.error_code, record.accepted), ("refused", 401, False)
        )


class TFTPRecordTests(unittest.TestCase):
    """The TFTP server announces a transfer when its port opens and ends it with one record."""

    def test_upload_and_download(self) -> None:
        """A WRQ is stored (digest, blksize, windowsize), an RRQ is sent, a missing file refused."""
        recorder = Recorder()
        net = FakeUDPNetwork()
        storage = MemoryStorage()
        net.listenUDP(69, TFTPServerProtocol(storage=storage, reactor=net, observer=recorder))
        data = payload(5000)
        local = write_file(os.path.join(self.mktemp(), "up.bin"), data)
        self.assertTrue(
            net.run_until(upload(net, "127.0.0.1", 69, local, "up.bin", blksize=1024, windowsize=4))
        )
        target = os.path.abspath(self.mktemp())
        self.assertTrue(net.run_until(download(net, "127.0.0.1", 69, "up.bin", target)))
        missing = download(net, "127.0.0.1", 69, "none.bin", target + "2")
        net.run_until(missing)
        self.failureResultOf(missing)
        started = [event for kind, event in recorder.events if kind == "started"]
        self.assertEqual(started, [("tftp", "upload"), ("tftp", "download")])
        stored, sent, refused = recorder.records
        self.assertEqual(
            (stored.outcome, stored.sha256, stored.size), ("stored", sha256_bytes(data), 5000)
        )
        self.assertEqual((stored.blksize, stored.windowsize, stored.retransmissions), (1024, 4, 0))
        self.assertEqual((sent.outcome, sent.direction, sent.nbytes), ("sent", "download", 5000))
        self.assertEqual(
            (refused.outcome, refused.error_code, refused.accepted), ("refused", 404, False)
        )

    def test_quirks_in_the_record(self) -> None:
        """Options a --tftp-quirks rule refused are the record's, next to blksize and windowsize."""
        from filexfer.tftp._quirks import QuirksPolicy

        recorder = Recorder()
        net = FakeUDPNetwork()
        storage = MemoryStorage()
        quirks = QuirksPolicy.parse(["127.0.0.0/8 refuse=blksize windowsize=2"])
        server = TFTPServerProtocol(storage=storage, reactor=net, observer=recorder, quirks=quirks)
        net.listenUDP(69, server)
        local = write_file(os.path.join(self.mktemp(), "up.bin"), payload(3000))
        self.assertTrue(
            net.run_until(upload(net, "127.0.0.1", 69, local, "up.bin", blksize=1024, windowsize=8))
        )
        (record,) = recorder.records
        self.assertEqual(
            (record.outcome, record.blksize, record.windowsize, record.options_refused),
            ("stored", 512, 2, ("blksize",)),
        )


class ObserversTests(unittest.TestCase):
    """Several observers as one."""

    def test_one_failing_observer(self) -> None:
        """An observer that raises is logged; the next one still gets the record."""

        @implementer(ITransferObserver)
        class Broken:
            def transfer_started(self, protocol: str, direction: str) -> None:
                raise RuntimeError("boom")

            def transfer_ended(self, record: TransferRecord) -> None:
                raise RuntimeError("boom")

        recorder = Recorder()
        both = Observers(Broken(), recorder)
        verifyObject(ITransferObserver, both)
        both.transfer_started("tftp", "upload")
        both.transfer_ended(_record())
        self.assertEqual(len(recorder.events), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back by prometheus_client's parser."""
    text = generate_latest(metrics.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(unittest.TestCase):
    """The Prometheus metrics count what the records say."""

    def test_counts(self) -> None:
        """Transfers, bytes, active, durations, refusals, retransmissions and resumed bytes."""
        metrics = Metrics()
        verifyObject(ITransferObserver, metrics)
        metrics.transfer_started("fx/1", "upload")
        metrics.transfer_started("tftp", "upload")
        self.assertEqual(
            _samples(metrics)[("filexfer_active_transfers", (("protocol", "fx/1"),))], 1
        )
        metrics.transfer_ended(_record())
        metrics.transfer_ended(
            _record(outcome="refused", error_code=413, accepted=False, nbytes=0, resumed_offset=0)
        )
        metrics.transfer_ended(
            _record(protocol="tftp", nbytes=300, resumed_offset=0, retransmissions=7, seconds=0.05)
        )
        metrics.transfer_ended(
            _record(
                protocol="tftp",
                direction="download",
                outcome="sent",
                nbytes=0,
                resumed_offset=0,
                accepted=False,
                options_refused=("tsize", "blksize"),
            )
        )
        s = _samples(metrics)
        upload = (("direction", "upload"), ("outcome", "stored"), ("protocol", "fx/1"))
        self.assertEqual(s[("filexfer_transfers_total", upload)], 1)
        refused = (("direction", "upload"), ("outcome", "refused"), ("protocol", "fx/1"))
        self.assertEqual(s[("filexfer_transfers_total", refused)], 1)
        self.assertEqual(
            s[("filexfer_bytes_total", (("direction", "upload"), ("protocol", "fx/1")))], 1000
        )
        self.assertEqual(s[("filexfer_active_transfers", (("protocol", "fx/1"),))], 0)
        self.assertEqual(s[("filexfer_active_transfers", (("protocol", "tftp"),))], 0)
        self.assertEqual(s[("filexfer_refusals_total", (("code", "413"), ("protocol", "fx/1")))], 1)
        self.assertEqual(s[("filexfer_tftp_retransmissions_total", ())], 7)
        for option in ("tsize", "blksize"):
            refusals = ("filexfer_tftp_options_refused_total", (("option", option),))
            self.assertEqual(s[refusals], 1)
        self.assertEqual(s[("filexfer_resumed_bytes_total", ())], 500)
        self.assertEqual(
            s[("filexfer_transfer_duration_seconds_count", (("protocol", "fx/1"),))], 1
        )
        le = (("le", "0.1"), ("protocol", "tftp"))
        self.assertEqual(s[("filexfer_transfer_duration_seconds_bucket", le)], 1)

    def test_labels_never_carry_names_or_addresses(self) -> None:
        """No label value is a path or a peer, whatever the records held."""
        metrics = Metrics()
        for number in range(20):
            metrics.transfer_ended(_record(path=f"f{number}", peer=f"192.0.2.{number}:1"))
        text = generate_latest(metrics.registry).decode()
        self.assertNotIn("192.0.2.", text)
        self.assertNotIn("name.bin", text)
        self.assertNotIn('"f1"', text)


class EventLogTests(unittest.TestCase):
    """The event log: one JSON object per line, reopened under its name."""

    def test_lines_and_reopen(self) -> None:
        """A line per record with the documented fields; after a rename, reopen starts anew."""
        path = os.path.abspath(self.mktemp())
        events = EventLog(path)
        events.open()
        self.addCleanup(events.close)
        events.transfer_ended(_record(path="odd\nname\x00é"))
        os.rename(path, path + ".1")
        events.transfer_ended(_record(outcome="refused", error_code=409))
        events.reopen()
        events.transfer_ended(
            _record(
                protocol="tftp",
                retransmissions=2,
                blksize=512,
                windowsize=4,
                options_refused=("tsize", "blksize"),
            )
        )
        with open(path + ".1") as rotated:
            first, second = (json.loads(line) for line in rotated)
        self.assertEqual(first["path"], "odd\nname\x00é")
        self.assertEqual(first["time"], "2023-11-14T22:13:20.250Z")
        self.assertEqual(
            {k: first[k] for k in ("protocol", "direction", "peer", "bytes", "resumed_offset")},
            {"protocol": "fx/1", "direction": "upload", "peer": "192.0.2.7:40001",
             "bytes": 1000, "resumed_offset": 500},
        )  # fmt: skip
        self.assertEqual(
            {k: first[k] for k in ("stored_path", "seconds", "outcome", "error_code", "sha256")},
            {"stored_path": "secret/name.bin", "seconds": 2.0, "outcome": "stored",
             "error_code": None, "sha256": "ab" * 32},
        )  # fmt: skip
        self.assertNotIn("retransmissions", first)
        self.assertEqual((second["outcome"], second["error_code"]), ("refused", 409))
        with open(path) as fresh:
            [third] = (json.loads(line) for line in fresh)
        self.assertEqual(
            (third["retransmissions"], third["blksize"], third["windowsize"]), (2, 512, 4)
        )
        self.assertEqual(third["options_refused"], ["tsize", "blksize"])


class HookEnvironmentTests(unittest.TestCase):
    """The facts a hook gets, all in FILEXFER_* variables."""

    def test_environment(self) -> None:
        """Path (absolute and relative), size, digest, peer, protocol."""
        env = hook_environment(_record(), "/srv/in")
        self.assertEqual(env["FILEXFER_PATH"], "/srv/in/secret/name.bin")
        self.assertEqual(env["FILEXFER_NAME"], "secret/name.bin")
        self.assertEqual(
            (
                env["FILEXFER_SIZE"],
                env["FILEXFER_SHA256"],
                env["FILEXFER_PEER"],
                env["FILEXFER_PROTOCOL"],
            ),
            ("1500", "ab" * 32, "192.0.2.7:40001", "fx/1"),
        )


class HookCommandTests(unittest.TestCase):
    """Fresh-eyes finding on issue 12: hooks run in the root, so a relative program
    (C{./hook.sh}) must be resolved where the service started, not fail per upload."""

    def test_relative_program_made_absolute(self) -> None:
        here = os.path.abspath(self.mktemp())
        os.makedirs(here)
        hook = os.path.join(here, "hook.sh")
        with open(hook, "w") as handle:
            handle.write("#!/bin/sh\n")
        os.chmod(hook, 0o755)
        before = os.getcwd()
        os.chdir(here)
        self.addCleanup(os.chdir, before)
        self.assertEqual(parse_command("./hook.sh --flag 'a b'"), [hook, "--flag", "a b"])
