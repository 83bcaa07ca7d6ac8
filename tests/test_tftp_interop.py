"""Real TFTP peers against our server, and our client against tftpd-hpa.

curl, the tftp-hpa client, atftp and in.tftpd run as subprocesses while the
server runs in the test's reactor on a free loopback port.  Every
subprocess is bounded by a timeout and stopped by its PID.  A missing tool
is a failure, not a skip: scripts/install-test-tools installs them all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from collections.abc import Generator, Sequence
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet import reactor as _reactor
from twisted.python.failure import Failure
from twisted.trial import unittest

from filexfer.storage import DirectoryStorage
from filexfer.tftp import TFTPError, TFTPServerProtocol, download, upload
from filexfer.tftp import _packets as p
from tests.helpers import free_udp_port

PROCESS_TIMEOUT = 30.0
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

reactor: Any = _reactor


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
    return path


class _Collect(protocol.ProcessProtocol):
    """Collects a subprocess's output and fires with (out, err, exit code)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[tuple[bytes, bytes, int | None]] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        code = reason.value.exitCode if isinstance(reason.value, error.ProcessTerminated) else 0
        self.ended.callback((bytes(self.out), bytes(self.err), code))


class _Tools(unittest.TestCase):
    """Helpers: find a tool (or fail clearly), run it bounded in time."""

    timeout = 120

    def tool(self, name: str) -> str:
        path = shutil.which(name, path=_SEARCH_PATH)
        if path is None:
            self.fail(f"{name} is not installed; run scripts/install-test-tools")
        return path

    def spawn(self, argv: Sequence[str], cwd: str | None = None) -> tuple[Any, _Collect]:
        collect = _Collect()
        transport = reactor.spawnProcess(
            collect, argv[0], list(argv), env=dict(os.environ), path=cwd
        )
        return transport, collect

    @defer.inlineCallbacks
    def run_tool(
        self, argv: Sequence[str], cwd: str | None = None, expect: int = 0
    ) -> Generator[Any, Any, bytes]:
        """Run C{argv} to completion within PROCESS_TIMEOUT; check its exit code."""
        transport, collect = self.spawn(argv, cwd)
        killer = reactor.callLater(PROCESS_TIMEOUT, _kill, transport)
        out, err, code = yield collect.ended
        timed_out = not killer.active()
        if not timed_out:
            killer.cancel()
        self.assertFalse(timed_out, f"{argv[0]} ran longer than {PROCESS_TIMEOUT}s")
        self.assertEqual(code, expect, f"{' '.join(argv)}\nstdout: {out!r}\nstderr: {err!r}")
        return out + err

    def start_tftpd_hpa(self, root: str) -> int:
        """Start in.tftpd (-s: chrooted to C{root}, -c: may create) on a free port; the port.

        It is stopped (TERM, then KILL) at cleanup; the caller waits until it answers.
        """
        tftpd = self.tool("in.tftpd")
        if os.geteuid() != 0:
            self.fail("in.tftpd -s -u root (chroot) needs root to run")
        os.chmod(root, 0o777)
        number = free_udp_port()
        argv = [tftpd, "-L", "-c", "-s", "-u", "root", "-a", f"127.0.0.1:{number}", root]
        process, collect = self.spawn(argv)
        self.addCleanup(self._stop_tftpd_hpa, process, collect)
        return number

    @defer.inlineCallbacks
    def _stop_tftpd_hpa(self, process: Any, collect: _Collect) -> Generator[Any, Any, None]:
        if not collect.ended.called:
            process.signalProcess("TERM")
            killer = reactor.callLater(PROCESS_TIMEOUT, _kill, process)
            yield collect.ended
            if killer.active():
                killer.cancel()


def _kill(transport: Any) -> None:
    try:
        transport.signalProcess("KILL")
    except error.ProcessExitedAlready:
        pass


