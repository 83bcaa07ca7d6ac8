"""L{S3Storage}: files as objects in one bucket of an S3-API object store.

Several filexfer nodes may share one bucket (SeaweedFS, MinIO, Ceph RGW,
AWS S3); the rules are those of L{filexfer.storage.DirectoryStorage}
(docs/protocol.md §1.2.0 and §1.3), kept with the store's own means:

 - every upload is a multipart upload to a private key under
   C{PREFIX.filexfer/}; parts are at least L{MIN_PART_SIZE} bytes (the
   S3 minimum, the last part excepted) and at most about two parts of an
   upload are in memory: the producer (the socket) is paused meanwhile;
 - the SHA-256 is computed as bytes arrive, with a hasher whose state
   can be saved (C{resumablesha256}); after every part the state is
   written to a small sidecar object beside the upload, so that a
   re-send reaching I{any} node finds the upload by path and file
   identity, checks its parts (ListParts) and answers C{ok <offset>
   <prefix digest>} without reading the parts back (S3 cannot read the
   parts of an unfinished upload);
 - a finished upload is completed under its private key, then copied
   server-side (UploadPartCopy) into a multipart upload at the final name,
   completed with C{If-None-Match: *}: a name another node took first is
   never overwritten; C{rename} tries the next numbered name, C{refuse}
   answers 409, C{overwrite} completes without the condition;
 - one upload of a path and identity at a time, across nodes: a lease
   object written with C{If-None-Match: *}, with an expiry (409 while
   another node holds it);
 - the SHA-256 and the announced Mtime of a stored object are in its
   metadata (C{x-amz-meta-sha256}, C{x-amz-meta-mtime-ns}), so that
   "already stored" needs one HEAD;
 - reads are asynchronous: a HEAD for the size, ranged GETs with
   read-ahead (L{S3ReadSource}).

Every call to the store is blocking (boto3) and goes through C{run_blocking},
which the service points at a bounded thread pool of its own.  The client
is made on first use, in the process that uses it (after C{--workers}
forks).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IReactorTime,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._hashing import DEFAULT_DIGEST, DigestName
from filexfer._log import log
from filexfer._mtime import check_mtime
from filexfer._names import STATE_DIR, validate_path
from filexfer.storage._backlog import Backlog
from filexfer.storage._disk import run_here
from filexfer.storage._interfaces import (
    CONFLICT_POLICIES,
    BlockingRunner,
    ConflictPolicy,
    IReadSource,
    IStorage,
    IUpload,
    Receipt,
    policy_for,
)
from filexfer.storage._rules import (
    MAX_RENAME_TRIES,
    candidate_names,
    check_finished,
    check_max_size,
    judge_stored,
    resume_identity,
    wanted_copies,
)

MIN_PART_SIZE = 5 << 20
"""The smallest part S3 accepts, except the last one of an upload."""
DEFAULT_PART_SIZE = 8 << 20
COPY_PART_SIZE = 1 << 30
"""Bytes per server-side UploadPartCopy when placing (S3 allows 5 MiB-5 GiB)."""
DEFAULT_LEASE_SECONDS = 30.0
"""How long a lease holds unrenewed: a node killed mid-upload blocks a resume that long."""
CLAIM_SECONDS = 3600.0
"""A name's claim whose object never appeared is taken over after this long."""
S3_MTIME_RANGE = (-(2**63), 2**63 - 1)
"""An object keeps any Mtime: it is metadata, not a file system's timestamp."""

_MISSING = {"404", "NoSuchKey", "NotFound"}
_TAKEN = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
_FULL = {"QuotaExceeded", "EntityTooLarge", "XMinioStorageFull", "InsufficientStorage"}


