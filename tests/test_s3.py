"""S3Storage against moto's S3 server on loopback: the storage rules, kept on an object store."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import pytest
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer.storage import IReadSource, IStorage, IUpload, Receipt, S3Storage
from filexfer.storage.s3 import MIN_PART_SIZE, default_client_factory, parse_s3_url
from filexfer.testing import ManualRunner

from .helpers import free_port

boto3 = pytest.importorskip("boto3", reason="the s3 extra: pip install 'filexfer[s3]'")
moto_server = pytest.importorskip("moto.server", reason="the test extra: moto[server]")

PART = MIN_PART_SIZE
MTIME_NS = 1_600_000_000_000_000_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Paused:
    """A push producer that records being paused."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


class S3TestCase(unittest.TestCase):
    server: ClassVar[Any]
    endpoint: ClassVar[str]
    bucket_number = 0

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        cls.server.start()
        host, port = cls.server.get_host_and_port()
        cls.endpoint = f"http://{host}:{port}"

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def setUp(self) -> None:
        self.patch_env()
        S3TestCase.bucket_number += 1
        self.bucket = f"bucket-{S3TestCase.bucket_number}"
        self.s3 = default_client_factory(self.endpoint, "us-east-1")()
        self.s3.create_bucket(Bucket=self.bucket)
        self.now = 1_000_000.0

    def patch_env(self) -> None:
        import os

        for name, value in (
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_CONFIG_FILE", os.devnull),
            ("AWS_SHARED_CREDENTIALS_FILE", os.devnull),
        ):
            old = os.environ.get(name)
            os.environ[name] = value
            self.addCleanup(_restore, name, old)

    def node(self, **kwargs: Any) -> S3Storage:
        """One filexfer node's storage on the shared bucket."""
        kwargs.setdefault("part_size", PART)
        endpoint = kwargs.pop("endpoint", self.endpoint)
        return S3Storage(
            kwargs.pop("bucket", self.bucket),
            kwargs.pop("prefix", "in/"),
            kwargs.pop("on_conflict", "rename"),
            client_factory=default_client_factory(endpoint, "us-east-1"),
            now=lambda: self.now,
            **kwargs,
        )

    def objects(self) -> dict[str, bytes]:
        """Every final object under the prefix (state excluded): key -> bytes."""
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="in/").get("Contents", [])
        return {
            entry["Key"][3:]: self.s3.get_object(Bucket=self.bucket, Key=entry["Key"])[
                "Body"
            ].read()
            for entry in listed
            if not entry["Key"].startswith("in/.filexfer/")
        }

    def begin(self, storage: S3Storage, path: str, data: bytes, **kwargs: Any) -> IUpload:
        kwargs.setdefault("sha256", sha(data))
        begun = storage.begin(path, len(data), kwargs.pop("sha256"), MTIME_NS, **kwargs)
        return self.successResultOf(begun)

    def store(self, storage: S3Storage, path: str, data: bytes, **kwargs: Any) -> Receipt:
        upload = self.begin(storage, path, data, **kwargs)
        for start in range(upload.offset, len(data), 1 << 20):
            upload.write(data[start : start + (1 << 20)])
        return self.successResultOf(upload.finish())

    def refused(self, deferred: Deferred[Any], code: int) -> TransferError:
        error = self.failureResultOf(deferred, TransferError).value
        self.assertEqual(error.code, code, error.reason)
        return error