class PeersAgainstOurServerTests(_Tools):
    """curl, tftp-hpa and atftp upload to and download from our server."""

    host = "127.0.0.1"

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.server = TFTPServerProtocol(
            storage=DirectoryStorage(self.root, "overwrite"), reactor=reactor
        )
        self.port = reactor.listenUDP(0, self.server, interface=self.host)
        self.number = self.port.getHost().port
        self.addCleanup(self._stop)

    @defer.inlineCallbacks
    def _stop(self) -> Generator[Any, Any, None]:
        yield self.server.stop_transfers()
        yield self.port.stopListening()

    def url(self, name: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tftp://{host}:{self.number}/{name}"

    def stored(self, name: str) -> str:
        return os.path.join(self.root, name)

    @defer.inlineCallbacks
    def check_curl(self, size: int, *extra: str) -> Generator[Any, Any, None]:
        curl = self.tool("curl")
        source = _write(os.path.join(self.work, "src"), os.urandom(size))
        yield self.run_tool([curl, "-sS", *extra, "-T", source, self.url("c.bin")])
        self.assertEqual(_digest(self.stored("c.bin")), _digest(source))
        target = os.path.join(self.work, "out")
        yield self.run_tool([curl, "-sS", *extra, "-o", target, self.url("c.bin")])
        self.assertEqual(_digest(target), _digest(source))

    def test_curl(self) -> defer.Deferred[None]:
        """curl uploads and downloads a file (512-byte blocks)."""
        return self.check_curl(300_001)

    def test_curl_blksize(self) -> defer.Deferred[None]:
        """curl with --tftp-blksize 1428 round-trips an exact multiple of the block size."""
        return self.check_curl(1428 * 300, "--tftp-blksize", "1428")

    @defer.inlineCallbacks
    def test_curl_missing_file(self) -> Generator[Any, Any, None]:
        """curl reports a missing file as exit code 68 (TFTP file not found), writes nothing."""
        curl = self.tool("curl")
        target = os.path.join(self.work, "none")
        yield self.run_tool([curl, "-sS", "-o", target, self.url("missing")], expect=68)
        self.assertFalse(os.path.exists(target))

    @defer.inlineCallbacks
    def test_tftp_hpa(self) -> Generator[Any, Any, None]:
        """The tftp-hpa client puts and gets files, including an empty one."""
        tftp = self.tool("tftp")
        for size in (0, 100_000):
            name = f"hpa-{size}.bin"
            source = _write(os.path.join(self.work, name), os.urandom(size))
            yield self.run_tool(
                [tftp, "-m", "binary", self.host, str(self.number), "-c", "put", source, name]
            )
            self.assertEqual(_digest(self.stored(name)), _digest(source))
            target = os.path.join(self.work, f"back-{size}")
            yield self.run_tool(
                [tftp, "-m", "binary", self.host, str(self.number), "-c", "get", name, target]
            )
            self.assertEqual(_digest(target), _digest(source))

    @defer.inlineCallbacks
    def test_atftp_windowsize(self) -> Generator[Any, Any, None]:
        """atftp with windowsize 16 and blksize 1428 puts and gets a 2 MB file."""
        atftp = self.tool("atftp")
        options = ["--option", "windowsize 16", "--option", "blksize 1428"]
        source = _write(os.path.join(self.work, "a.bin"), os.urandom(2_000_000 + 3))
        yield self.run_tool(
            [atftp, *options, "-p", "-l", source, "-r", "at.bin", self.host, str(self.number)]
        )
        self.assertEqual(_digest(self.stored("at.bin")), _digest(source))
        target = os.path.join(self.work, "at.out")
        yield self.run_tool(
            [atftp, *options, "-g", "-l", target, "-r", "at.bin", self.host, str(self.number)]
        )
        self.assertEqual(_digest(target), _digest(source))


class PeersOverIPv6Tests(PeersAgainstOurServerTests):
    """The same peers against our server listening on ::1."""

    host = "::1"

    def setUp(self) -> None:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.bind(("::1", 0))
        except OSError:  # pragma: no cover
            raise unittest.SkipTest("no IPv6 loopback") from None
        super().setUp()

    def test_tftp_hpa(self) -> defer.Deferred[None]:
        """The tftp-hpa client (-6) puts and gets over IPv6."""
        return self._tftp_hpa_v6()

    @defer.inlineCallbacks
    def _tftp_hpa_v6(self) -> Generator[Any, Any, None]:
        tftp = self.tool("tftp")
        source = _write(os.path.join(self.work, "six.bin"), os.urandom(70_000))
        base = [tftp, "-6", "-m", "binary", self.host, str(self.number), "-c"]
        yield self.run_tool([*base, "put", source, "six.bin"])
        target = os.path.join(self.work, "six.out")
        yield self.run_tool([*base, "get", "six.bin", target])
        self.assertEqual(_digest(target), _digest(source))


class OurClientAgainstTftpdHpaTests(_Tools):
    """Our client uploads to and downloads from tftpd-hpa (in.tftpd)."""

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        return self._start()

    @defer.inlineCallbacks
    def _start(self) -> Generator[Any, Any, None]:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        _write(os.path.join(self.root, "ready"), b"ok")
        self.number = self.start_tftpd_hpa(self.root)
        # Wait until it answers: a bounded number of quick retries, no sleep.
        probe = os.path.join(self.work, "ready")
        yield download(reactor, "127.0.0.1", self.number, "ready", probe, timeout=0.1, retries=50)

    @defer.inlineCallbacks
    def check(self, size: int, **options: Any) -> Generator[Any, Any, None]:
        name = f"f{size}.bin"
        source = _write(os.path.join(self.work, name), os.urandom(size))
        sent = yield upload(reactor, "127.0.0.1", self.number, source, name, **options)
        self.assertEqual(sent, size)
        self.assertEqual(_digest(os.path.join(self.root, name)), _digest(source))
        target = os.path.join(self.work, f"{name}.out")
        got = yield download(reactor, "127.0.0.1", self.number, name, target, **options)
        self.assertEqual(got, size)
        self.assertEqual(_digest(target), _digest(source))

    def test_defaults(self) -> defer.Deferred[None]:
        """With our defaults (tftpd-hpa has no windowsize) a 3 MB file round-trips."""
        return self.check(3_000_000)

    def test_classic(self) -> defer.Deferred[None]:
        """With 512-byte blocks and no window an exact multiple of 512 round-trips."""
        return self.check(512 * 40, blksize=512, windowsize=1)

    def test_empty(self) -> defer.Deferred[None]:
        """An empty file round-trips."""
        return self.check(0)

    @defer.inlineCallbacks
    def test_missing(self) -> Generator[Any, Any, None]:
        """A missing file fails with TFTPError 1 and leaves no local file."""
        target = os.path.join(self.work, "nothing")
        failure = yield self.assertFailure(
            download(reactor, "127.0.0.1", self.number, "nothing", target), TFTPError
        )
        self.assertEqual(failure.code, p.FILE_NOT_FOUND)
        self.assertEqual(sorted(os.listdir(self.work)), ["ready"])


class _Ask(protocol.DatagramProtocol):
    """Sends one datagram and fires with the first answer (or None after a while)."""

    def __init__(self, datagram: bytes, to: tuple[str, int], wait: float = 1.0) -> None:
        self.datagram = datagram
        self.to = to
        self.wait = wait
        self.answer: defer.Deferred[bytes | None] = defer.Deferred()
        self.timer: Any = None

    def startProtocol(self) -> None:
        self.transport.write(self.datagram, self.to)
        self.timer = reactor.callLater(self.wait, self._done, None)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if datagram[:2] == b"\x00\x03":  # a transfer started: end it, so no one retries
            self.transport.write(p.encode_error(p.NOT_DEFINED, "seen enough"), addr)
        if self.timer.active():
            self.timer.cancel()
            self._done(datagram)

    def _done(self, answer: bytes | None) -> None:
        if not self.answer.called:
            self.answer.callback(answer)


def _shape(answer: bytes | None) -> tuple[Any, ...]:
    """What a client sees of an answer: DATA and its payload, ACK, OACK, or the ERROR code."""
    if answer is None:
        return ("silence",)
    decoded = p.decode(answer)
    if isinstance(decoded, p.Error):
        return ("ERROR", decoded.code)
    if isinstance(decoded, p.Data):
        return ("DATA", decoded.block, decoded.payload)
    return (type(decoded).__name__,)


class RequestShapesLikeTftpdHpaTests(_Tools):
    """Odd requests get the answer tftpd-hpa gives (issues 1 and 6), side by side."""

    files = {"boot.cfg": b"boot\n", "pxelinux.cfg/default": b"DEFAULT linux\n"}

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        return self._start()

    @defer.inlineCallbacks
    def _start(self) -> Generator[Any, Any, None]:
        roots = []
        for _ in ("tftpd-hpa", "ours"):
            root = os.path.abspath(self.mktemp())
            for name, data in self.files.items():
                os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
                _write(os.path.join(root, name), data)
            roots.append(root)
        self.hpa = self.start_tftpd_hpa(roots[0])
        self.server = TFTPServerProtocol(
            storage=DirectoryStorage(roots[1], "overwrite"), reactor=reactor
        )
        self.port = reactor.listenUDP(0, self.server, interface="127.0.0.1")
        self.addCleanup(self._stop)
        # Wait until it answers (bounded quick retries, no sleep), with the
        # shortest request of the test: see test_same_answers.
        for _ in range(50):
            answer = yield self.ask(b"\x00\x01boot.cfg\x00octet", self.hpa, wait=0.1)
            if answer != ("silence",):
                break

    @defer.inlineCallbacks
    def _stop(self) -> Generator[Any, Any, None]:
        yield self.server.stop_transfers()
        yield self.port.stopListening()

    @defer.inlineCallbacks
    def ask(
        self, datagram: bytes, port: int, wait: float = 1.0
    ) -> Generator[Any, Any, tuple[Any, ...]]:
        asker = _Ask(datagram, ("127.0.0.1", port), wait)
        listening = reactor.listenUDP(0, asker, interface="127.0.0.1")
        try:
            answer = yield asker.answer
        finally:
            yield listening.stopListening()
        return _shape(answer)

    @defer.inlineCallbacks
    def test_same_answers(self) -> Generator[Any, Any, None]:
        """Leading slashes, a mode without NUL, no name, no NUL, no mode: as tftpd-hpa."""
        # tftpd-hpa (-L) reads past a request's end into its buffer: the requests
        # without a final NUL go first, shortest first, while the buffer is zeros.
        requests = [
            b"\x00\x01boot.cfg\x00octet",
            b"\x00\x01boot.cfg\x00netascii",
            b"\x00\x01/boot.cfg\x00octet\x00",
            b"\x00\x01//boot.cfg\x00octet\x00",
            b"\x00\x01/pxelinux.cfg/default\x00octet\x00",
            b"\x00\x01/missing.cfg\x00octet\x00",
            b"\x00\x01\x00octet\x00",
            b"\x00\x02\x00octet\x00",
            b"\x00\x01boot.cfg",
            b"\x00\x01",
            b"\x00\x01boot.cfg\x00",
            b"\x00\x01boot.cfg\x00\x00",
            b"\x00\x01boot.cfg\x00mail\x00",
            b"\x00\x01boot.cfg\x00OCTET\x00",
        ]
        ours = self.port.getHost().port
        for request in requests:
            theirs = yield self.ask(request, self.hpa)
            mine = yield self.ask(request, ours)
            self.assertEqual(mine, theirs, request)
