"""Interoperability over real loopback sockets: classic clients and receivers.

The classic peers are written with the plain C{socket} module, the way the
seed tool's users write them; they run in threads (C{deferToThread}) so that
the reactor keeps serving, or the other way round with C{filexfer send} in
a subprocess.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from filexfer.storage import DirectoryStorage, IUpload
from filexfer.tcp import _wire
from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol
from filexfer.tcp.sender import send_file

from .helpers import (
    LOOPBACK,
    payload,
    recv_all,
    recv_exactly,
    reset_socket,
    run_filexfer,
    sha256_bytes,
    sha256_file,
    state_files,
    visible_files,
    write_file,
)

SOCKET_TIMEOUT = 20.0
MTIME_NS = 1_700_000_000_000_000_000


class WatchedStorage(DirectoryStorage):
    """Sets C{reached} once any upload holds at least C{threshold} bytes."""

    threshold = 1 << 62
    reached: threading.Event

    def begin(self, *args: Any, **kwargs: Any) -> Deferred[IUpload]:
        def watch(upload: IUpload) -> IUpload:
            write = upload.write

            def watched_write(data: bytes) -> None:
                write(data)
                if upload.received >= self.threshold:
                    self.reached.set()

            upload.write = watched_write  # type: ignore[method-assign]
            return upload

        return super().begin(*args, **kwargs).addCallback(watch)


class WatchedProtocol(ReceiverProtocol):
    """Tells its factory when it is completely done with a connection."""

    factory: WatchedFactory

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.factory.released.put(self)


class WatchedFactory(ReceiverFactory):
    """Puts each connection in C{released} once the server has handled its loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.released: DeferredQueue[ReceiverProtocol] = DeferredQueue()

    def buildProtocol(self, addr: Any) -> ReceiverProtocol:
        return WatchedProtocol(self)


