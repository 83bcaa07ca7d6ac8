"""Two nodes on one SeaweedFS bucket behind one HAProxy (send-proxy-v2, round robin).

The configuration is docs/deploy.md's, its two C{server} lines pointed at
the two nodes on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket

import pytest

from filexfer.storage.s3 import DEFAULT_PART_SIZE
from filexfer.tcp import _wire

from .helpers import (
    LOOPBACK,
    ServerProcess,
    all_at_once,
    free_port,
    payload,
    read_line,
    run_filexfer,
    wait_until,
    write_file,
)
from .test_integration_proxy import (
    CLIENT,
    OTHER_CLIENT,
    STRANGER,
    connect_from,
    haproxy_config_from_docs,
    upload_from,
    v2_header,
)
from .test_s3_seaweedfs import Cluster, S3ClusterTestCase, sha

pytestmark = pytest.mark.integration

PART = DEFAULT_PART_SIZE


def two_servers(config: str, front: int, ports: list[int]) -> str:
    """docs/deploy.md's configuration on loopback: C{bind} at C{front}, one C{server} per port."""
    config, binds = re.subn(r"(?m)^(\s*bind )\S+", rf"\g<1>{LOOPBACK}:{front}", config)
    numbers = iter(ports)
    config, servers = re.subn(
        r"(?m)^(\s*server \S+ )\S+", lambda m: f"{m.group(1)}{LOOPBACK}:{next(numbers)}", config
    )
    assert (binds, servers) == (1, len(ports)), (binds, servers)
    return config.replace(" v4v6", "")


class Front:
    """Two S3 nodes on haproxy: endpoints, and HAProxy before them."""

    def __init__(self, c: Cluster, tmp: str, *extra: str) -> None:
        haproxy = shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if haproxy is None:
            pytest.fail("haproxy is not installed; run scripts/install-test-tools")
        self.nodes = [
            c.start_node(
                "--trusted-proxy",
                f"{LOOPBACK}/32",
                *extra,
                listen=f"haproxy:tcp:0:interface={LOOPBACK}",
            )  # fmt: skip
            for _ in range(2)
        ]
        self.port = free_port()
        config = os.path.join(tmp, "haproxy.cfg")
        ports = [node.port for node, _ in self.nodes]
        write_file(config, two_servers(haproxy_config_from_docs(), self.port, ports).encode())
        self.proxy = ServerProcess([haproxy, "-db", "-f", config], cwd=tmp)
        c.nodes.append(self.proxy)  # stopped with the cluster, by PID
        wait_until(self.accepts, 15, "HAProxy listening")

    def accepts(self) -> bool:
        if self.proxy.process.poll() is not None:
            raise AssertionError(f"haproxy exited:\n{self.proxy.log.text()}")
        try:
            socket.create_connection((LOOPBACK, self.port), timeout=5).close()
        except OSError:
            return False
        return True