def _restore(name: str, value: str | None) -> None:
    import os

    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class UploadTests(S3TestCase):
    def test_provides_interfaces(self) -> None:
        """S3Storage is an IStorage; its uploads are IUploads."""
        storage = self.node()
        self.assertTrue(IStorage.providedBy(storage))
        self.assertTrue(IUpload.providedBy(self.begin(storage, "a", b"x")))

    def test_small_file(self) -> None:
        """A small file lands intact, its SHA-256 and Mtime in the object's metadata."""
        receipt = self.store(self.node(), "dir/a.txt", b"hello")
        self.assertEqual(receipt, Receipt(5, sha(b"hello"), "dir/a.txt"))
        self.assertEqual(self.objects(), {"dir/a.txt": b"hello"})
        head = self.s3.head_object(Bucket=self.bucket, Key="in/dir/a.txt")
        self.assertEqual(head["Metadata"], {"sha256": sha(b"hello"), "mtime-ns": str(MTIME_NS)})

    def test_empty_file(self) -> None:
        """An empty file is stored."""
        self.assertEqual(self.store(self.node(), "empty", b"").size, 0)
        self.assertEqual(self.objects(), {"empty": b""})

    def test_several_parts_without_size(self) -> None:
        """Without Size the parts still follow each other; the object is intact."""
        data = bytes(range(256)) * (PART * 2 // 256 + 999)
        upload = self.successResultOf(self.node().begin("big", None, None, None))
        for start in range(0, len(data), 65536):
            upload.write(data[start : start + 65536])
        receipt = self.successResultOf(upload.finish())
        self.assertEqual((receipt.size, receipt.sha256), (len(data), sha(data)))
        self.assertEqual(self.objects()["big"], data)

    def test_back_pressure(self) -> None:
        """While a part is being uploaded and another is full, the producer is paused."""
        runner = ManualRunner()
        storage = self.node(run_blocking=runner)
        data = b"p" * (PART * 2 + 10)
        begun = storage.begin("bp", len(data), sha(data), None)
        runner.run_all()
        upload = self.successResultOf(begun)
        producer = Paused()
        upload.registerProducer(producer, True)  # type: ignore[attr-defined]
        upload.write(data[:PART])  # the first part goes to the pool
        self.assertEqual(producer.paused, 0)
        upload.write(data[PART : 2 * PART])  # a second full part waits: pause
        self.assertEqual(producer.paused, 1)
        runner.run_all()
        self.assertEqual(producer.resumed, 1)
        upload.write(data[2 * PART :])
        finishing = upload.finish()
        runner.run_all()
        self.assertEqual(self.successResultOf(finishing).sha256, sha(data))

    def test_max_size(self) -> None:
        """Bytes beyond --max-size are refused (413) as they arrive, without Size."""
        storage = self.node(max_size=10)
        self.refused(storage.begin("m", 11, None, None), 413)
        upload = self.successResultOf(storage.begin("m", None, None, None))
        upload.write(b"x" * 10)
        self.assertRaises(TransferError, upload.write, b"y")
        upload.abort(False)
        self.assertEqual(self.objects(), {})

    def test_digest_mismatch_nothing_stored(self) -> None:
        """I1: a trailer that differs from the bytes stores nothing (422)."""
        upload = self.begin(self.node(), "f", b"abc", sha256=None, trailer=True)
        upload.write(b"abc")
        self.refused(upload.finish(sha(b"abd")), 422)
        self.assertEqual(self.objects(), {})

    def test_bad_path(self) -> None:
        """Paths into the state prefix and escaping ones are refused."""
        self.refused(self.node().begin(".filexfer/x", 1, None, None), 403)
        self.refused(self.node().begin("../x", 1, None, None), 400)


class ConflictTests(S3TestCase):
    def test_rename(self) -> None:
        """rename keeps both: the second file gets 'name (1).ext'."""
        storage = self.node()
        self.store(storage, "r.txt", b"one")
        self.assertEqual(self.store(self.node(), "r.txt", b"two").path, "r (1).txt")
        self.assertEqual(self.objects(), {"r.txt": b"one", "r (1).txt": b"two"})

    def test_refuse(self) -> None:
        """refuse answers 409 at begin, and at placing when another node took the name first."""
        storage = self.node(on_conflict="refuse")
        first = self.begin(storage, "x", b"late")
        self.store(self.node(on_conflict="refuse"), "x", b"first")
        self.refused(self.node(on_conflict="refuse").begin("x", 3, sha(b"new"), None), 409)
        first.write(b"late")
        self.refused(first.finish(), 409)
        self.assertEqual(self.objects(), {"x": b"first"})

    def test_rename_at_placing(self) -> None:
        """A name taken while the upload streamed gets the next free number."""
        slow = self.begin(self.node(), "y", b"slow")
        self.store(self.node(), "y", b"fast")
        slow.write(b"slow")
        self.assertEqual(self.successResultOf(slow.finish()).path, "y (1)")

    def test_exact_name_never_renamed(self) -> None:
        """TFTP (exact_name): under rename an existing name is refused (409), never renamed."""
        self.store(self.node(), "boot.img", b"old")
        self.refused(self.node().begin("boot.img", 3, None, None, exact_name=True), 409)
        upload = self.successResultOf(self.node().begin("late.img", 3, None, None, exact_name=True))
        self.store(self.node(), "late.img", b"one")
        upload.write(b"two")
        self.refused(upload.finish(), 409)
        self.assertEqual(self.objects(), {"boot.img": b"old", "late.img": b"one"})

    def test_overwrite(self) -> None:
        """overwrite replaces."""
        self.store(self.node(), "o", b"old")
        self.store(self.node(on_conflict="overwrite"), "o", b"new")
        self.assertEqual(self.objects(), {"o": b"new"})

    def test_already_stored_by_digest(self) -> None:
        """Re-sending the same content (SHA256) to another node is answered with the copy."""
        self.store(self.node(), "same", b"content")
        self.store(self.node(), "same", b"other!!")
        upload = self.begin(self.node(), "same", b"other!!")
        self.assertEqual(upload.stored, Receipt(7, sha(b"other!!"), "same (1)"))

    def test_candidate_needs_trailer(self) -> None:
        """I2: Size and Mtime alone answer nothing; the trailer proves the copy."""
        self.store(self.node(), "c", b"12345")
        upload = self.begin(self.node(), "c", b"12345", sha256=None, trailer=True)
        self.assertIsNone(upload.stored)
        self.assertIsNone(upload.prefix_sha256)
        self.assertEqual(self.successResultOf(upload.finish(sha(b"12345"))).path, "c")
        other = self.begin(self.node(), "c", b"54321", sha256=None, trailer=True)
        self.refused(other.finish(sha(b"54321")), 422)


class ResumeTests(S3TestCase):
    def test_resume_on_another_node(self) -> None:
        """An upload cut on node A resumes on node B at a part boundary, with the prefix digest."""
        data = bytes(range(251)) * (PART * 2 // 251)
        upload = self.begin(self.node(), "r.bin", data)
        upload.write(data[:PART])  # a full part: stored
        upload.write(data[PART : PART + 1000])  # in memory only: lost with the node
        upload.abort(keep_partial=True)
        resumed = self.begin(self.node(), "r.bin", data)
        self.assertEqual(resumed.offset, PART)
        self.assertEqual(resumed.prefix_sha256, sha(data[:PART]))
        resumed.write(data[PART:])
        self.assertEqual(self.successResultOf(resumed.finish()).sha256, sha(data))
        self.assertEqual(self.objects(), {"r.bin": data})
        state = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="in/.filexfer/")
        left = [entry["Key"].split("/")[2] for entry in state.get("Contents", [])]
        self.assertEqual(left, ["names"])  # the name's claim only; no upload, sidecar, lease

    def test_resume_by_mtime_and_trailer(self) -> None:
        """Without SHA256, Size+Mtime+trailer resumes; a different file is refused (I1)."""
        data = b"m" * (PART + 5)
        upload = self.begin(self.node(), "t", data, sha256=None, trailer=True)
        upload.write(data[:PART])
        upload.abort(keep_partial=True)
        changed = b"n" * len(data)
        resumed = self.begin(self.node(), "t", changed, sha256=None, trailer=True)
        self.assertEqual(resumed.offset, PART)
        resumed.write(changed[PART:])
        error = self.refused(resumed.finish(sha(changed)), 422)
        self.assertIn("send it again from the start", error.reason)
        self.assertEqual(self.objects(), {})
        self.assertEqual(self.begin(self.node(), "t", data, sha256=None, trailer=True).offset, 0)

    def test_fresh(self) -> None:
        """fresh ignores held parts."""
        data = b"f" * (PART + 1)
        upload = self.begin(self.node(), "f", data)
        upload.write(data[:PART])
        upload.abort(keep_partial=True)
        self.assertEqual(self.begin(self.node(), "f", data, fresh=True).offset, 0)

    def test_discarded(self) -> None:
        """abort without keeping leaves nothing to resume and no multipart upload."""
        data = b"d" * (PART + 1)
        upload = self.begin(self.node(), "d", data)
        upload.write(data[:PART])
        upload.abort(keep_partial=False)
        self.assertEqual(self.begin(self.node(), "d", data).offset, 0)
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        self.assertEqual(len(uploads), 1)  # the new one only


class LeaseTests(S3TestCase):
    def test_second_upload_of_same_identity_refused(self) -> None:
        """Two nodes receiving the same path and identity at once: the second gets 409."""
        data = b"l" * 100
        first = self.begin(self.node(), "l", data)
        self.refused(self.node().begin("l", 100, sha(data), None), 409)
        first.write(data)
        self.successResultOf(first.finish())
        self.assertEqual(self.objects(), {"l": data})

    def test_expired_lease_is_taken(self) -> None:
        """A lease whose node died expires: another node takes the upload over."""
        data = b"e" * (PART + 1)
        first = self.begin(self.node(lease_seconds=60), "e", data)
        first.write(data[:PART])  # then the node dies: no abort, no release
        self.now += 61
        resumed = self.begin(self.node(), "e", data)
        self.assertEqual(resumed.offset, PART)
        del first

    def test_stale_uploads_removed(self) -> None:
        """remove_stale aborts uploads and deletes sidecars older than max_age."""
        data = b"s" * (PART + 1)
        upload = self.begin(self.node(), "s", data)
        upload.write(data[:PART])
        upload.abort(keep_partial=True)
        storage = self.node()
        self.assertEqual(storage.remove_stale(3600), 0)
        import time

        removed = storage.remove_stale(3600, now=time.time() + 7200)
        self.assertGreaterEqual(removed, 2)
        self.assertEqual(self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []), [])
        self.assertEqual(self.begin(self.node(), "s", data).offset, 0)


