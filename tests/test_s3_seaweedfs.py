"""Nodes storing to a real S3 store (SeaweedFS on loopback): the storage rules across nodes."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
from typing import Any

import pytest
from twisted.trial import unittest

from filexfer.storage.s3 import DEFAULT_PART_SIZE
from filexfer.tcp import _wire

from .helpers import (
    LOOPBACK,
    ServerProcess,
    all_at_once,
    free_port,
    free_udp_port,
    payload,
    read_line,
    run_filexfer,
    twistd_command,
    wait_until,
    write_file,
)

pytestmark = pytest.mark.integration

PART = DEFAULT_PART_SIZE
_clusters = itertools.count(1)
_made: set[str] = set()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Cluster:
    """Nodes (twistd filexfer) on one bucket of the session's SeaweedFS."""

    def __init__(self, store: Any, tmp: str, bucket: str | None = None) -> None:
        self.store = store
        self.tmp = tmp
        self.s3 = store.client()
        # One bucket for the session (SeaweedFS gives each bucket volumes of
        # its own); each cluster its own prefix.
        self.bucket = bucket or "filexfer-tests"
        self.prefix = f"c{os.getpid()}-{next(_clusters)}"
        if bucket is None and self.bucket not in _made:
            self.s3.create_bucket(Bucket=self.bucket)
            _made.add(self.bucket)
        self.nodes: list[ServerProcess] = []

    def start_node(
        self, *extra: str, endpoint: str | None = None, listen: str = f"tcp:0:interface={LOOPBACK}"
    ) -> tuple[ServerProcess, int]:
        """A node with TCP on an ephemeral port and TFTP on a free UDP port."""
        udp = free_udp_port()
        cwd = os.path.join(self.tmp, f"node{len(self.nodes)}")
        os.makedirs(cwd)
        command = twistd_command(
            "filexfer", "--listen", listen,
            "--tftp-port", str(udp), "--tftp-interface", LOOPBACK,
            "--storage", f"s3://{self.bucket}/{self.prefix}",
            "--s3-endpoint", endpoint or self.store.endpoint, *extra,
        )  # fmt: skip
        node = ServerProcess(command, cwd=cwd)
        self.nodes.append(node)
        node.wait_listening()
        return node, udp

    def objects(self) -> dict[str, bytes]:
        """Final objects under the prefix: relative path -> bytes."""
        prefix = f"{self.prefix}/"
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", [])
        return {
            entry["Key"][len(prefix) :]: self.s3.get_object(Bucket=self.bucket, Key=entry["Key"])[
                "Body"
            ].read()
            for entry in listed
            if not entry["Key"].startswith(f"{prefix}.filexfer/")
        }

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.mark.usefixtures("seaweedfs_on_class")
class S3ClusterTestCase(unittest.TestCase):
    """Tests with nodes on the session's SeaweedFS (trial tests, as the whole suite)."""

    store: Any
    timeout = 300

    def setUp(self) -> None:
        for name, value in self.store.env().items():
            self.addCleanup(_restore, name, os.environ.get(name))
            os.environ[name] = value

    def cluster(self, bucket: str | None = None) -> Cluster:
        """Nodes on the session's store (a bucket of their own prefix), stopped at cleanup."""
        made = Cluster(self.store, os.path.abspath(self.mktemp()), bucket)
        self.addCleanup(made.stop)
        return made


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def put(port: int, request: _wire.PutRequest) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    sock.sendall(_wire.encode_put(request))
    return sock