class BehindHAProxyOnS3Tests(S3ClusterTestCase):
    def front(self, *extra: str) -> tuple[Cluster, Front]:
        """Two nodes on the session's store and HAProxy before them."""
        c = self.cluster()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        return c, Front(c, folder, *extra)

    def test_uploads_through_haproxy_land_intact(self) -> None:
        """Uploads through HAProxy reach both nodes intact; TFTP serves them from either node."""
        c, f = self.front()
        files = {f"f{n}.bin": payload(100_000 + n, seed=n) for n in range(4)}
        for name, data in files.items():
            replies, _ = upload_from(CLIENT, f.port, name, data)
            assert b"\ndone " in replies, replies
        assert {name: sha(data) for name, data in c.objects().items()} == {
            name: sha(data) for name, data in files.items()
        }
        for node, _ in f.nodes:  # round robin: each node stored some, and logged the client
            node.log.wait_for(rf"{re.escape(CLIENT)}:\d+ 'f\d\.bin'", 10)
        for _, udp in f.nodes:
            target = os.path.join(c.tmp, f"got{udp}")
            got = run_filexfer("get", f"tftp://127.0.0.1:{udp}/f2.bin", target)
            assert got.returncode == 0, got.stderr
            with open(target, "rb") as handle:
                assert sha(handle.read()) == sha(files["f2.bin"])

    def test_resume_through_haproxy_after_kill(self) -> None:
        """kill -9 of the receiving node: a re-send through HAProxy resumes on the other node."""
        c, f = self.front("--s3-lease", "2")
        data = payload(2 * PART + 999, seed=9)
        request = _wire.PutRequest("big.bin", len(data), sha(data), None, trailer=True)
        sock = connect_from(CLIENT, f.port)
        sock.sendall(_wire.encode_put(request))
        assert read_line(sock).startswith(b"ok 0")
        sock.sendall(data[: PART + 10])

        def a_part_stored() -> bool:
            prefix = f"{c.prefix}/.filexfer/uploads/"
            listed = c.s3.list_objects_v2(Bucket=c.bucket, Prefix=prefix).get("Contents", [])
            return any(
                b'"size": 0' not in c.s3.get_object(Bucket=c.bucket, Key=e["Key"])["Body"].read()
                for e in listed
            )

        wait_until(a_part_stored, 30, "a part in the store")
        holder = self.holder(c, f)  # the node HAProxy chose for this connection
        holder.process.kill()
        holder.wait(10)
        sock.close()
        answers: list[tuple[socket.socket, list[bytes]]] = []

        def resumed() -> bool:
            try:
                again = connect_from(CLIENT, f.port)
                again.sendall(_wire.encode_put(request))
                reply = read_line(again).split()
            except OSError:
                return False
            if reply[:1] != [b"ok"] or int(reply[1]) == 0:
                again.close()
                return False
            answers.append((again, reply))
            return True

        wait_until(resumed, 60, "a resume through HAProxy on the surviving node")
        again, reply = answers[0]
        offset = int(reply[1])
        assert offset >= PART and reply[2].decode() == sha(data[:offset])
        again.sendall(data[offset:] + _wire.encode_trailer(sha(data)))
        done = read_line(again)
        again.close()
        assert done.startswith(b"done "), done
        assert c.objects() == {"big.bin": data}

    @staticmethod
    def holder(c: Cluster, f: Front) -> ServerProcess:
        """The node holding the upload's lease (the lease names its host and process)."""
        prefix = f"{c.prefix}/.filexfer/leases/"
        (entry,) = c.s3.list_objects_v2(Bucket=c.bucket, Prefix=prefix)["Contents"]
        lease = json.loads(c.s3.get_object(Bucket=c.bucket, Key=entry["Key"])["Body"].read())
        pid = int(lease["node"].rsplit(":", 1)[1])
        (node,) = [node for node, _ in f.nodes if node.process.pid == pid]
        return node

    def test_twenty_at_once_rename(self) -> None:
        """20 uploads of one path at once through HAProxy: rename keeps 20 objects."""
        self.twenty_at_once("rename", 20, 0)

    def test_twenty_at_once_refuse(self) -> None:
        """20 uploads of one path at once through HAProxy: refuse stores 1, 19 get 409."""
        self.twenty_at_once("refuse", 1, 19)

    def twenty_at_once(self, policy: str, stored: int, refused: int) -> None:
        c, f = self.front("--on-conflict", policy)

        def send(number: int) -> bytes:
            answer, _ = upload_from(CLIENT, f.port, "same.txt", f"upload {number}\n".encode() * 500)
            return answer

        replies = all_at_once(send, 20)
        assert len(replies) == 20
        assert sum(b"\ndone " in r for r in replies) == stored, replies
        assert sum(b"error 409" in r for r in replies) == refused, replies  # at begin or placing
        objects = c.objects()
        assert len(objects) == stored and len(set(objects.values())) == stored

    def test_allow_and_untrusted_header(self) -> None:
        """--allow judges the client HAProxy passes; an untrusted peer's PROXY header is refused."""
        c, f = self.front("--allow", f"{CLIENT}/32")
        allowed, _ = upload_from(CLIENT, f.port, "ok.txt", b"fine")
        refused, _ = upload_from(OTHER_CLIENT, f.port, "no.txt", b"nope")
        assert b"\ndone " in allowed, allowed
        assert refused.startswith(b"error 403"), refused
        node = f.nodes[0][0]
        with connect_from(STRANGER, node.port) as sock:
            sock.sendall(v2_header(CLIENT, 4000) + b"FX/1 PUT x\nSize: 1\n\n")
            assert read_line(sock).startswith(b"error 403")
        assert c.objects() == {"ok.txt": b"fine"}
