"""Test doubles for code that embeds filexfer, in the spirit of C{treq.testing}.

 - L{MemoryStorage}: an L{IStorage} that keeps files in a dict, with the
   protocol's rules (names, conflict policy, Size, SHA256, 404) but no disk;
 - L{InMemoryReceiver}: a L{ReceiverFactory} that L{send_file} (or a client
   protocol of your own) reaches through C{twisted.test.iosim}, with a
   L{Clock}: no sockets, no threads, every result there at once;
 - L{InMemoryEndpoint}, L{connect_in_memory}, L{HalfCloseFakeTransport}: the
   pieces it is made of, for tests that need them apart;
 - L{ManualRunner}: a C{run_blocking} that runs the storage's work only when
   the test says so, to look at a transfer while the storage is busy;
 - L{FakeUDPNetwork}: a L{Clock} that also provides C{listenUDP}, a UDP
   network in memory with optional latency, jitter, loss and duplication
   (seeded); its L{FakeUDPPort}s hand datagrams to a TFTP transfer through
   the transfer's own burst reads and fast path, as real sockets do, and
   record what is written to them;
 - L{LossyRelay}: a UDP relay on real loopback sockets between one TFTP
   client and a server (any implementation), dropping, duplicating,
   delaying and reordering datagrams (seeded), and counting what it saw;
 - L{start_receiver}, L{start_tftp_server}: a receiver or a TFTP server on a
   free loopback port of the real reactor, storing under a root directory,
   for tests that want real sockets (L{RunningReceiver.stop} and
   L{RunningTFTPServer.stop} close everything again).

The pytest fixtures built on these are in L{filexfer.pytest_plugin}.

A file sent with L{send_file} to a receiver storing into memory::

    >>> import os, tempfile
    >>> from filexfer.testing import InMemoryReceiver, MemoryStorage
    >>> storage = MemoryStorage()
    >>> receiver = InMemoryReceiver(storage)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     local = os.path.join(folder, "hello.txt")
    ...     with open(local, "wb") as handle:
    ...         _ = handle.write(b"hello")
    ...     receipts = []
    ...     _ = receiver.send_file(local, name="notes/hello.txt").addCallback(receipts.append)
    >>> receipts[0].path, receipts[0].size
    ('notes/hello.txt', 5)
    >>> storage.files
    {'notes/hello.txt': b'hello'}

A TFTP download from a server, both on a lossy network in memory; the
clock runs the retransmission timers::

    >>> from filexfer.testing import FakeUDPNetwork
    >>> from filexfer.tftp import TFTPServerProtocol, download
    >>> network = FakeUDPNetwork(latency=0.001, loss=0.2, seed=1)
    >>> storage = MemoryStorage()
    >>> storage.files["boot.img"] = bytes(range(256)) * 40
    >>> server = TFTPServerProtocol(storage=storage, reactor=network)
    >>> _ = network.listenUDP(69, server)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     local = os.path.join(folder, "boot.img")
    ...     result = download(network, "127.0.0.1", 69, "boot.img", local, blksize=512)
    ...     network.run_until(result)
    ...     with open(local, "rb") as handle:
    ...         handle.read() == storage.files["boot.img"]
    True
    True
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import os
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
    IUDPTransport,
)
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._names import validate_path
from filexfer._types import ITFTPReactor
from filexfer.storage import (
    CONFLICT_POLICIES,
    BlockingRunner,
    ConflictPolicy,
    DirectoryStorage,
    IReadSource,
    IStorage,
    IUpload,
    Receipt,
    numbered_name,
    policy_for,
)
from filexfer.storage._disk import run_here
from filexfer.storage._sources import FileSource
from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol
from filexfer.tcp.sender import send_file
from filexfer.tftp._udp import reads_itself
from filexfer.tftp.server import TFTPServerProtocol

__all__ = [
    "FakeUDPNetwork",
    "FakeUDPPort",
    "HalfCloseFakeTransport",
    "InMemoryEndpoint",
    "InMemoryReceiver",
    "LossyRelay",
    "ManualRunner",
    "MemoryStorage",
    "MemoryUpload",
    "RunningReceiver",
    "RunningTFTPServer",
    "connect_in_memory",
    "start_receiver",
    "start_tftp_server",
]

LOOPBACK = "127.0.0.1"

_MAX_RENAME_TRIES = 10_000
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# -- storage -----------------------------------------------------------------------


@implementer(IStorage)
class MemoryStorage:
    """An L{IStorage} that keeps finished files in L{files}, a dict.

    It follows the rules of L{filexfer.storage.DirectoryStorage} that a
    peer can observe: the path rules of L{filexfer._names.validate_path}
    (400, 403 for C{.filexfer}); a path under a stored file is refused (403);
    the conflict policy (C{name (1).ext}, shortened as on a file system
    with 255-byte names), checked at C{begin} and again when the file is
    placed; C{max_size} against the announced Size and the arriving bytes
    (413); more bytes than Size, fewer, or bytes that do not hash to the
    announced or the trailing SHA256 (422, and nothing is stored); a file
    whose exact bytes are already stored for the path (the path itself or,
    under C{rename}, one of its numbered copies) is not stored again: the
    receipt names that copy, at C{begin} when the SHA256 is announced,
    otherwise once the bytes are in.

    What it leaves out: there is no resume (the offset is always 0 and
    C{abort(keep_partial=True)} keeps nothing), no "stored candidate" by
    Size and Mtime (the sender sends the whole file and the copy is found
    by content), no free-space reserve (507) and no check of the Mtime
    against a file system's range.  The announced Mtime of each stored file
    is kept in L{mtimes}.  Its receipt digest is SHA-256 only (L{digests}):
    a receiver declines a client's C{Digest: BLAKE3} and answers with SHA-256.

    @param on_conflict: C{"rename"}, C{"overwrite"} or C{"refuse"}.
    @param max_size: the largest accepted file in bytes, or None.
    @param run_blocking: runs the start and the placing of each upload; by
        default at once.  A L{ManualRunner} holds them until the test runs them.

    @ivar files: the stored files, by relative path.
    @ivar mtimes: the Mtime (ns) announced with each stored file that had one.
    """

    def __init__(
        self,
        on_conflict: ConflictPolicy = "rename",
        *,
        max_size: int | None = None,
        run_blocking: BlockingRunner[Any] = run_here,
    ) -> None:
        if on_conflict not in CONFLICT_POLICIES:
            raise ValueError(f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}")
        self.on_conflict = on_conflict
        self.max_size = max_size
        self.run_blocking = run_blocking
        self.files: dict[str, bytes] = {}
        self.mtimes: dict[str, int] = {}

    digests = ("sha256",)
    """The receipt digests L{begin} accepts (see L{IStorage.digests})."""

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
        digest: str = "sha256",
    ) -> Deferred[IUpload]:
        """Start receiving C{path} (see L{IStorage.begin}).

        C{trailer} and C{fresh} change nothing here: nothing is ever held
        from an earlier upload.  C{digest} must be C{"sha256"} (L{digests}).
        """
        if digest not in self.digests:
            raise ValueError(f"MemoryStorage computes no {digest!r} digest")
        try:
            path = validate_path(path)
            if size is not None:
                self.check_size(size)
        except TransferError as error:
            return fail(error)
        return self.run_blocking(lambda: self._begin(path, size, sha256, mtime_ns, exact_name))

    def _begin(
        self,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        exact_name: bool = False,
    ) -> IUpload:
        self._check_parents(path)
        policy = policy_for(self.on_conflict, exact_name)
        if self._is_directory(path) and (policy == "overwrite" or exact_name):
            raise TransferError(409, f"{path} exists and is a directory")
        if sha256 is not None and size is not None:
            stored = self._identical_copy(path, size, sha256, policy)
            if stored is not None:
                return MemoryUpload(self, path, size, sha256, mtime_ns, stored=stored)
        if self._taken(path) and policy == "refuse":
            raise TransferError(409, f"{path} already exists")
        return MemoryUpload(self, path, size, sha256, mtime_ns, exact_name=exact_name)

    def check_size(self, size: int) -> None:
        """Refuse with 413 a file of C{size} bytes above C{max_size}."""
        if self.max_size is not None and size > self.max_size:
            raise TransferError(
                413, f"file is larger than the server allows ({self.max_size} bytes)"
            )

    def place(
        self,
        path: str,
        data: bytes,
        digest: str,
        mtime_ns: int | None,
        exact_name: bool = False,
    ) -> Receipt:
        """Store verified bytes under C{path} by the conflict policy; their receipt.

        With C{exact_name}, under C{path} or not at all (L{policy_for}).
        """
        self._check_parents(path)
        policy = policy_for(self.on_conflict, exact_name)
        identical = self._identical_copy(path, len(data), digest, policy)
        if identical is not None:
            return identical
        if policy == "overwrite":
            if self._is_directory(path):
                raise TransferError(409, f"{path} exists and is a directory")
            stored_path = path
        elif not self._taken(path):
            stored_path = path
        elif policy == "refuse":
            raise TransferError(409, f"{path} already exists")
        else:
            stored_path = self._free_name(path)
        self.files[stored_path] = data
        if mtime_ns is None:
            self.mtimes.pop(stored_path, None)
        else:
            self.mtimes[stored_path] = mtime_ns
        return Receipt(len(data), digest, stored_path)

    # -- names -------------------------------------------------------------

    def _check_parents(self, path: str) -> None:
        parts = path.split("/")
        for end in range(1, len(parts)):
            if "/".join(parts[:end]) in self.files:
                raise TransferError(403, f"cannot store {path}: the path crosses a file")

    def _is_directory(self, path: str) -> bool:
        prefix = path + "/"
        return any(stored.startswith(prefix) for stored in self.files)

    def _taken(self, path: str) -> bool:
        return path in self.files or self._is_directory(path)

    def _numbered(self, path: str, number: int) -> str:
        *parents, name = path.split("/")
        return "/".join([*parents, numbered_name(name, number)])

    def _free_name(self, path: str) -> str:
        for number in range(1, _MAX_RENAME_TRIES):
            candidate = self._numbered(path, number)
            if not self._taken(candidate):
                return candidate
        raise TransferError(409, f"no free name for {path}: {_MAX_RENAME_TRIES} are taken")

    def _copies(self, path: str, policy: ConflictPolicy) -> list[str]:
        """C{path} and, under C{rename}, its numbered copies up to the first free number."""
        found = [path] if path in self.files else []
        if policy != "rename":
            return found
        for number in range(1, _MAX_RENAME_TRIES):
            candidate = self._numbered(path, number)
            if candidate not in self.files:
                break
            found.append(candidate)
        return found

    def _identical_copy(
        self, path: str, size: int, digest: str, policy: ConflictPolicy
    ) -> Receipt | None:
        for stored_path in self._copies(path, policy):
            data = self.files[stored_path]
            if len(data) == size and hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest):
                return Receipt(size, digest, stored_path)
        return None

    # -- reading -----------------------------------------------------------

    def open_read(self, path: str) -> Deferred[IReadSource]:
        """A stored file as a source that answers at once; 404 when absent, 403 for a directory."""
        try:
            path = validate_path(path)
            if path in self.files:
                data = self.files[path]
                return succeed(FileSource(io.BytesIO(data), len(data)))
            if self._is_directory(path):
                raise TransferError(403, f"{path} is not a regular file")
            raise TransferError(404, f"{path} not found")
        except TransferError:
            return fail()


@implementer(IUpload)
class MemoryUpload:
    """One file being received into a L{MemoryStorage}; nothing is held on abort.

    With C{stored}, the exact file is already there: no bytes are expected,
    and C{finish} answers with that receipt.
    """

    prefix_sha256: str | None = _EMPTY_SHA256
    offset = 0
    digest = "sha256"

    def __init__(
        self,
        storage: MemoryStorage,
        path: str,
        size: int | None,
        sha256: str | None,
        mtime_ns: int | None,
        *,
        stored: Receipt | None = None,
        exact_name: bool = False,
    ) -> None:
        self.path = path
        self.expected_size = size
        self.stored = stored
        self.exact_name = exact_name
        self._storage = storage
        self._sha256 = sha256
        self._mtime_ns = mtime_ns
        self._buffer = bytearray()
        self._closed = False
        if stored is not None:
            self.prefix_sha256 = None
            self.offset = stored.size

    @property
    def received(self) -> int:
        """Bytes held so far."""
        return self.offset + len(self._buffer)

    def check(self, additional: int) -> None:
        """Refuse (422, 413) C{additional} bytes that would break Size or C{max_size}."""
        if self.stored is not None:
            if additional:
                raise TransferError(422, "the file is already stored; no bytes expected")
            return
        total = self.received + additional
        if self.expected_size is not None and total > self.expected_size:
            raise TransferError(422, f"more bytes than the announced Size {self.expected_size}")
        self._storage.check_size(total)

    def write(self, data: bytes) -> None:
        """Keep C{data}, after L{check}."""
        if self._closed:
            raise TransferError(500, "the upload was aborted")
        self.check(len(data))
        self._buffer += data

    def finish(self, sha256: str | None = None) -> Deferred[Receipt]:
        """Verify Size and SHA256, then store by the conflict policy."""
        if self._closed:
            return fail(TransferError(500, "the upload was aborted"))
        if self.stored is not None:
            if sha256 is not None and sha256 != self.stored.sha256:
                return fail(TransferError(422, "SHA256 mismatch with the announced SHA256"))
            self._closed = True
            return succeed(self.stored)
        if self.expected_size is not None and self.received < self.expected_size:
            self.abort(keep_partial=True)
            return fail(
                TransferError(
                    422, f"short upload: {self.received} of {self.expected_size} bytes arrived"
                )
            )
        data = bytes(self._buffer)
        digest = hashlib.sha256(data).hexdigest()
        if self._sha256 is not None and digest != self._sha256:
            self.abort(keep_partial=False)
            return fail(TransferError(422, f"SHA256 mismatch: received data hashes to {digest}"))
        if sha256 is not None and digest != sha256:
            self.abort(keep_partial=False)
            return fail(
                TransferError(422, "the file changed while it was sent (its SHA-256 differs)")
            )
        self.abort(keep_partial=False)  # the bytes are in `data` now
        return self._storage.run_blocking(
            lambda: self._storage.place(self.path, data, digest, self._mtime_ns, self.exact_name)
        )

    def abort(self, keep_partial: bool) -> None:
        """Drop the bytes (there is no resume: C{keep_partial} keeps nothing)."""
        self._closed = True
        self._buffer = bytearray()


# -- connections in memory --------------------------------------------------------


class HalfCloseFakeTransport(iosim.FakeTransport):
    """An iosim transport that delivers a clean close like a real TCP FIN.

    Real TCP transports tell an L{IHalfCloseableProtocol} about the peer's
    FIN with C{readConnectionLost} before C{connectionLost}; plain iosim
    only calls C{connectionLost}.  L{filexfer.ReceiverProtocol} needs the
    former to complete a classic upload.
    """

    def reportDisconnect(self) -> None:
        """Tell the protocol of the peer's clean close, then of the connection's end."""
        reason = self.disconnectReason
        if (
            self.tls is None
            and isinstance(reason, ConnectionDone)
            and IHalfCloseableProtocol.providedBy(self.protocol)
        ):
            self.protocol.readConnectionLost()
        super().reportDisconnect()


def connect_in_memory(
    server: IProtocol, client: IProtocol, clock: Clock | None = None, greet: bool = True
) -> iosim.IOPump:
    """Connect two protocols with L{HalfCloseFakeTransport}s; the pump that moves bytes.

    @param clock: advanced by 0 at each pump (calls due now run).
    @param greet: pump until quiet right away (iosim's default).
    """
    server_transport = HalfCloseFakeTransport(
        server, isServer=True, peerAddress=iosim.FakeAddress()
    )
    client_transport = HalfCloseFakeTransport(client, isServer=False)
    return iosim.connect(
        server, server_transport, client, client_transport, greet=greet, clock=clock
    )


@implementer(IStreamClientEndpoint)
class InMemoryEndpoint:
    """A client endpoint that connects to a fresh protocol of C{server_factory} via iosim.

    Nothing moves until a pump in C{pumps} (one per connection) is pumped.
    """

    def __init__(self, server_factory: Factory, clock: Clock) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.pumps: list[iosim.IOPump] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Build both protocols and connect them; fires at once with the client."""
        client = protocolFactory.buildProtocol(iosim.FakeAddress())
        server = self.server_factory.buildProtocol(iosim.FakeAddress())
        assert client is not None and server is not None
        self.pumps.append(connect_in_memory(server, client, self.clock, greet=False))
        connected: IProtocol = client
        return succeed(connected)

    def flush(self) -> None:
        """Pump every connection until none moves a byte."""
        moved = True
        while moved:
            moved = False
            for pump in list(self.pumps):
                moved = pump.flush() or moved


class InMemoryReceiver:
    """A L{ReceiverFactory} on C{storage}, reached in memory with a L{Clock}.

    @param storage: where files go; a new L{MemoryStorage} by default.
    @param clock: the receiver's and the sender's clock; advance it to
        reach timeouts and the waits between retries.
    @param options: more keyword arguments for L{ReceiverFactory}
        (C{token}, C{limits}, C{handshake_timeout}...).
    """

    def __init__(
        self, storage: IStorage | None = None, *, clock: Clock | None = None, **options: Any
    ) -> None:
        self.storage: IStorage = storage if storage is not None else MemoryStorage()
        self.clock = clock if clock is not None else Clock()
        self.factory = ReceiverFactory(self.storage, clock=self.clock, **options)
        self.endpoint = InMemoryEndpoint(self.factory, self.clock)

    def send_file(self, path: str | os.PathLike[str], **options: Any) -> Deferred[Receipt]:
        """L{send_file} the local file at C{path} here; pumped until it is done.

        @param options: keyword arguments for L{send_file} (C{name},
            C{plain}, C{token}...).
        @return: the Deferred of L{send_file}: it has fired unless the
            storage holds work (a L{ManualRunner}) or the sender waits on
            the clock (a 503 retry).
        """
        result = send_file(self.clock, self.endpoint, path, **options)
        self.flush()
        return result

    def connect(self, client: IProtocol) -> iosim.IOPump:
        """Connect a client protocol of your own to a new receiver protocol.

        Nothing moves until the returned pump is pumped.
        """
        server = self.factory.buildProtocol(iosim.FakeAddress())
        pump = connect_in_memory(server, client, self.clock, greet=False)
        self.endpoint.pumps.append(pump)
        return pump

    def flush(self) -> None:
        """Pump every connection until nothing moves (a fresh attempt is a new one)."""
        self.endpoint.flush()


# -- a UDP network in memory -------------------------------------------------------

Address = tuple[str, int]

_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class _FakeSocket:
    """The socket a L{FakeUDPPort} hands to a protocol that reads it itself.

    Only what a TFTP transfer calls on a real socket: C{recvfrom}.
    """

    def __init__(self, queue: deque[tuple[bytes, Address]]) -> None:
        self._queue = queue

    def recvfrom(self, bufsize: int) -> tuple[bytes, Address]:
        """The next waiting datagram, cut to C{bufsize} bytes as UDP does.

        @raise BlockingIOError: nothing waits (C{EAGAIN}, as a non-blocking socket).
        """
        if not self._queue:
            raise BlockingIOError(errno.EAGAIN, "no datagram waiting")
        datagram, addr = self._queue.popleft()
        return datagram[:bufsize], addr


@implementer(IListeningPort, IUDPTransport)
class FakeUDPPort:
    """One UDP port on a L{FakeUDPNetwork}: what C{listenUDP} returns, and the transport.

    Datagrams that arrive wait in a queue, as in a socket's buffer, and the
    port tells its protocol the way a real port does: a protocol with
    C{readable(sock, bufsize)} (a TFTP transfer, see
    L{filexfer.tftp._udp.reads_itself}) is called with a socket-like object
    and reads the queue itself with C{recvfrom}, in bursts, through the
    same fast path as on a real socket; any other protocol gets
    C{datagramReceived} once per datagram.  Like a level-triggered poller,
    the port asks again while datagrams wait and the protocol takes some.
    An exception the protocol raises is not caught: the test sees it.

    @ivar protocol: the protocol listening here.
    @ivar interface: the interface it was bound on (as given to C{listenUDP}).
    @ivar number: the port number.
    @ivar maxPacketSize: longer datagrams are cut to this size when read.
    @ivar sent: every datagram written here, with its destination, in order;
        a test may read and clear it.
    @ivar closed: whether C{stopListening} was called.
    """

    def __init__(
        self,
        network: FakeUDPNetwork,
        number: int,
        protocol: DatagramProtocol,
        interface: str,
        maxPacketSize: int,
    ) -> None:
        self.network = network
        self.number = number
        self.protocol = protocol
        self.interface = interface
        self.maxPacketSize = maxPacketSize
        self.sent: list[tuple[bytes, Address]] = []
        self.closed = False
        self._incoming: deque[tuple[bytes, Address]] = deque()
        self._socket = _FakeSocket(self._incoming)
        self._ready: IDelayedCall | None = None
        self._broadcast = False

    # -- what the protocol calls -----------------------------------------------------

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        """Send C{packet} to C{addr}; the network carries it (or loses it).

        @raise OSError: the port is closed (C{EBADF}), as a closed socket would.
        """
        if self.closed:
            raise OSError(errno.EBADF, "the port is closed")
        if addr is None:
            raise NotImplementedError("connected UDP ports are not simulated")
        target = (addr[0], addr[1])
        datagram = bytes(packet)
        self.sent.append((datagram, target))
        self.network.carry(self.source_for(target), target, datagram)

    def getHost(self) -> IPv4Address | IPv6Address:
        """The address bound (C{0.0.0.0} for an IPv4 wildcard), as a real port says."""
        if ":" in self.interface:
            return IPv6Address("UDP", self.interface, self.number)
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.number)

    def stopListening(self) -> Deferred[None]:
        """Close the port at once: waiting datagrams are dropped, the protocol stopped."""
        if self.closed:
            return succeed(None)
        self.closed = True
        self._incoming.clear()
        if self._ready is not None and self._ready.active():
            self._ready.cancel()
        self.network.forget(self)
        self.protocol.doStop()
        return succeed(None)

    def startListening(self) -> None:
        """Nothing to do: C{listenUDP} returns a listening port."""

    def connect(self, host: str, port: int) -> None:
        """Not simulated: TFTP and most UDP servers use unconnected ports."""
        raise NotImplementedError("connected UDP ports are not simulated")

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Remember the flag (broadcast itself is not simulated)."""
        self._broadcast = enabled

    def getBroadcastAllowed(self) -> bool:
        """The flag set with L{setBroadcastAllowed}."""
        return self._broadcast

    # -- what the test (or the network) calls ---------------------------------------

    def source_for(self, target: Address) -> Address:
        """The address datagrams from here to C{target} come from.

        A port bound on a wildcard sends from the host it sends to, as the
        only host of this network would.
        """
        host = self.interface
        if host in _WILDCARD_HOSTS:
            host = target[0] if (":" in target[0]) == (host == "::") else self.network.host
        return (host, self.number)

    def receive(self, datagram: bytes, addr: Address) -> None:
        """C{datagram} arrives from C{addr} now: the protocol reads it before this returns.

        For a test that plays the peer itself.  It goes through the same
        reading as a datagram the network carries.
        """
        if self.closed:
            return
        self._incoming.append((bytes(datagram), (addr[0], addr[1])))
        self._read()

    def arrive(self, datagram: bytes, addr: Address) -> None:
        """C{datagram} arrives from C{addr}: the protocol reads it at the next turn.

        Datagrams that arrive at the same instant are read in one go (a
        burst), as a reactor polls once for all of them.
        """
        if self.closed:
            return
        self._incoming.append((datagram, addr))
        if self._ready is None or not self._ready.active():
            self._ready = self.network.callLater(0, self._read)

    @property
    def waiting(self) -> int:
        """Datagrams that arrived and were not read yet."""
        return len(self._incoming)

    def _read(self) -> None:
        queue = self._incoming
        protocol = self.protocol
        while queue and not self.closed:
            before = len(queue)
            if reads_itself(protocol):
                protocol.readable(self._socket, self.maxPacketSize)  # type: ignore[attr-defined]
            else:
                datagram, addr = queue.popleft()
                protocol.datagramReceived(datagram[: self.maxPacketSize], addr)
            if len(queue) >= before:
                return  # the protocol read nothing: a real poller would spin here


@implementer(ITFTPReactor)
class FakeUDPNetwork(Clock):
    """A L{Clock} that also provides C{listenUDP}: a UDP network on one host, in memory.

    Pass it as the reactor to L{TFTPServerProtocol}, L{filexfer.tftp.upload}
    or L{filexfer.tftp.download} (or any C{DatagramProtocol}).  A datagram
    written to a port reaches the open port at its address after
    C{latency} (plus up to C{jitter}, so later datagrams may overtake it)
    of the clock's time; nothing moves until the clock does:
    L{flush} delivers what is due now, L{run_until} lets time pass until a
    Deferred has fired, and C{advance} works as on any L{Clock} (which
    moves the time first, then runs what was due: a timer re-armed then
    counts from the end of the step; step by step, or use L{run_until},
    to keep retransmissions on time).  A
    datagram for an address where no port listens is dropped when sent
    (it is still in the sending port's C{sent}).

    Ports deliver to a TFTP transfer through its own burst reads and fast
    path (see L{FakeUDPPort}), as real ports do.

    @param latency: seconds each datagram takes.
    @param jitter: up to this many more seconds, drawn for each datagram.
    @param loss: the probability that a datagram is lost.
    @param duplicate: the probability that a datagram arrives twice (each
        copy may still be lost, and is delayed on its own).
    @param seed: seeds the draws, so a run can be repeated exactly.
    @param host: the address of the one host, where ports bound on a
        wildcard send from.

    @ivar ports: every port opened, in order, closed ones included.
    @ivar listen_error: when set, C{listenUDP} raises it (say, no ports left).
    @ivar drop: when set, called as C{drop(source, target, datagram)} for
        every datagram sent; True loses it (to lose chosen datagrams).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        seed: int = 0,
        host: str = LOOPBACK,
    ) -> None:
        super().__init__()
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.duplicate = duplicate
        self.random = random.Random(seed)
        self.host = host
        self.ports: list[FakeUDPPort] = []
        self.listen_error: Exception | None = None
        self.drop: Callable[[Address, Address, bytes], bool] | None = None
        self._open: dict[int, FakeUDPPort] = {}
        self._next_number = 40000

    def listenUDP(
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> FakeUDPPort:
        """Open a port (a free one from 40000 up for 0) and start C{protocol} on it.

        @raise CannotListenError: the number is taken.
        """
        if self.listen_error is not None:
            raise self.listen_error
        if port == 0:
            port = self._free_number()
        elif port in self._open:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "in use"))
        fake = FakeUDPPort(self, port, protocol, interface, maxPacketSize)
        self.ports.append(fake)
        self._open[port] = fake
        protocol.makeConnection(fake)
        return fake

    def _free_number(self) -> int:
        for _ in range(65536):
            number = self._next_number
            self._next_number = number + 1 if number < 65535 else 1024
            if number not in self._open:
                return number
        raise CannotListenError("", 0, OSError(errno.EADDRINUSE, "no free port"))

    def forget(self, port: FakeUDPPort) -> None:
        """C{port} has closed: its number is free again."""
        if self._open.get(port.number) is port:
            del self._open[port.number]

    def port_at(self, address: Address) -> FakeUDPPort | None:
        """The open port datagrams to C{address} reach, if any."""
        port = self._open.get(address[1])
        if port is None:
            return None
        if port.interface in _WILDCARD_HOSTS or port.interface == address[0]:
            return port
        return None

    def carry(self, source: Address, target: Address, datagram: bytes) -> None:
        """Put C{datagram} on the wire: lost, duplicated and delayed as configured.

        A datagram for an address where no port listens is dropped at once.
        """
        if self.port_at(target) is None:
            return
        drop = self.drop
        if drop is not None and drop(source, target, datagram):
            return
        draw = self.random.random
        copies = 2 if self.duplicate and draw() < self.duplicate else 1
        for _ in range(copies):
            if self.loss and draw() < self.loss:
                continue
            delay = self.latency + (draw() * self.jitter if self.jitter else 0.0)
            self.callLater(delay, self._deliver, source, target, datagram)

    def _deliver(self, source: Address, target: Address, datagram: bytes) -> None:
        port = self.port_at(target)
        if port is not None:
            port.arrive(datagram, source)

    def flush(self) -> None:
        """Run what is due now: deliver datagrams in flight without latency, and the replies."""
        self.advance(0)

    def run_until(self, result: Deferred[Any], limit: float = 600.0) -> bool:
        """Let the clock jump from one delayed call to the next until C{result} has fired.

        Stops after C{limit} seconds of the clock's time, or when nothing
        is scheduled any more.

        @return: whether C{result} has fired.
        """
        fired: list[bool] = []

        def note(value: object) -> object:
            fired.append(True)
            return value

        result.addBoth(note)
        end = self.seconds() + limit
        self.advance(0)
        while not fired and self.calls:
            when = min(call.getTime() for call in self.calls)
            if when > end:
                self.advance(end - self.seconds())
                break
            self.rightNow = max(self.rightNow, when)
            self.advance(0)
        return bool(fired)