class ReadTests(S3TestCase):
    def test_read_in_ranges(self) -> None:
        """open_read gives the size (HEAD) and the bytes in order (ranged GETs, read ahead)."""
        data = bytes(range(256)) * 5000
        self.store(self.node(), "p/r", data)
        source = self.successResultOf(self.node().open_read("p/r"))
        self.assertTrue(IReadSource.providedBy(source))
        self.assertEqual(source.size, len(data))
        got = b""
        for _ in range(100):
            chunk = self.successResultOf(source.read(300_000))
            if not chunk:
                break
            self.assertLessEqual(len(chunk), 300_000)
            got += chunk
        source.close()
        self.assertEqual(got, data)

    def test_missing(self) -> None:
        """An absent object is 404; a bad path 400."""
        self.refused(self.node().open_read("nope"), 404)
        self.refused(self.node().open_read("../x"), 400)


class BadStoreTests(S3TestCase):
    def test_unreachable(self) -> None:
        """A store nobody listens on: 503 at once, nothing hangs."""
        storage = self.node(endpoint=f"http://127.0.0.1:{free_port()}")
        error = self.refused(storage.begin("u", 1, None, None), 503)
        self.assertIn("unreachable", error.reason)
        self.refused(storage.open_read("u"), 503)

    def test_missing_bucket(self) -> None:
        """A bucket that does not exist: 503 naming it."""
        storage = self.node(bucket="no-such-bucket")
        error = self.refused(storage.begin("u", 1, None, None), 503)
        self.assertIn("bucket", error.reason)
        self.refused(storage.check_bucket(), 503)
        # Fresh-eyes finding: the hourly cleanup printed a botocore traceback here.
        removing = self.assertRaises(TransferError, storage.remove_stale, 3600)
        self.assertEqual(removing.code, 503)

    def test_part_rejected(self) -> None:
        """The store refusing a part: the upload fails with 503, nothing under the name."""
        storage = self.node()
        data = b"z" * (PART + 1)
        upload = self.begin(storage, "z", data)
        real = storage.client

        class Refusing:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def upload_part(self, **kwargs: Any) -> Any:
                return real.upload_part(**{**kwargs, "UploadId": "no-such-upload"})

        storage._client = Refusing()
        upload.write(data[:PART])
        self.assertRaises(TransferError, upload.write, data[PART:])
        self.refused(upload.finish(), 503)
        self.assertEqual(self.objects(), {})