def parse_s3_url(text: str) -> tuple[str, str]:
    """C{s3://bucket/some/prefix} -> (C{"bucket"}, C{"some/prefix/"}).

    @raise ValueError: not an C{s3://BUCKET[/PREFIX]} URL, or a prefix
        that is no valid relative path.
    """
    if not text.startswith("s3://"):
        raise ValueError(f"not an s3://BUCKET[/PREFIX] URL: {text!r}")
    bucket, _, prefix = text[len("s3://") :].partition("/")
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-" for c in bucket):
        raise ValueError(f"not a bucket name: {bucket!r}")
    prefix = prefix.strip("/")
    if prefix:
        try:
            prefix = validate_path(prefix)
        except TransferError as error:
            raise ValueError(f"the prefix {prefix!r}: {error.reason}") from None
        prefix += "/"
    return bucket, prefix


def s3_error(exc: BaseException, action: str) -> TransferError:
    """The refusal (503 or 507) for an error of the object store while trying to C{action}.

    The store being unreachable, refusing our credentials, missing its
    bucket or rejecting a request is the server's trouble, not the
    client's: 503, with what went wrong.  A store out of space or quota:
    507.
    """
    if isinstance(exc, TransferError):
        return exc
    code, status = _error_code(exc)
    if code in _FULL or status == 507:
        return TransferError(507, f"cannot {action}: the object store is full ({code})")
    if code == "NoSuchBucket":
        return TransferError(503, f"cannot {action}: the bucket does not exist")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
        return TransferError(503, f"cannot {action}: the object store refuses our credentials")
    name = type(exc).__name__
    if code:
        return TransferError(503, f"cannot {action}: the object store answered {code}")
    if "Credentials" in name:
        return TransferError(503, f"cannot {action}: no credentials for the object store")
    return TransferError(503, f"cannot {action}: the object store is unreachable ({name})")


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code or (str(status) if status else ""), status


def _is(exc: BaseException, codes: set[str]) -> bool:
    return _error_code(exc)[0] in codes


def _new_hasher(state: bytes | None = None) -> Any:
    """A SHA-256 hasher whose state can be saved (C{getstate}) and restored."""
    from resumablesha256 import sha256

    hasher = sha256()
    if state is not None:
        hasher.__setstate__(state)  # validated by the extension: ValueError when malformed
    return hasher


def default_client_factory(endpoint: str | None, region: str | None) -> Callable[[], Any]:
    """A factory of boto3 S3 clients; credentials come from the AWS chain only.

    (The environment, C{~/.aws/credentials} and C{config}, instance roles:
    never the command line.)
    """

    def make() -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            s3={"addressing_style": "path"} if endpoint else {},
        )
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region, config=config
        )

    return make