class WatchingEndpoint:
    """A client endpoint whose C{lost} fires when the client connection is closed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lost: Deferred[None] = Deferred()

    def connect(self, factory: Any) -> Deferred[Any]:
        def hook(protocol: Any) -> Any:
            original = protocol.connectionLost

            def connection_lost(reason: Any) -> None:
                original(reason)
                self.lost.callback(None)

            protocol.connectionLost = connection_lost
            return protocol

        return self.inner.connect(factory).addCallback(hook)


class ReceiverInteropTests(unittest.TestCase):
    """Our receiver, listening in the test reactor, against plain-socket clients."""

    timeout = 60

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.storage = WatchedStorage(self.root)
        self.storage.reached = threading.Event()
        self.factory = WatchedFactory(self.storage, clock=reactor)
        self.port = reactor.listenTCP(0, self.factory, interface=LOOPBACK)
        self.addCleanup(self.port.stopListening)
        self.address = (LOOPBACK, self.port.getHost().port)

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=SOCKET_TIMEOUT)

    def stored(self, path: str) -> bytes:
        with open(os.path.join(self.root, path), "rb") as handle:
            return handle.read()

    @inlineCallbacks
    def test_classic_client(self) -> Any:
        """A classic socket client (name, wait for exactly C{ok}, stream, close) stores intact."""
        data = payload(3 << 20, seed=11)

        def client() -> bytes:
            with self.connect() as sock:
                sock.sendall(b"classic.bin")
                reply = recv_exactly(sock, 2)
                sock.sendall(data)
            return reply

        reply = yield deferToThread(client)
        self.assertEqual(reply, b"ok")
        yield self.factory.released.get()
        self.assertEqual(sha256_file(os.path.join(self.root, "classic.bin")), sha256_bytes(data))
        self.assertEqual(state_files(self.root, "tmp"), [])

    @inlineCallbacks
    def test_nc_style_newline(self) -> Any:
        """An C{nc}-style client sending C{name\\n} stores under C{name}."""

        def client() -> bytes:
            with self.connect() as sock:
                sock.sendall(b"from-nc.txt\n")
                reply = recv_exactly(sock, 2)
                sock.sendall(b"hello from nc\n")
                sock.shutdown(socket.SHUT_WR)
                return reply + recv_all(sock)

        reply = yield deferToThread(client)
        self.assertEqual(reply, b"ok")
        yield self.factory.released.get()
        self.assertEqual(self.stored("from-nc.txt"), b"hello from nc\n")

    @inlineCallbacks
    def test_classic_reset_stores_nothing(self) -> Any:
        """A classic client that resets mid-stream leaves no file under the name."""
        self.storage.threshold = 100_000

        def client() -> None:
            sock = self.connect()
            sock.sendall(b"reset.bin")
            assert recv_exactly(sock, 2) == b"ok"
            sock.sendall(payload(200_000))
            assert self.storage.reached.wait(SOCKET_TIMEOUT), "the server never got the bytes"
            reset_socket(sock)

        yield deferToThread(client)
        yield self.factory.released.get()
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(state_files(self.root, "tmp"), [])

    @inlineCallbacks
    def test_fx1_reset_then_resume(self) -> Any:
        """An FX/1 upload reset mid-stream keeps its partial; send_file then resumes from it."""
        data = payload(2 << 20, seed=12)
        half = len(data) // 2
        self.storage.threshold = half
        request = _wire.PutRequest("resume.bin", len(data), None, MTIME_NS, trailer=True)

        def client() -> bytes:
            sock = self.connect()
            sock.sendall(_wire.encode_put(request))
            reply = sock.recv(100)
            sock.sendall(data[:half])
            assert self.storage.reached.wait(SOCKET_TIMEOUT), "the server never got the bytes"
            reset_socket(sock)
            return reply

        reply = yield deferToThread(client)
        self.assertEqual(reply, b"ok 0 %s\n" % sha256_bytes(b"").encode())
        yield self.factory.released.get()
        self.assertEqual(visible_files(self.root), [])
        self.assertEqual(len(state_files(self.root, "partial")), 1)

        local = write_file(os.path.abspath(self.mktemp()), data)
        os.utime(local, ns=(MTIME_NS, MTIME_NS))
        progress: list[tuple[int, int]] = []
        endpoint = WatchingEndpoint(TCP4ClientEndpoint(reactor, *self.address))
        receipt = yield send_file(
            reactor,
            endpoint,
            local,
            name="resume.bin",
            progress=lambda d, t: progress.append((d, t)),
        )
        yield endpoint.lost
        yield self.factory.released.get()
        self.assertGreaterEqual(progress[0][0], half)
        self.assertEqual(
            (receipt.size, receipt.sha256, receipt.path),
            (len(data), sha256_bytes(data), "resume.bin"),
        )
        self.assertEqual(sha256_file(os.path.join(self.root, "resume.bin")), sha256_bytes(data))
        self.assertEqual(state_files(self.root, "partial"), [])

    @inlineCallbacks
    def test_send_file_over_tcp(self) -> Any:
        """send_file over a real TCP connection: a multi-MB file, verified receipt."""
        data = payload(5 << 20, seed=13)
        local = write_file(os.path.abspath(self.mktemp()), data)
        endpoint = WatchingEndpoint(TCP4ClientEndpoint(reactor, *self.address))
        receipt = yield send_file(reactor, endpoint, local, name="dir/over tcp.bin")
        yield endpoint.lost
        yield self.factory.released.get()
        self.assertEqual(receipt.path, "dir/over tcp.bin")
        self.assertEqual(receipt.sha256, sha256_bytes(data))
        self.assertEqual(
            sha256_file(os.path.join(self.root, "dir", "over tcp.bin")), receipt.sha256
        )

    @inlineCallbacks
    def test_bad_client_then_good(self) -> Any:
        """After a garbage handshake (answered with an error line) the next client is served."""

        def garbage() -> bytes:
            with self.connect() as sock:
                sock.sendall(b"FX/1 GET /etc/passwd\n\n")
                return recv_all(sock)

        answer = yield deferToThread(garbage)
        self.assertTrue(answer.startswith(b"error 400 "), answer)
        yield self.factory.released.get()

        def good() -> bytes:
            with self.connect() as sock:
                sock.sendall(b"good.txt")
                reply = recv_exactly(sock, 2)
                sock.sendall(b"fine")
                return reply

        self.assertEqual((yield deferToThread(good)), b"ok")
        yield self.factory.released.get()
        self.assertEqual(self.stored("good.txt"), b"fine")


class ClassicReceiver:
    """A classic receiver written with the socket module, in a thread: one file, then stop."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((LOOPBACK, 0))
        self.listener.listen(1)
        self.listener.settimeout(SOCKET_TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.name = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(SOCKET_TIMEOUT)
                self.name = conn.recv(1024)  # the whole name in one read, as the seed tool does
                conn.sendall(b"ok")
                data = recv_all(conn)
            with open(os.path.join(self.directory, self.name.decode()), "wb") as handle:
                handle.write(data)
        except BaseException as error:  # reported by the test
            self.error = error
        finally:
            self.listener.close()

    def join(self) -> None:
        self.thread.join(SOCKET_TIMEOUT)
        assert not self.thread.is_alive(), "the classic receiver did not finish"
        if self.error is not None:
            raise self.error


class SenderInteropTests(unittest.TestCase):
    """Our C{filexfer send --plain} against a classic receiver."""

    def test_plain_send_to_classic_receiver(self) -> None:
        """C{filexfer send --plain} delivers a file intact to a classic socket receiver."""
        received = os.path.abspath(self.mktemp())
        os.makedirs(received)
        data = payload(3 << 20, seed=14)
        local = write_file(os.path.join(os.path.abspath(self.mktemp()), "plain.bin"), data)
        server = ClassicReceiver(received)
        result = run_filexfer(
            "send", "--plain", "--no-progress", local, f"{LOOPBACK}:{server.port}"
        )
        server.join()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(server.name, b"plain.bin")
        self.assertEqual(sha256_file(os.path.join(received, "plain.bin")), sha256_bytes(data))
        self.assertIn("plain.bin", result.stdout)