class URLTests(unittest.TestCase):
    def test_parse(self) -> None:
        """s3://BUCKET[/PREFIX] -> bucket and a prefix ending in '/'."""
        self.assertEqual(parse_s3_url("s3://bkt"), ("bkt", ""))
        self.assertEqual(parse_s3_url("s3://bkt/a/b/"), ("bkt", "a/b/"))
        for bad in ("bkt", "s3://", "s3://a", "s3://bkt/../x", "s3://b_k"):
            self.assertRaises(ValueError, parse_s3_url, bad)


class TFTPFromS3Tests(S3TestCase):
    def test_rrq_through_the_read_chain(self) -> None:
        """S3 storage is the TFTP root: the read chain serves its objects (a leading / too),
        after a source of its own; a missing object is ERROR 1."""
        from filexfer.testing import FakeUDPNetwork
        from filexfer.tftp import TemplateSource, TFTPServerProtocol
        from filexfer.tftp import _packets as p
        from filexfer.tftp.sources import RootSource

        data = bytes(range(256)) * 40
        self.store(self.node(), "boot/kernel", data)
        net = FakeUDPNetwork()
        storage = self.node()
        server = TFTPServerProtocol(
            storage=storage,
            reactor=net,
            sources=[TemplateSource("boot.ipxe", "#!ipxe\necho {client}\n"), RootSource(storage)],
        )
        main = net.listenUDP(69, server, interface="127.0.0.1")
        client = ("127.0.0.1", 50000)

        def read(name: bytes) -> bytes | p.Error:
            before = len(net.ports)
            main.receive(p.encode(p.ReadRequest(name, "octet")), client)
            if len(net.ports) == before:
                (error,) = [p.decode(d) for d, _ in main.sent]
                main.sent.clear()
                assert isinstance(error, p.Error)
                return error
            port = net.ports[-1]
            got = b""
            for _ in range(100):
                (packet,) = [p.decode(d) for d, _ in port.sent]
                port.sent.clear()
                assert isinstance(packet, p.Data), packet
                got += packet.payload
                port.receive(p.encode(p.Ack(packet.block)), client)
                if len(packet.payload) < 512:
                    break
            return got

        self.assertEqual(read(b"/boot/kernel"), data)
        self.assertEqual(read(b"boot.ipxe"), b"#!ipxe\necho 127.0.0.1\n")
        missing = read(b"boot/none")
        assert isinstance(missing, p.Error)
        self.assertEqual(missing.code, p.FILE_NOT_FOUND)
        # the default chain is the storage alone
        alone = TFTPServerProtocol(storage=storage, reactor=net)
        self.assertEqual([type(source) for source in alone.sources], [RootSource])