@implementer(IStorage)
class S3Storage:
    """Store files as objects in C{bucket} under C{prefix}; see the module docstring.

    @param client_factory: makes a boto3 S3 client; called once, on first use.
    @param run_blocking: runs each call to the store, e.g. in a bounded
        thread pool; by default inline (tests).
    @param max_size: largest accepted file in bytes (413), or None.
    @param part_size: bytes per part (at least L{MIN_PART_SIZE}).
    @param lease_seconds: how long an upload's lease holds without renewal.
    @param now: the clock, seconds since the epoch (leases, housekeeping).
    @param clock: renews the leases of live uploads every third of
        C{lease_seconds}; without one, leases are renewed with each part only.
    """

    mtime_range = S3_MTIME_RANGE
    digests: tuple[DigestName, ...] = ("sha256",)
    """SHA-256 only: a multipart upload resumes on another node from a saved
    hasher state (L{resumablesha256}); the C{blake3} binding cannot save its
    state, so BLAKE3 is declined (receivers fall back to SHA-256)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        on_conflict: ConflictPolicy = "rename",
        *,
        client_factory: Callable[[], Any],
        run_blocking: BlockingRunner[Any] = run_here,
        max_size: int | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        now: Callable[[], float] = time.time,
        clock: IReactorTime | None = None,
    ) -> None:
        if on_conflict not in CONFLICT_POLICIES:
            raise ValueError(f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.prefix = prefix
        self.on_conflict = on_conflict
        self.run_blocking = run_blocking
        self.max_size = max_size
        self.part_size = part_size
        self.lease_seconds = lease_seconds
        self._now = now
        self.clock = clock
        self._client_factory = client_factory
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._state = f"{prefix}{STATE_DIR}/"

    @property
    def root(self) -> str:
        """Where files go, for the log: C{s3://bucket/prefix}."""
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use (boto3 clients are thread-safe)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._client_factory()
        return self._client

    def _key(self, path: str) -> str:
        return self.prefix + path

    def check_size(self, size: int) -> None:
        """Refuse with 413 a file of C{size} bytes (announced or arrived) above C{max_size}."""
        check_max_size(self.max_size, size)

    def check_bucket(self) -> Deferred[None]:
        """Fire when the bucket answers; fail with L{TransferError} 503 saying why not."""
        return self.run_blocking(self._check_bucket)

    def _check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _is(exc, _MISSING):
                raise TransferError(503, f"the bucket {self.bucket} does not exist") from None
            raise s3_error(exc, "reach the bucket") from None

    # -- receiving ---------------------------------------------------------

    def begin(
        self,
        path: str,
        size: int | None = None,
        sha256: str | None = None,
        mtime_ns: int | None = None,
        *,
        trailer: bool = False,
        fresh: bool = False,
        exact_name: bool = False,
        digest: DigestName = DEFAULT_DIGEST,
    ) -> Deferred[IUpload]:
        """Start receiving C{path} (see L{IStorage.begin}); the look-ups run in C{run_blocking}.

        @raise ValueError: C{digest} is not one of L{digests}.
        """
        if digest not in self.digests:
            raise ValueError(f"digest {digest!r}: see IStorage.begin")
        try:
            path = validate_path(path)
            if size is not None:
                self.check_size(size)
            if mtime_ns is not None:
                check_mtime(mtime_ns, self.mtime_range)
        except TransferError:
            return fail()
        return self.run_blocking(
            lambda: self._begin_blocking(
                path,
                size,
                sha256,
                mtime_ns,
                trailer,
                fresh,
                policy_for(self.on_conflict, exact_name),
            )
        )

    def _begin_blocking(
        self,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        trailer: bool,
        fresh: bool,
        policy: ConflictPolicy,
    ) -> IUpload:
        try:
            heads = self._copies(path)
            if policy != "rename":  # no copy under another name answers for this one
                heads = {stored: head for stored, head in heads.items() if stored == path}
            wanted = wanted_copies(
                {stored: int(head["ContentLength"]) for stored, head in heads.items()},
                size,
                sha256,
                mtime_ns,
                trailer,
                fresh,
                lambda stored: _same_mtime(heads[stored], mtime_ns),
            )
            digests = {stored: self._stored_digest(stored, heads[stored]) for stored in wanted}
            judged = judge_stored(path, size, sha256, digests)
            if judged is not None:
                return judged
            if path in heads and policy == "refuse":
                raise TransferError(409, f"{path} already exists")
            identity = resume_identity(path, size, sha256, mtime_ns, trailer)
            if identity is None:
                key = f"{self._state}tmp/{secrets.token_hex(16)}"
                upload_id = self._create(key)
                upload = S3Upload(self, path, size, sha256, mtime_ns, key, upload_id, None)
                upload.policy = policy
                return upload
            self._take_lease(identity)
            try:
                upload = self._resume_or_start(path, size, sha256, mtime_ns, identity, fresh)
                upload.policy = policy
                return upload
            except BaseException:
                self._release_lease(identity)
                raise
        except Exception as exc:
            raise s3_error(exc, "start the upload") from None

    def _copies(self, path: str) -> dict[str, dict[str, Any]]:
        """C{path} and its numbered copies (up to the first free number): path -> HEAD."""
        *parents, name = path.split("/")
        found: dict[str, dict[str, Any]] = {}
        for number, candidate in enumerate(candidate_names(name)):
            stored = "/".join([*parents, candidate])
            head = self._head(self._key(stored))
            if head is None:
                if number > 0:
                    break
                continue
            found[stored] = head
        return found

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is(exc, _MISSING):
                return None
            raise
        return head

    def _stored_digest(self, path: str, head: dict[str, Any]) -> str:
        """The SHA-256 of a stored object: from its metadata, or by reading it (blocking)."""
        recorded = head.get("Metadata", {}).get("sha256")
        if isinstance(recorded, str) and len(recorded) == 64:
            return recorded
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"]
        digest = hashlib.sha256()
        for chunk in body.iter_chunks(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()

    def _create(self, key: str) -> str:
        upload_id: str = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)[
            "UploadId"
        ]
        return upload_id

    def _sidecar(self, identity: str) -> str:
        return f"{self._state}uploads/{identity}.json"

    def _resume_or_start(
        self,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        identity: str,
        fresh: bool,
    ) -> S3Upload:
        key = f"{self._state}uploads/{identity}"
        held = None if fresh else self._held(identity)
        if held is not None and size is not None and held.size <= size:
            upload_id, parts, hasher = held.upload_id, held.parts, held.hasher
        else:
            if held is not None:
                self._abort_quietly(key, held.upload_id)
            upload_id, parts, hasher = self._create(key), [], None
            self._write_sidecar(identity, upload_id, [], _new_hasher())
        return S3Upload(self, path, size, sha256, mtime_ns, key, upload_id, identity, parts, hasher)

    def _held(self, identity: str) -> _Held | None:
        """The parts an interrupted upload of this identity left, checked against ListParts."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._sidecar(identity))["Body"]
            record = json.loads(body.read())
            upload_id = str(record["upload_id"])
            parts = [(int(n), str(etag), int(length)) for n, etag, length in record["parts"]]
            hasher = _new_hasher(base64.b64decode(record["state"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None  # not ours, or damaged: start again
        except Exception as exc:
            if _is(exc, _MISSING):
                return None
            raise
        key = f"{self._state}uploads/{identity}"
        try:
            listed = self.client.list_parts(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MaxParts=10000
            )
        except Exception as exc:
            if _is(exc, _MISSING | {"NoSuchUpload"}):
                return None
            raise
        there = {int(p["PartNumber"]): (p["ETag"], int(p["Size"])) for p in listed.get("Parts", [])}
        for number, _etag, length in parts:
            if there.get(number, (None, -1))[1] != length:
                return None  # a part the sidecar names is missing: start again
        return _Held(upload_id, parts, hasher)

    def _write_sidecar(
        self, identity: str, upload_id: str, parts: list[tuple[int, str, int]], hasher: Any
    ) -> None:
        record = {
            "upload_id": upload_id,
            "parts": parts,
            "size": sum(length for _, _, length in parts),
            "state": base64.b64encode(hasher.__getstate__()).decode(),
        }
        self.client.put_object(
            Bucket=self.bucket, Key=self._sidecar(identity), Body=json.dumps(record).encode()
        )

    # -- leases --------------------------------------------------------------

    def _lease_key(self, identity: str) -> str:
        return f"{self._state}leases/{identity}"

    def _take_lease(self, identity: str) -> None:
        """Hold the lease for C{identity}, or 409 while another upload (any node) holds it.

        Written with C{If-None-Match: *}: of two nodes racing, one wins.  An
        expired lease (its node died) is deleted and taken.
        """
        key = self._lease_key(identity)
        for _ in range(2):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=self._lease_body(), IfNoneMatch="*"
                )
                return
            except Exception as exc:
                if not _is(exc, _TAKEN):
                    raise
            try:
                held = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                expires = float(json.loads(held)["expires"])
            except Exception as exc:
                if _is(exc, _MISSING):
                    continue  # released meanwhile: try again
                expires = 0.0  # unreadable: treat as expired
            if expires > self._now():
                break
            self.client.delete_object(Bucket=self.bucket, Key=key)
        raise TransferError(409, "an upload of this file is already in progress")

    def _lease_body(self) -> bytes:
        """When the lease expires, and who holds it (host and process, for an operator)."""
        holder = f"{socket.gethostname()}:{os.getpid()}"
        return json.dumps({"expires": self._now() + self.lease_seconds, "node": holder}).encode()

    def _renew_lease(self, identity: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._lease_key(identity), Body=self._lease_body()
        )

    def _release_lease(self, identity: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._lease_key(identity))
        except Exception as exc:
            log.warn("cannot release an upload lease: {error}", error=s3_error(exc, "release"))

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if not _is(exc, _MISSING | {"NoSuchUpload"}):
                log.warn("cannot abort a multipart upload: {error}", error=s3_error(exc, "abort"))

    # -- placing -------------------------------------------------------------

    def place(
        self,
        source: str,
        path: str,
        size: int,
        digest: str,
        mtime_ns: int | None,
        policy: ConflictPolicy | None = None,
    ) -> str:
        """Copy the finished object C{source} to its final name by the conflict policy (blocking).

        An identical copy already stored for C{path} answers instead
        (docs/protocol.md, "Copies by content").  The final object is
        completed with C{If-None-Match: *} unless the policy is
        C{overwrite}: a name taken meanwhile, by any node, is never replaced.

        @param policy: the upload's (L{policy_for}); by default C{on_conflict}.
        @return: the relative path it was stored under.
        """
        policy = self.on_conflict if policy is None else policy
        *parents, name = path.split("/")
        heads = self._copies(path)
        if policy != "rename":
            heads = {stored: head for stored, head in heads.items() if stored == path}
        for stored, head in heads.items():
            if int(head["ContentLength"]) == size and self._stored_digest(stored, head) == digest:
                return stored
        metadata = {"sha256": digest}
        if mtime_ns is not None:
            metadata["mtime-ns"] = str(mtime_ns)
        for candidate in candidate_names(name):
            stored = "/".join([*parents, candidate])
            if self._copy_into(source, self._key(stored), size, metadata, policy):
                return stored
            if policy == "refuse":
                raise TransferError(409, f"{path} already exists")
        raise TransferError(409, f"no free name for {name}: {MAX_RENAME_TRIES} are taken")

    def _claim(self, key: str) -> bool:
        """Claim the final name C{key} for this upload: False when another has it.

        A conditional C{CompleteMultipartUpload} alone is not enough: on
        SeaweedFS 4.48, of 20 uploads completing the same key with
        C{If-None-Match: *} at once, two sometimes both succeeded (the check
        and the write are not atomic there), while a conditional C{PutObject}
        let exactly one through in every trial.  So a name is first claimed
        with a small marker object written with C{If-None-Match: *}
        (C{.filexfer/names/<sha256 of key>}); the marker stays while the
        name is used.  A marker whose object never appeared (its node died
        while copying) is taken over after L{CLAIM_SECONDS}.
        """
        marker = f"{self._state}names/{hashlib.sha256(key.encode()).hexdigest()}"
        for _ in range(2):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=marker, Body=key.encode(), IfNoneMatch="*"
                )
                return True
            except Exception as exc:
                if not _is(exc, _TAKEN):
                    raise
            if self._head(key) is not None:
                return False
            held = self._head(marker)
            if held is not None and held["LastModified"].timestamp() > self._now() - CLAIM_SECONDS:
                return False  # being placed right now by another upload
            self.client.delete_object(Bucket=self.bucket, Key=marker)
        return False

    def _copy_into(
        self, source: str, key: str, size: int, metadata: dict[str, str], policy: ConflictPolicy
    ) -> bool:
        """Copy C{source} to C{key} server-side; False when C{key} exists (and must not go)."""
        condition = {} if policy == "overwrite" else {"IfNoneMatch": "*"}
        if condition and (self._head(key) is not None or not self._claim(key)):
            return False
        client = self.client
        try:
            if size == 0:
                client.put_object(
                    Bucket=self.bucket, Key=key, Body=b"", Metadata=metadata, **condition
                )
                return True
        except Exception as exc:
            if _is(exc, _TAKEN):
                return False
            raise
        upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=metadata)[
            "UploadId"
        ]
        try:
            parts = []
            for number, start in enumerate(range(0, size, COPY_PART_SIZE), 1):
                end = min(start + COPY_PART_SIZE, size) - 1
                copied = client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"ETag": copied["CopyPartResult"]["ETag"], "PartNumber": number})
            client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        except Exception as exc:
            self._abort_quietly(key, upload_id)
            if _is(exc, _TAKEN):
                return False
            raise
        return True

    # -- reading -------------------------------------------------------------

    def open_read(self, path: str) -> Deferred[IReadSource]:
        """Open a stored object: a HEAD for its size; 404 when absent (see L{IStorage})."""
        try:
            path = validate_path(path)
        except TransferError:
            return fail()

        def head() -> IReadSource:
            try:
                found = self._head(self._key(path))
            except Exception as exc:
                raise s3_error(exc, "read the file") from None
            if found is None:
                raise TransferError(404, f"{path} not found")
            return S3ReadSource(self, self._key(path), int(found["ContentLength"]))

        return self.run_blocking(head)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of the object C{key} (blocking, one ranged GET)."""
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )["Body"]
            data: bytes = body.read()
        except Exception as exc:
            raise s3_error(exc, "read the file") from None
        return data

    # -- housekeeping ------------------------------------------------------

    def remove_stale(self, max_age: float, now: float | None = None) -> int:
        """Abort multipart uploads and delete state objects untouched for C{max_age} seconds.

        An upload is stale when it began before then and its sidecar (or,
        without one, the upload itself) was not written since; leases are
        stale when they expired.  The equivalent bucket lifecycle rule is
        in docs/deploy.md.  @return: how many uploads and objects went.
        @raise TransferError: the store refused or could not be reached (503).
        """
        try:
            return self._remove_stale(max_age, now)
        except TransferError:
            raise
        except Exception as exc:  # the store's refusal in one line, not a botocore traceback
            raise s3_error(exc, "remove stale uploads") from None

    def _remove_stale(self, max_age: float, now: float | None) -> int:
        now = self._now() if now is None else now
        before = now - max_age
        client = self.client
        removed = 0
        touched: dict[str, float] = {}
        stale_objects = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._state
        ):
            for entry in page.get("Contents", []):
                key, modified = entry["Key"], entry["LastModified"].timestamp()
                touched[key] = modified
                if key.startswith(f"{self._state}names/"):
                    continue  # a claim lasts as long as its name is used
                if key.startswith(f"{self._state}leases/"):
                    if modified < now - self.lease_seconds:
                        stale_objects.append(key)
                elif modified < before:
                    stale_objects.append(key)
        for page in client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._state
        ):
            for upload in page.get("Uploads", []):
                key = upload["Key"]
                last = touched.get(f"{key}.json", upload["Initiated"].timestamp())
                if last < before:
                    self._abort_quietly(key, upload["UploadId"])
                    removed += 1
        for key in stale_objects:
            client.delete_object(Bucket=self.bucket, Key=key)
            removed += 1
        return removed