class SeaweedFSNodesTests(S3ClusterTestCase):
    def test_upload_on_a_download_from_b(self) -> None:
        """A file sent to node A is stored intact; node B serves it over TFTP."""
        c = self.cluster()
        a, _ = c.start_node()
        _, udp_b = c.start_node()
        data = payload(3 * PART // 2, seed=3)
        local = write_file(os.path.join(c.tmp, "boot.img"), data)
        sent = run_filexfer("send", local, f"127.0.0.1:{a.port}/pxe")
        assert sent.returncode == 0, sent.stderr
        assert sha(c.objects()["pxe/boot.img"]) == sha(data)
        target = os.path.join(c.tmp, "got.img")
        got = run_filexfer("get", f"tftp://127.0.0.1:{udp_b}/pxe/boot.img", target)
        assert got.returncode == 0, got.stderr
        with open(target, "rb") as handle:
            assert sha(handle.read()) == sha(data)

    def test_resume_on_another_node_after_kill(self) -> None:
        """An upload cut by kill -9 of node A resumes through node B with offset > 0, intact."""
        c = self.cluster()
        a, _ = c.start_node("--s3-lease", "2")
        b, _ = c.start_node("--s3-lease", "2")
        data = payload(2 * PART + 12345, seed=5)
        request = _wire.PutRequest("cut.bin", len(data), sha(data), None, trailer=True)
        sock = put(a.port, request)
        assert read_line(sock).startswith(b"ok 0")
        sock.sendall(data[: PART + 100])

        def part_stored() -> bool:
            listed = c.s3.list_objects_v2(Bucket=c.bucket, Prefix=f"{c.prefix}/.filexfer/uploads/")
            for entry in listed.get("Contents", []):
                body = c.s3.get_object(Bucket=c.bucket, Key=entry["Key"])["Body"].read()
                if b'"size": 0' not in body:
                    return True
            return False

        wait_until(part_stored, 30, "a part in the store")
        a.process.kill()
        a.wait(10)
        sock.close()
        replies: list[list[bytes]] = []

        def lease_expired() -> bool:
            """A's lease holds 2 s after its death (409 meanwhile); then B takes over."""
            sock = put(b.port, request)
            reply = read_line(sock).split()
            if reply[:2] == [b"error", b"409"]:
                sock.close()
                return False
            replies.append(reply)
            socks.append(sock)
            return True

        socks: list[socket.socket] = []
        wait_until(lease_expired, 30, "node A's lease to expire")
        sock, reply = socks[0], replies[0]
        assert reply[0] == b"ok", reply
        offset = int(reply[1])
        assert offset >= PART  # the stored parts; bytes only in A's memory are lost
        assert reply[2].decode() == sha(data[:offset])
        sock.sendall(data[offset:] + _wire.encode_trailer(sha(data)))
        done = read_line(sock)
        sock.close()
        assert done.startswith(b"done "), done
        assert c.objects() == {"cut.bin": data}

    def test_twenty_at_once_rename(self) -> None:
        """20 simultaneous uploads of one path through two nodes: rename keeps all 20."""
        self.twenty_at_once("rename", 20, 0)

    def test_twenty_at_once_refuse(self) -> None:
        """20 simultaneous uploads of one path through two nodes: refuse stores 1, 19 get 409."""
        self.twenty_at_once("refuse", 1, 19)

    def twenty_at_once(self, policy: str, stored: int, refused: int) -> None:
        c = self.cluster()
        ports = [c.start_node("--on-conflict", policy)[0].port for _ in range(2)]

        def send(number: int) -> bytes:
            data = f"upload {number}\n".encode() * 1000
            sock = put(ports[number % 2], _wire.PutRequest("same.txt", len(data), sha(data), None))
            try:
                line = read_line(sock)
                if line.startswith(b"ok"):
                    sock.sendall(data)
                    line = read_line(sock)
            except OSError as error:
                line = repr(error).encode()
            finally:
                sock.close()
            return line

        replies = all_at_once(send, 20)
        assert len(replies) == 20
        assert sum(r.startswith(b"done ") for r in replies) == stored, replies
        assert sum(r.startswith(b"error 409") for r in replies) == refused, replies
        objects = c.objects()
        paths = sorted(r.split(b" ", 3)[3] for r in replies if r.startswith(b"done "))
        assert len(objects) == stored, paths
        assert len(set(objects.values())) == stored  # no upload lost to another

    def test_missing_bucket_is_503_and_node_keeps_serving(self) -> None:
        """A bucket that does not exist: each upload gets 503, the node serves the next one."""
        c = self.cluster(bucket="fx-no-such-bucket")
        node, _ = c.start_node()
        for _ in range(2):
            sock = put(node.port, _wire.PutRequest("x", 3, sha(b"abc"), None))
            line = read_line(sock)
            sock.close()
            assert line.startswith(b"error 503"), line
            assert b"bucket" in line
        assert node.process.poll() is None

    def test_unreachable_store_is_503(self) -> None:
        """A store nobody listens on: 503 at once, not a hang; nothing stored."""
        c = self.cluster()
        node, _ = c.start_node(endpoint=f"http://{LOOPBACK}:{free_port()}")
        sock = put(node.port, _wire.PutRequest("x", 3, sha(b"abc"), None))
        line = read_line(sock)
        sock.close()
        assert line.startswith(b"error 503"), line
        assert c.objects() == {}
