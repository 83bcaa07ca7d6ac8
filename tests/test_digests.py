"""The negotiated receipt digest (docs/protocol.md, "Receipt digests"): BLAKE3 when asked.

The wire forms byte by byte, the server's choice (and its refusals), and the
integrity invariants I1-I2 with BLAKE3: the trailer, the prefix digest on a
resume, "already stored" candidates, copies by content and the digest cache
keyed by algorithm.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer._hashing import DIGESTS, hash_prefix, new_hasher
from filexfer._receipt import Receipt
from filexfer.storage import DirectoryStorage
from filexfer.tcp import _wire
from filexfer.tcp.receiver import ReceiverFactory
from filexfer.tcp.sender import SendError, send_file
from filexfer.testing import InMemoryReceiver, MemoryStorage

from .helpers import (
    LOOPBACK,
    blake3_bytes,
    payload,
    run_filexfer,
    sha256_bytes,
    sha256_file,
    start_twistd,
    state_files,
    visible_files,
    write_file,
)
from .test_integrity import MTIME_NS, A, B, IntegrityTestCase

OK0_BLAKE3 = f"ok 0 {blake3_bytes(b'')} blake3\n".encode()
OK0_SHA256 = f"ok 0 {sha256_bytes(b'')} sha256\n".encode()
OK0 = f"ok 0 {sha256_bytes(b'')}\n".encode()
"""C{ok} at offset 0 carries the digest of the empty prefix."""


def _blake3_put(name: str, data: bytes, **fields: Any) -> bytes:
    request = _wire.PutRequest(name, len(data), None, MTIME_NS, trailer=True, digest="blake3")
    return _wire.encode_put(request.__class__(**{**_fields(request), **fields}))


def _fields(request: _wire.PutRequest) -> dict[str, Any]:
    return {
        name: getattr(request, name)
        for name in ("path", "size", "sha256", "mtime_ns", "token", "trailer", "fresh", "digest")
    }


class HasherTests(unittest.TestCase):
    def test_factory_matches_the_reference_digests(self) -> None:
        """new_hasher gives SHA-256 and BLAKE3 as hashlib and the blake3 package compute them."""
        data = bytes(range(256)) * 5000
        expected = {"sha256": sha256_bytes(data), "blake3": blake3_bytes(data)}
        for name in DIGESTS:
            hasher = new_hasher(name)
            hasher.update(data)
            self.assertEqual(hasher.hexdigest(), expected[name], name)
            prefix = hash_prefix(io.BytesIO(data + b"more"), len(data), exact=True, name=name)
            self.assertEqual(prefix.hexdigest(), expected[name], name)

    def test_unknown_digest(self) -> None:
        """An unknown name is a ValueError, not a silent SHA-256."""
        self.assertRaises(ValueError, new_hasher, "md5")


class WireTests(unittest.TestCase):
    def test_digest_header_round_trip(self) -> None:
        """C{Digest: BLAKE3} is sent and read back, fed a byte at a time."""
        block = _blake3_put("a.bin", b"abc")
        self.assertIn(b"\nDigest: BLAKE3\n", block)
        request = None
        for end in range(1, len(block) + 1):
            request, rest = _wire.parse_header_block(block[:end])
            if end < len(block):
                self.assertIsNone(request)
        assert request is not None
        self.assertEqual(request.digest, "blake3")

    def test_digest_needs_trailer_and_one_token(self) -> None:
        """Digest without Trailer, or a list of names, is refused with 400 at the handshake."""
        for block in [
            b"FX/1 PUT a\nSize: 3\nDigest: BLAKE3\n\n",
            b"FX/1 PUT a\nSize: 3\nTrailer: SHA256\nDigest: BLAKE3 SHA256\n\n",
        ]:
            with self.assertRaises(TransferError) as caught:
                _wire.parse_header_block(block)
            self.assertEqual(caught.exception.code, 400)

    def test_unknown_digest_kept_for_the_server_to_decline(self) -> None:
        """A digest this server does not know is read (and declined later), not refused."""
        block = b"FX/1 PUT a\nSize: 3\nTrailer: SHA256\nDigest: K12\n\n"
        request, _ = _wire.parse_header_block(block)
        assert request is not None
        self.assertEqual(request.digest, "k12")

    def test_ok_names_the_digest(self) -> None:
        """C{ok <offset> <prefix|-> <digest>} parses, and so does the old three-field form."""
        hexdigest = blake3_bytes(b"ab")
        line = _wire.encode_ok(2, hexdigest, trailer=True, digest="blake3")
        self.assertEqual(line, f"ok 2 {hexdigest} blake3\n".encode())
        self.assertEqual(
            _wire.parse_reply(line[:-1]), _wire.Ok(2, hexdigest, trailer=True, digest="blake3")
        )
        self.assertEqual(_wire.parse_reply(b"ok 0 -"), _wire.Ok(0, None, trailer=True))
        self.assertRaises(ValueError, _wire.parse_reply, b"ok 0 - md5")

    def test_done_labelled(self) -> None:
        """C{done <size> blake3:<hex> <path>} reads as a BLAKE3 receipt; unlabelled is SHA-256."""
        hexdigest = blake3_bytes(b"abc")
        line = _wire.encode_done(3, hexdigest, "a b/c", "blake3")
        self.assertEqual(line, f"done 3 blake3:{hexdigest} a b/c\n".encode())
        self.assertEqual(_wire.parse_reply(line[:-1]), Receipt(3, hexdigest, "a b/c", "blake3"))
        plain = _wire.parse_reply(f"done 3 {hexdigest} x".encode())
        self.assertEqual(plain, Receipt(3, hexdigest, "x", "sha256"))
        for bad in [f"done 3 md5:{hexdigest} x", f"done 3 :{hexdigest} x", "done 3 blake3:ab x"]:
            self.assertRaises(ValueError, _wire.parse_reply, bad.encode())

    def test_trailer_names_its_digest(self) -> None:
        """The trailer line carries the chosen digest's name; the other one's is refused."""
        hexdigest = blake3_bytes(b"abc")
        line = _wire.encode_trailer(hexdigest, "blake3")
        self.assertEqual(line, f"BLAKE3: {hexdigest}\n".encode())
        self.assertEqual(_wire.parse_trailer(line[:-1], "blake3"), hexdigest)
        self.assertRaises(TransferError, _wire.parse_trailer, line[:-1])  # SHA256 expected
        sha_line = _wire.encode_trailer(sha256_bytes(b"abc"))[:-1]
        self.assertRaises(TransferError, _wire.parse_trailer, sha_line, "blake3")

    def test_trailer_that_is_not_text(self) -> None:
        """Fresh-eyes finding on issue 16: bytes that are not UTF-8 after Size were
        reported as "handshake is not valid UTF-8"; the error says which line it expected."""
        for digest, field in (("sha256", "SHA256"), ("blake3", "BLAKE3")):
            error = self.assertRaises(
                TransferError, _wire.parse_trailer, b"\xff\xfe" + b"0" * 64, digest
            )
            self.assertEqual(
                (error.code, error.reason),
                (400, f"expected the trailer line '{field}: <64 hex digits>'"),
            )


class NegotiationTests(IntegrityTestCase):
    def test_blake3_byte_by_byte(self) -> None:
        """Asked for, BLAKE3 is named in ok, checked in the trailer and labelled in done."""
        protocol, transport = self.connect()
        for byte in _blake3_put("b.bin", A):
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(transport.value(), OK0_BLAKE3)
        for byte in A[:100] + b"":
            protocol.dataReceived(bytes([byte]))
        protocol.dataReceived(A[100:])
        for byte in _wire.encode_trailer(blake3_bytes(A), "blake3"):
            protocol.dataReceived(bytes([byte]))
        done = f"done {len(A)} blake3:{blake3_bytes(A)} b.bin\n".encode()
        self.assertEqual(transport.value(), OK0_BLAKE3 + done)
        self.assertEqual(self.stored("b.bin"), A)

    def test_wrong_blake3_trailer_stores_nothing(self) -> None:
        """I1: a BLAKE3 trailer the bytes do not hash to is 422, and no file appears."""
        protocol, transport = self.connect()
        protocol.dataReceived(_blake3_put("b.bin", A))
        protocol.dataReceived(A + _wire.encode_trailer(blake3_bytes(B), "blake3"))
        self.assertIn(b"\nerror 422 ", transport.value())
        self.assertEqual(visible_files(self.root), [])

    def test_sha256_trailer_after_blake3_chosen(self) -> None:
        """The trailer must be the chosen digest: a SHA256 line after ok blake3 is 400."""
        protocol, transport = self.connect()
        protocol.dataReceived(_blake3_put("b.bin", A))
        protocol.dataReceived(A + _wire.encode_trailer(sha256_bytes(A)))
        self.assertIn(b"\nerror 400 ", transport.value())
        self.assertEqual(visible_files(self.root), [])

    def test_declined_without_the_digest(self) -> None:
        """A store that computes only SHA-256 declines: ok and done name SHA-256."""
        factory = ReceiverFactory(MemoryStorage(), clock=self.clock)
        self.factory = factory
        protocol, transport = self.connect()
        protocol.dataReceived(_blake3_put("m.bin", A))
        protocol.dataReceived(A + _wire.encode_trailer(sha256_bytes(A)))
        done = f"done {len(A)} sha256:{sha256_bytes(A)} m.bin\n".encode()
        self.assertEqual(transport.value(), OK0_SHA256 + done)

    def test_declined_with_an_announced_sha256(self) -> None:
        """A client that announces its SHA256 up front gets SHA-256 (that digest is its proof)."""
        protocol, transport = self.connect()
        protocol.dataReceived(_blake3_put("s.bin", A, sha256=sha256_bytes(A)))
        self.assertEqual(transport.value(), OK0_SHA256)

    def test_declined_unknown_digest(self) -> None:
        """A digest the server does not know is declined, not refused."""
        protocol, transport = self.connect()
        protocol.dataReceived(_blake3_put("k.bin", A, digest="k12"))
        self.assertEqual(transport.value(), OK0_SHA256)

    def test_client_that_did_not_ask_is_unchanged(self) -> None:
        """Without Digest the replies are as before BLAKE3: three-field ok, unlabelled done (I3)."""
        protocol, transport = self.connect()
        request = _wire.PutRequest("o.bin", len(A), None, MTIME_NS, trailer=True)
        protocol.dataReceived(_wire.encode_put(request))
        protocol.dataReceived(A + _wire.encode_trailer(sha256_bytes(A)))
        done = _wire.encode_done(len(A), sha256_bytes(A), "o.bin")
        self.assertEqual(transport.value(), OK0 + done)


class ResumeTests(IntegrityTestCase):
    def test_prefix_digest_is_blake3(self) -> None:
        """On a resume, ok carries the BLAKE3 of the held prefix (I1's prefix check)."""
        self.cut_upload("r.bin", A, 40_000, trailer=True)
        protocol, transport = self.connect()
        protocol.dataReceived(_blake3_put("r.bin", A))
        prefix = blake3_bytes(A[:40_000])
        self.assertEqual(transport.value(), f"ok 40000 {prefix} blake3\n".encode())
        protocol.dataReceived(A[40_000:] + _wire.encode_trailer(blake3_bytes(A), "blake3"))
        self.assertTrue(transport.value().endswith(b" r.bin\n"), transport.value())
        self.assertEqual(self.stored("r.bin"), A)

    def test_changed_file_resumes_from_zero(self) -> None:
        """Held As, the file now Bs: send_file sees the BLAKE3 prefix differ and restarts."""
        self.cut_upload("r.bin", A, 40_000, trailer=True)
        path = self.local_file("r.bin", B)
        receipt = self.successResultOf(self.send_blake3(path))
        self.assertEqual(receipt, Receipt(len(B), blake3_bytes(B), "r.bin", "blake3"))
        self.assertEqual(self.stored("r.bin"), B)
        self.assertEqual(state_files(self.root, "partial"), [])

    def test_stale_prefix_never_placed_by_blake3_trailer(self) -> None:
        """A client ignoring the prefix digest: its BLAKE3 trailer refuses the mixed file."""
        self.cut_upload("r.bin", A, 40_000, trailer=True)
        protocol, transport = self.connect()
        protocol.dataReceived(_blake3_put("r.bin", B))
        protocol.dataReceived(B[40_000:] + _wire.encode_trailer(blake3_bytes(B), "blake3"))
        self.assertIn(b"\nerror 422 ", transport.value())
        self.assertEqual(visible_files(self.root), [])

    def send_blake3(self, path: str) -> Any:
        result = send_file(self.clock, self.endpoint, path, digest="blake3")
        for _ in range(5):
            for pump in self.endpoint.pumps:
                pump.flush()
        return result


class StoredCandidateTests(IntegrityTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.secret = b"secret contents"
        # stored by a SHA-256 client: the cache holds its SHA-256 only
        self.successResultOf(self.send(self.local_file("s.txt", self.secret)))

    def ask(self, trailer_digest: str) -> bytes:
        protocol, transport = self.connect()
        protocol.dataReceived(_blake3_put("s.txt", self.secret))
        protocol.dataReceived(_wire.encode_trailer(trailer_digest, "blake3"))
        protocol.connectionLost(Failure(ConnectionDone()))
        return bytes(transport.value())

    def test_candidate_proved_by_blake3(self) -> None:
        """I2: Size and Mtime match; the right BLAKE3 trailer gets a labelled done, nothing sent."""
        right = blake3_bytes(self.secret)
        reply = self.ask(right)
        self.assertEqual(reply, f"ok 15 - blake3\ndone 15 blake3:{right} s.txt\n".encode())
        self.assertEqual(visible_files(self.root), ["s.txt"])

    def test_wrong_guess_learns_nothing(self) -> None:
        """I2: a wrong BLAKE3 is 422; neither the file's SHA-256 nor its BLAKE3 is told."""
        reply = self.ask(blake3_bytes(b"a guess"))
        self.assertTrue(reply.startswith(b"ok 15 - blake3\nerror 422 "), reply)
        for secret in (sha256_bytes(self.secret), blake3_bytes(self.secret)):
            self.assertNotIn(secret.encode(), reply)

    def test_sha256_in_the_cache_never_answers_for_blake3(self) -> None:
        """The digest cache keys by algorithm: the SHA-256 stored for s.txt proves nothing here."""
        reply = self.ask(sha256_bytes(self.secret))
        self.assertIn(b"\nerror 422 ", reply)

    def test_cache_keeps_both_digests(self) -> None:
        """After a BLAKE3 check of a SHA-256-cached file, its record holds both digests."""
        self.ask(blake3_bytes(self.secret))
        folder = os.path.join(self.root, ".filexfer", "digests")
        [record_file] = os.listdir(folder)
        with open(os.path.join(folder, record_file)) as handle:
            record = json.load(handle)
        self.assertEqual(
            record["digests"],
            {"sha256": sha256_bytes(self.secret), "blake3": blake3_bytes(self.secret)},
        )

    def test_legacy_record_read_as_sha256(self) -> None:
        """A record written before BLAKE3 (a top-level sha256) still answers for SHA-256."""
        folder = os.path.join(self.root, ".filexfer", "digests")
        [record_file] = os.listdir(folder)
        path = os.path.join(folder, record_file)
        with open(path) as handle:
            record = json.load(handle)
        legacy = {k: v for k, v in record.items() if k != "digests"}
        legacy["sha256"] = sha256_bytes(self.secret)
        with open(path, "w") as handle:
            json.dump(legacy, handle)
        info = os.stat(os.path.join(self.root, "s.txt"))
        self.assertEqual(
            self.storage._digests.digest("s.txt", info, "sha256"), sha256_bytes(self.secret)
        )
        self.assertIsNone(self.storage._digests.digest("s.txt", info, "blake3"))


class CopiesByContentTests(IntegrityTestCase):
    def test_identical_copy_found_by_blake3(self) -> None:
        """Content sent again with a new Mtime under BLAKE3 names the copy already stored."""
        first = self.successResultOf(self.send_blake3(self.local_file("c.txt", b"same")))
        again = self.local_file("c.txt", b"same", MTIME_NS + 5 * 10**9)
        second = self.successResultOf(self.send_blake3(again))
        self.assertEqual((first.path, second.path, second.algorithm), ("c.txt", "c.txt", "blake3"))
        self.assertEqual(visible_files(self.root), ["c.txt"])

    send_blake3 = ResumeTests.send_blake3


class SenderTests(unittest.TestCase):
    def test_send_file_blake3_end_to_end(self) -> None:
        """send_file(digest='blake3') to a DirectoryStorage: a BLAKE3 receipt, verified."""
        root = os.path.abspath(self.mktemp())
        receiver = InMemoryReceiver(DirectoryStorage(root))
        local = self._local(b"x" * 300_000)
        receipt = self.successResultOf(receiver.send_file(local, digest="blake3"))
        self.assertEqual(receipt, Receipt(300_000, blake3_bytes(b"x" * 300_000), "f.bin", "blake3"))

    def test_send_file_declined(self) -> None:
        """The same client against a SHA-256-only store verifies with SHA-256."""
        receiver = InMemoryReceiver(MemoryStorage())
        receipt = self.successResultOf(receiver.send_file(self._local(b"abc"), digest="blake3"))
        self.assertEqual(receipt, Receipt(3, sha256_bytes(b"abc"), "f.bin", "sha256"))

    def test_done_must_carry_the_chosen_digest(self) -> None:
        """ok chose BLAKE3 but done carries SHA-256 (even the right one): a SendError."""
        for ok, done in [
            (OK0_BLAKE3, _wire.encode_done(3, sha256_bytes(b"abc"), "f.bin", "sha256")),
            (OK0_BLAKE3, _wire.encode_done(3, sha256_bytes(b"abc"), "f.bin")),
            (OK0_SHA256, _wire.encode_done(3, blake3_bytes(b"abc"), "f.bin", "blake3")),
        ]:
            failure = self._by_hand(ok, done, digest="blake3")
            self.assertIsInstance(failure.value, SendError, (ok, done))

    def test_unasked_digest_refused(self) -> None:
        """A server naming BLAKE3 to a client that did not ask for it is out of step."""
        failure = self._by_hand(OK0_BLAKE3, b"", digest="sha256")
        self.assertIn("not asked for", str(failure.value))

    def _by_hand(self, ok: bytes, done: bytes, digest: str) -> Failure:
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from filexfer.tcp.sender import SenderProtocol

        data = b"abc"
        local = self._local(data)
        request = _wire.PutRequest(
            "f.bin", 3, None, None, trailer=True, digest=None if digest == "sha256" else digest
        )
        with open(local, "rb") as handle:
            protocol = SenderProtocol(handle, 3, request, None, Clock(), 30.0)
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(ok)
            if transport.producer is not None:
                transport.producer.resumeProducing()  # one pull sends all 3 bytes
            if done:
                protocol.dataReceived(done)
        results: list[Any] = []
        protocol.result.addBoth(results.append)
        [failure] = results
        self.assertIsInstance(failure, Failure)
        return failure

    def _local(self, data: bytes) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "f.bin")
        with open(path, "wb") as handle:
            handle.write(data)
        return path


@pytest.mark.integration
class CommandTests(unittest.TestCase):
    def test_send_names_the_digest_it_verified(self) -> None:
        """filexfer send verifies with BLAKE3 by default, with SHA-256 under --digest sha256."""
        root = os.path.abspath(self.mktemp())
        server = start_twistd(self, root)
        data = payload(300_000, seed=3)
        local = write_file(os.path.join(os.path.abspath(self.mktemp()), "d.bin"), data)
        dest = f"{LOOPBACK}:{server.port}"
        default = run_filexfer("send", "--no-progress", local, dest)
        self.assertEqual(default.returncode, 0, default.stderr)
        self.assertIn("300000 bytes stored and verified with BLAKE3", default.stdout)
        old = run_filexfer("send", "--no-progress", "--digest", "sha256", local, f"{dest}/old")
        self.assertEqual(old.returncode, 0, old.stderr)
        self.assertIn("300000 bytes stored and verified with SHA-256", old.stdout)
        for stored in ("d.bin", "old/d.bin"):
            self.assertEqual(sha256_file(os.path.join(root, stored)), sha256_bytes(data))