class _Held:
    """What an interrupted upload left: its id, its parts, the hasher after them."""

    def __init__(self, upload_id: str, parts: list[tuple[int, str, int]], hasher: Any) -> None:
        self.upload_id = upload_id
        self.parts = parts
        self.hasher = hasher
        self.size = sum(length for _, _, length in parts)


def _same_mtime(head: dict[str, Any], mtime_ns: int | None) -> bool:
    """The stored object was announced with this Mtime (whole seconds compared, as on disk)."""
    recorded = head.get("Metadata", {}).get("mtime-ns")
    try:
        return mtime_ns is not None and int(recorded) // 10**9 == mtime_ns // 10**9
    except (TypeError, ValueError):
        return False


@implementer(IUpload, IConsumer)
class S3Upload(Backlog):
    """One file being received as a multipart upload; see L{S3Storage}.

    Bytes gather in memory until a part is full; one part at a time is
    hashed and uploaded in C{run_blocking}; while a full part waits behind
    it, the producer is paused, so at most about two parts are held.
    """

    def __init__(
        self,
        storage: S3Storage,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        key: str,
        upload_id: str,
        identity: str | None,
        parts: list[tuple[int, str, int]] | None = None,
        hasher: Any = None,
    ) -> None:
        super().__init__()
        self.digest: DigestName = "sha256"
        self.path = path
        self.expected_size = size
        self._sha256 = sha256
        self._mtime_ns = mtime_ns
        self._storage = storage
        self._key = key
        self._upload_id = upload_id
        self._identity = identity
        self.resumable = identity is not None
        self.policy: ConflictPolicy = storage.on_conflict
        """The conflict policy at placing (L{policy_for}: C{refuse} for an exact name)."""
        self._parts: list[tuple[int, str, int]] = list(parts or [])
        self._hasher = hasher if hasher is not None else _new_hasher()
        self.offset = sum(length for _, _, length in self._parts)
        self.prefix_sha256: str | None = self._hasher.copy().hexdigest()
        self.received = self.offset
        self.stored: Receipt | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._error: TransferError | None = None
        self._ended = False
        self._renewal: IDelayedCall | None = None
        self._schedule_renewal()

    def _schedule_renewal(self) -> None:
        clock = self._storage.clock
        if clock is not None and self._identity is not None and not self._ended:
            self._renewal = clock.callLater(self._storage.lease_seconds / 3, self._renew)

    def _renew(self) -> None:
        identity = self._identity
        assert identity is not None
        renewing = self._storage.run_blocking(lambda: self._storage._renew_lease(identity))
        renewing.addErrback(lambda failure: log.warn("cannot renew a lease: {f}", f=failure))
        self._schedule_renewal()

    def _stop_renewing(self) -> None:
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = None

    def check(self, additional: int) -> None:
        total = self.received + additional
        if self.expected_size is not None and total > self.expected_size:
            raise TransferError(422, f"more bytes than the announced Size {self.expected_size}")
        self._storage.check_size(total)

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self.check(len(data))
        self.received += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered < self._storage.part_size:
            return
        if self._in_flight is None:
            self._send_part(last=False)
        else:
            self._pause()

    def _send_part(self, last: bool) -> Deferred[Any]:
        batch, self._buffer, self._buffered = self._buffer, [], 0
        number = len(self._parts) + 1
        storage = self._storage

        def upload() -> None:
            data = b"".join(batch)
            self._hasher.update(data)
            if not data and (number > 1 or not last):
                return  # nothing left for a last part
            try:
                etag = storage.client.upload_part(
                    Bucket=storage.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=data,
                )["ETag"]
                parts = [*self._parts, (number, etag, len(data))]
                if self._identity is not None:
                    storage._write_sidecar(self._identity, self._upload_id, parts, self._hasher)
                    storage._renew_lease(self._identity)
            except Exception as exc:
                raise s3_error(exc, "store a part") from None
            self._parts = parts

        sending: Deferred[Any] = storage.run_blocking(upload)
        self._in_flight = sending
        sending.addBoth(self._part_done)
        return sending

    def _part_done(self, result: Any) -> None:
        self._in_flight = None
        if isinstance(result, Failure):
            self._error = s3_error(result.value or Exception(), "store a part")
            self._buffer, self._buffered = [], 0
        elif self._buffered >= self._storage.part_size and not self._ended:
            self._send_part(last=False)
        self._settled(self._error is not None or self._in_flight is None)

    def finish(self, sha256: str | None = None) -> Deferred[Receipt]:
        self.unregisterProducer()
        return self._idle().addCallback(lambda _: self._finish_parts(sha256))

    def _finish_parts(self, claimed: str | None) -> Deferred[Receipt]:
        if self._ended:
            return fail(TransferError(500, "the upload was aborted"))
        if self._error is None and (
            self.expected_size is None or self.received >= self.expected_size
        ):
            sent = self._send_part(last=True)
            return sent.addCallback(lambda _: self._verify_and_complete(claimed))
        return self._verify_and_complete(claimed)

    def _verify_and_complete(self, claimed: str | None) -> Deferred[Receipt]:
        if self._error is not None:
            self.abort(keep_partial=True)  # the parts stored so far stay resumable
            return fail(self._error)
        digest = self._hasher.hexdigest()
        refused = check_finished(
            self.received, self.expected_size, self.offset, digest, self._sha256, claimed
        )
        if refused is not None:
            error, keep = refused
            self.abort(keep_partial=keep)
            return fail(error)
        self._ended = True
        self._stop_renewing()
        return self._storage.run_blocking(lambda: self._complete(digest))

    def _complete(self, digest: str) -> Receipt:
        storage = self._storage
        client = storage.client
        try:
            parts = [{"ETag": etag, "PartNumber": n} for n, etag, _ in self._parts]
            client.complete_multipart_upload(
                Bucket=storage.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
            try:
                stored = storage.place(
                    self._key, self.path, self.received, digest, self._mtime_ns, self.policy
                )
            finally:
                client.delete_object(Bucket=storage.bucket, Key=self._key)
                if self._identity is not None:
                    client.delete_object(
                        Bucket=storage.bucket, Key=storage._sidecar(self._identity)
                    )
        except Exception as exc:
            raise s3_error(exc, "store the file") from None
        finally:
            if self._identity is not None:
                storage._release_lease(self._identity)
        return Receipt(self.received, digest, stored)

    def abort(self, keep_partial: bool) -> None:
        if self._ended:
            return  # the first abort decides
        self._ended = True
        self._stop_renewing()
        self.unregisterProducer()
        self._buffer, self._buffered = [], 0
        keep = keep_partial and self.resumable
        storage = self._storage

        def clean_up() -> None:
            if not keep:
                storage._abort_quietly(self._key, self._upload_id)
                if self._identity is not None:
                    try:
                        storage.client.delete_object(
                            Bucket=storage.bucket, Key=storage._sidecar(self._identity)
                        )
                    except Exception as exc:
                        log.warn("cannot delete a sidecar: {e}", e=s3_error(exc, "delete"))
            if self._identity is not None:
                storage._release_lease(self._identity)

        done = self._idle().addCallback(lambda _: storage.run_blocking(clean_up))
        done.addErrback(lambda failure: log.failure("ending an S3 upload", failure))


@implementer(IReadSource)
class S3ReadSource:
    """A stored object read by ranged GETs, one chunk ahead of the reader."""

    def __init__(self, storage: S3Storage, key: str, size: int) -> None:
        self.size = size
        self._storage = storage
        self._key = key
        self._next = 0  # where the next fetch starts
        self._ahead: Deferred[bytes] | None = None

    def _fetch(self, length: int) -> Deferred[bytes]:
        start = self._next
        length = min(length, self.size - start)
        self._next += length
        if length <= 0:
            return succeed(b"")
        storage, key = self._storage, self._key
        return storage.run_blocking(lambda: storage.read_range(key, start, length))

    def read(self, length: int) -> Deferred[bytes]:
        """The next bytes, at most the largest C{length} asked so far; C{b""} at the end.

        The following range is fetched at once (read-ahead), so that a
        reader asking again as soon as it has its bytes seldom waits.
        """
        current = self._ahead if self._ahead is not None else self._fetch(length)
        self._ahead = self._fetch(length) if self._next < self.size else None
        return current

    def close(self) -> None:
        """Forget the read-ahead (its failure, if any, is nobody's)."""
        if self._ahead is not None:
            self._ahead.addErrback(lambda _: None)
            self._ahead = None