# -- a lossy relay on real sockets -------------------------------------------------


class _RelayLeg(DatagramProtocol):
    """One relay socket: hands what it receives to the relay."""

    def __init__(self, relay: LossyRelay) -> None:
        self.relay = relay

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.relay.received(self, datagram, (addr[0], addr[1]))


class LossyRelay:
    """A UDP relay between one TFTP client and a server, impairing every datagram.

    The client talks to the address L{start} returns; the relay talks to
    the server from a port of its own.  For each transfer port (TID) the
    server opens, the relay opens a mirror port, so the client sees a TID
    of its own to lock onto.  Every datagram, either way, is copied twice
    with probability C{duplicate}; each copy is lost with probability
    C{loss}, else delivered after C{delay} seconds, plus a draw from
    C{reorder_delay} with probability C{reorder} (so later datagrams
    overtake it).  The draws come from C{random.Random(seed)}.

    @param reactor: a reactor with C{listenUDP} and C{callLater}.
    @param server: the server's (host, port).
    @param host: the loopback address the relay listens on.
    @ivar data_sent: DATA datagrams the relay was given, per direction
        (C{"to-server"}, C{"to-client"}), before any impairment.
    @ivar acks_sent: ACK datagrams likewise.
    @ivar dropped: copies lost, both ways.
    @ivar duplicated: datagrams copied twice, both ways.
    """

    def __init__(
        self,
        reactor: Any,
        server: Address,
        *,
        seed: int,
        loss: float = 0.05,
        duplicate: float = 0.05,
        delay: float = 0.001,
        reorder: float = 0.05,
        reorder_delay: tuple[float, float] = (0.001, 0.004),
        host: str = LOOPBACK,
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.host = host
        self.random = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.client: Address | None = None
        self.front = _RelayLeg(self)
        self.back = _RelayLeg(self)
        self.mirrors: dict[Address, _RelayLeg] = {}  # server TID -> our port facing the client
        self.ports: list[Any] = []
        self.pending: set[IDelayedCall] = set()
        self.data_sent: dict[str, int] = {"to-server": 0, "to-client": 0}
        self.acks_sent: dict[str, int] = {"to-server": 0, "to-client": 0}
        self.blocks_seen: dict[str, set[int]] = {"to-server": set(), "to-client": set()}
        self.acks_seen: dict[str, set[int]] = {"to-server": set(), "to-client": set()}
        self.dropped = 0
        self.duplicated = 0

    def start(self) -> Address:
        """Listen; return the address the client should use as the server."""
        self.ports.append(self.reactor.listenUDP(0, self.back, interface=self.host))
        front = self.reactor.listenUDP(0, self.front, interface=self.host)
        self.ports.append(front)
        return (self.host, front.getHost().port)

    def stop(self) -> Deferred[Any]:
        """Cancel pending deliveries and close every port."""
        for call in list(self.pending):
            if call.active():
                call.cancel()
        return gatherResults([maybeDeferred(port.stopListening) for port in self.ports])

    def received(self, leg: _RelayLeg, datagram: bytes, source: Address) -> None:
        """A datagram reached one of the relay's ports from C{source}."""
        if leg is self.back:
            self._from_server(datagram, source)
            return
        self.client = source
        target = self.server
        for tid, mirror in self.mirrors.items():
            if mirror is leg:
                target = tid
        self._impair(self.back, datagram, target, "to-server")

    def _from_server(self, datagram: bytes, tid: Address) -> None:
        mirror = self.mirrors.get(tid)
        if mirror is None:
            mirror = self.mirrors[tid] = _RelayLeg(self)
            self.ports.append(self.reactor.listenUDP(0, mirror, interface=self.host))
        if self.client is not None:
            self._impair(mirror, datagram, self.client, "to-client")

    def _impair(self, leg: _RelayLeg, datagram: bytes, target: Address, direction: str) -> None:
        kind = datagram[:2]
        if kind == b"\x00\x03":  # DATA: count what the sender sent
            self.data_sent[direction] += 1
            self.blocks_seen[direction].add(int.from_bytes(datagram[2:4], "big"))
        elif kind == b"\x00\x04":
            self.acks_sent[direction] += 1
            self.acks_seen[direction].add(int.from_bytes(datagram[2:4], "big"))
        draw = self.random.random
        copies = 2 if draw() < self.duplicate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            if draw() < self.loss:
                self.dropped += 1
                continue
            delay = self.delay
            if draw() < self.reorder:
                delay += self.random.uniform(*self.reorder_delay)
            call = self.reactor.callLater(delay, self._deliver, leg, datagram, target)
            self.pending.add(call)

    def _deliver(self, leg: _RelayLeg, datagram: bytes, target: Address) -> None:
        self.pending = {call for call in self.pending if call.active()}
        if leg.transport is not None:
            leg.transport.write(datagram, target)

    def retransmitted(self, direction: str) -> int:
        """DATA datagrams sent more than once toward C{direction}.

        Blocks are counted by number, so a transfer of more than 65536
        blocks counts a wrapped number as a repeat.
        """
        return self.data_sent[direction] - len(self.blocks_seen[direction])

    def reacked(self, direction: str) -> int:
        """ACK datagrams sent more than once toward C{direction} (by block number)."""
        return self.acks_sent[direction] - len(self.acks_seen[direction])


# -- blocking work -----------------------------------------------------------------


class ManualRunner:
    """A C{run_blocking} for a storage that runs the work only when told to.

    Pass it as C{run_blocking} to L{MemoryStorage} or
    L{filexfer.DirectoryStorage}; the transfer waits (as it would on a busy
    thread pool) until the test calls L{run_all}.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        """Queue C{work}; the Deferred fires with its result when it runs."""
        result: Deferred[Any] = Deferred()
        self.pending.append((work, result))
        return result

    def run_all(self) -> None:
        """Run the queued work now, firing each Deferred (work queued meanwhile too)."""
        while self.pending:
            work, result = self.pending.pop(0)
            try:
                value = work()
            except Exception:
                result.errback(Failure())
            else:
                result.callback(value)


# -- real sockets on loopback ------------------------------------------------------


class _ClosingReceiverFactory(ReceiverFactory):
    """A L{ReceiverFactory} that can close the connections it still has."""

    def __init__(self, storage: IStorage, **options: Any) -> None:
        super().__init__(storage, **options)
        self._open: dict[ReceiverProtocol, list[Deferred[None]]] = {}
        self._idle_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> ReceiverProtocol:
        protocol = super().buildProtocol(addr)
        self._open[protocol] = []
        return protocol

    def release(self, connection: ReceiverProtocol) -> None:
        super().release(connection)
        for waiter in self._open.pop(connection, []):
            waiter.callback(None)
        if not self._open:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires once no connection is open."""
        if not self._open:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def close_connections(self) -> Deferred[None]:
        """Abort every open connection; fires once each has reported its end."""
        waiting: list[Deferred[None]] = []
        for connection, waiters in list(self._open.items()):
            waiter: Deferred[None] = Deferred()
            waiters.append(waiter)
            waiting.append(waiter)
            if connection.transport is not None:
                connection.transport.abortConnection()  # type: ignore[attr-defined]
        return gatherResults(waiting).addCallback(lambda _: None)


@attrs.define
class RunningReceiver:
    """A L{ReceiverFactory} listening on a loopback TCP port (L{start_receiver})."""

    host: str
    port: int
    root: str
    """The root directory the receiver stores into."""
    storage: DirectoryStorage
    factory: ReceiverFactory
    _listening: IListeningPort
    _closing: _ClosingReceiverFactory

    def endpoint(self, reactor: IReactorTCP) -> IStreamClientEndpoint:
        """A client endpoint to this receiver, for L{send_file}."""
        return TCP4ClientEndpoint(reactor, self.host, self.port)

    def path(self, stored: str) -> str:
        """The local path of a stored relative path (as a receipt names it)."""
        return os.path.join(self.root, *stored.split("/"))

    def idle(self) -> Deferred[None]:
        """Fires once no connection to the receiver is open.

        A classic upload has no receipt: the sender is done when it has
        closed, the receiver when it has stored the file and closed too.
        Await this before looking for the file.
        """
        return self._closing.idle()

    def stop(self) -> Deferred[None]:
        """Stop listening and abort the connections still open; fires when all are closed."""

        async def stop() -> None:
            await maybeDeferred(self._listening.stopListening)
            await self._closing.close_connections()

        return Deferred.fromCoroutine(stop())


def start_receiver(
    reactor: IReactorTCP, root: str | os.PathLike[str], **options: Any
) -> Deferred[RunningReceiver]:
    """Listen with a L{ReceiverFactory} on a free port of 127.0.0.1, storing under C{root}.

    @param reactor: the running reactor (it is also the receiver's clock).
    @param options: more keyword arguments for L{ReceiverFactory} (C{token}...).
    @return: fires with the L{RunningReceiver}; call its C{stop} at the end.
    """
    storage = DirectoryStorage(root)
    factory = _ClosingReceiverFactory(storage, clock=reactor, **options)

    def listening(port: IListeningPort) -> RunningReceiver:
        address = port.getHost()
        return RunningReceiver(
            address.host,  # type: ignore[attr-defined]
            address.port,  # type: ignore[attr-defined]
            storage.root,
            storage,
            factory,
            port,
            factory,
        )

    endpoint = TCP4ServerEndpoint(reactor, 0, interface=LOOPBACK)
    return endpoint.listen(factory).addCallback(listening)


@attrs.define
class RunningTFTPServer:
    """A L{TFTPServerProtocol} listening on a loopback UDP port (L{start_tftp_server})."""

    host: str
    port: int
    root: str
    """The root directory the server stores into and serves from."""
    storage: DirectoryStorage
    protocol: TFTPServerProtocol
    _listening: IListeningPort

    def path(self, stored: str) -> str:
        """The local path of a stored relative path."""
        return os.path.join(self.root, *stored.split("/"))

    def stop(self) -> Deferred[None]:
        """End the running transfers and stop listening; fires when every port is closed."""

        async def stop() -> None:
            await self.protocol.stop_transfers()
            await maybeDeferred(self._listening.stopListening)

        return Deferred.fromCoroutine(stop())


def start_tftp_server(
    reactor: ITFTPReactor, root: str | os.PathLike[str], **options: Any
) -> Deferred[RunningTFTPServer]:
    """Serve TFTP on a free UDP port of 127.0.0.1, storing under C{root}.

    @param reactor: the running reactor.
    @param options: more keyword arguments for L{TFTPServerProtocol}
        (C{allow_write}, C{timeout}...).
    @return: fires with the L{RunningTFTPServer}; call its C{stop} at the end.
    """
    storage = DirectoryStorage(root)
    protocol = TFTPServerProtocol(storage=storage, reactor=reactor, **options)
    try:
        port = reactor.listenUDP(0, protocol, interface=LOOPBACK, maxPacketSize=8192)
    except Exception:
        return fail()
    address = port.getHost()
    return succeed(
        RunningTFTPServer(
            address.host,  # type: ignore[attr-defined]
            address.port,  # type: ignore[attr-defined]
            storage.root,
            storage,
            protocol,
            port,
        )
    )
