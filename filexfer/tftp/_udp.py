"""Socket-level work for TFTP transfers: the only module that touches a UDP socket.

Opening a transfer's port (L{open_port}: packet size, socket buffers,
direct reads, GRO), sending to the peer (L{make_send}, and L{make_send_many}
with UDP segmentation offload), and reading bursts of datagrams
(L{read_burst}, splitting GRO-coalesced runs).  A real Twisted C{udp.Port}
gets the fast paths; any other transport (a test fake) gets plain
C{write}, and delivers datagrams either with C{datagramReceived} or, like
L{filexfer.testing.FakeUDPPort}, through the protocol's own
C{readable(sock, bufsize)} (see L{reads_itself}) with a socket-like object
whose C{recvfrom} the transfer calls.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import base, error, udp
from twisted.internet.interfaces import IReactorUDP

from filexfer.tftp._packets import MAX_BLKSIZE

Address = tuple[str, int]

Send = Callable[[bytes], None]
"""C{send(datagram)} to the peer; a datagram the network would not take is lost."""

SendMany = Callable[[Sequence[bytes]], None]
"""C{send_many(datagrams)} to the peer, in order."""

MAX_DATAGRAM = MAX_BLKSIZE + 4
"""The largest TFTP datagram: a DATA packet of the largest C{blksize}."""

_DEFAULT_PACKET = 8192
"""Twisted's default C{maxPacketSize}; enough for any C{blksize} up to 8188."""

_SOCKET_BUFFER = 4 * 1024 * 1024

# Linux UDP segmentation offload (GSO, 4.18+) and receive coalescing (GRO,
# 5.0+); the values are from <linux/udp.h>, which Python does not export.
_SOL_UDP = 17
_UDP_SEGMENT = 103
_UDP_GRO = 104
_LINUX = sys.platform.startswith("linux") and hasattr(socket.socket, "sendmsg")
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000
_GRO_BUFFER = 65536
_GRO_SPACE = socket.CMSG_SPACE(4) if _LINUX else 0
_LOST = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ECONNREFUSED, errno.EINTR)


def _socket_of(transport: Any) -> socket.socket | None:
    """The socket behind a real Twisted UDP transport, else None (a test fake)."""
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    return sock if isinstance(sock, socket.socket) else None


def write_to(transport: Any, datagram: bytes, addr: Address) -> None:
    """Send one datagram through C{transport}; a failure counts as a lost datagram.

    For the odd datagram (a request, an ERROR to a stranger); a transfer's
    own datagrams go through L{make_send}.
    """
    try:
        transport.write(datagram, addr)
    except OSError:
        pass


def make_send(transport: Any, peer: Address) -> Send:
    """A fast C{send(datagram)} to C{peer} through a UDP C{transport}.

    With a real Twisted UDP port this calls the socket's C{sendto} directly,
    skipping the per-datagram address validation of C{Port.write}; any other
    transport (a test fake) is written to.  A full socket buffer or an ICMP
    error counts as a lost datagram: the retransmission timer recovers.
    """
    sock = _socket_of(transport)
    if sock is not None:
        sendto = sock.sendto

        def send(datagram: bytes) -> None:
            try:
                sendto(datagram, peer)
            except OSError:
                pass

    else:
        write = transport.write

        def send(datagram: bytes) -> None:
            try:
                write(datagram, peer)
            except OSError:
                pass

    return send


def make_send_many(transport: Any, peer: Address, send: Send) -> SendMany:
    """A C{send_many(datagrams)} to C{peer}: one system call per run of blocks.

    On Linux a run of equal-sized datagrams (a window of full blocks, maybe
    ended by the short last one) goes out in one C{sendmsg} with UDP
    segmentation offload (C{UDP_SEGMENT}): the kernel cuts the buffer into
    the very same datagrams, each its own UDP packet on the wire, at a
    fraction of the cost of one C{sendto} each.  Where the kernel or the
    route cannot (no checksum offload, a segment above the MTU, IPsec), the
    first failure switches the transfer to plain C{send} for good.
    """
    sock = _socket_of(transport)
    if not _LINUX or sock is None:

        def send_each(datagrams: Sequence[bytes]) -> None:
            for datagram in datagrams:
                send(datagram)

        return send_each

    sendmsg = sock.sendmsg
    gso = [True]
    cmsgs: dict[int, list[tuple[int, int, bytes]]] = {}

    def send_many(datagrams: Sequence[bytes]) -> None:
        count = len(datagrams)
        start = 0
        while start < count:
            size = len(datagrams[start])
            limit = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // size) if size else 1
            end = start + 1
            while end < count and end - start < limit and len(datagrams[end]) == size:
                end += 1
            if end < count and end - start < limit and len(datagrams[end]) < size:
                end += 1  # a shorter datagram may end a run (the last block)
            if end - start == 1 or not gso[0]:
                for index in range(start, end):
                    send(datagrams[index])
            else:
                cmsg = cmsgs.get(size)
                if cmsg is None:
                    cmsg = cmsgs[size] = [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))]
                try:
                    sendmsg(datagrams[start:end], cmsg, 0, peer)
                except OSError as exc:
                    if exc.errno not in _LOST:  # GSO refused here: send one by one
                        gso[0] = False
                        for index in range(start, end):
                            send(datagrams[index])
            start = end

    return send_many


Handler = Callable[[Any, Any], bool]
"""C{handle(datagram, addr)}: True to stop reading (the peer now waits for us)."""


def read_burst(sock: Any, bufsize: int, burst: int, gro: bool, handle: Handler) -> None:
    """Read up to C{burst} times from C{sock}, passing each datagram to C{handle}.

    Stops at an empty socket or when C{handle} returns True.  With C{gro}
    (see L{open_port}) one read may return several datagrams of one size
    glued together; they are handed over one by one, as memoryviews, and all
    of them are handled even if one says stop.  An error other than an empty
    socket (an ICMP report about an earlier datagram) is skipped over.
    """
    if not gro:
        recvfrom = sock.recvfrom
        for _ in range(burst):
            try:
                datagram, addr = recvfrom(bufsize)
            except BlockingIOError:
                return
            except OSError:
                continue
            if handle(datagram, addr):
                return
        return
    recvmsg = sock.recvmsg
    for _ in range(burst):
        try:
            data, ancdata, _flags, addr = recvmsg(_GRO_BUFFER, _GRO_SPACE)
        except BlockingIOError:
            return
        except OSError:
            continue
        length = len(data)
        size = length
        for level, kind, value in ancdata:
            if level == _SOL_UDP and kind == _UDP_GRO and len(value) >= 2:
                size = int.from_bytes(value[:4] if len(value) >= 4 else value[:2], sys.byteorder)
        if size <= 0 or size >= length:
            if handle(data, addr):
                return
            continue
        view = memoryview(data)
        stop = False
        for start in range(0, length, size):
            if handle(view[start : start + size], addr):
                stop = True
        if stop:
            return


def reads_itself(protocol: Any) -> bool:
    """Whether C{protocol} reads its port itself: it has C{readable(sock, bufsize)}.

    A port that finds this calls C{protocol.readable(sock, bufsize)} when
    datagrams wait, instead of C{datagramReceived} once per datagram; the
    protocol then calls C{sock.recvfrom(bufsize)} (see L{read_burst}) until
    it has had enough or the socket raises C{BlockingIOError}.
    """
    return callable(getattr(protocol, "readable", None))


class _ReadingPort(udp.Port):
    """A UDP port that lets its protocol read the socket itself.

    Twisted's C{Port.doRead} drains the socket until C{EAGAIN} and calls
    C{datagramReceived} for each datagram through two exception handlers.
    A TFTP transfer knows better when to stop: a sender expects one ACK per
    window, a receiver nothing more after it has ACKed; reading on would
    only cost a failing C{recvfrom}.  The protocol's C{readable(sock,
    bufsize)} reads what it wants, bounded, and handles every error itself;
    epoll is level-triggered, so whatever it leaves is reported again.
    """

    def doRead(self) -> None:
        self.protocol.readable(self.socket, self.maxPacketSize)

    # A transfer's port is part of one transfer, which logs one line of its
    # own: Twisted's "<Protocol> starting on N" and "(UDP Port N Closed)"
    # would add two more per transfer.  These are udp.Port's methods less
    # their log lines (and, binding, less the adopted-socket case, which a
    # transfer's fresh port never has); nothing here runs per datagram.

    def _bindSocket(self) -> None:
        try:
            skt = self.createInternetSocket()
            skt.bind((self.interface, self.port))
        except OSError as le:
            raise error.CannotListenError(self.interface, self.port, le) from le
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]  # as udp.Port does

    def connectionLost(self, reason: Any = None) -> None:
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


def _read_directly(port: Any) -> bool:
    """Make a real Twisted UDP C{port} call its protocol's C{readable} itself.

    Any other port (a test fake) is left alone: it delivers datagrams its
    own way (L{filexfer.testing.FakeUDPPort} calls C{readable} too).
    Returns whether the port reads that way (made so here or by L{_listen}).
    """
    if type(port) is _ReadingPort:
        return True  # made so by _listen
    if type(port) is udp.Port and reads_itself(port.protocol):
        port.__class__ = _ReadingPort
        return True
    return False


def _listen(reactor: Any, protocol: Any, interface: str, size: int, number: int = 0) -> Any:
    """C{reactor.listenUDP(number, ...)} (0: any free port), quietly, for a transfer's port.

    A real reactor's C{listenUDP} makes a C{udp.Port} and starts it; here
    the port is a L{_ReadingPort} from the start, which logs nothing when it
    starts or closes.  Any other reactor (a test fake) is asked as usual.
    """
    if reads_itself(protocol) and _listens_as_twisted(reactor):
        port = _ReadingPort(number, protocol, interface, size, reactor)
        port.startListening()
        return port
    return reactor.listenUDP(number, protocol, interface=interface, maxPacketSize=size)


def _listens_as_twisted(reactor: Any) -> bool:
    """Whether C{reactor.listenUDP} is Twisted's own: a C{udp.Port}, started."""
    if "twisted.internet.posixbase" not in sys.modules:
        return False  # no posix reactor was ever imported, so this is none
    # Imported here: posixbase imports TCP and TLS, which a TFTP-only process
    # (and `filexfer send`, about 13 MiB of pyOpenSSL) does not need.
    from twisted.internet.posixbase import PosixReactorBase

    return getattr(type(reactor), "listenUDP", None) is PosixReactorBase.listenUDP


def _enable_gro(sock: socket.socket) -> bool:
    """Ask Linux to hand over runs of datagrams coalesced (C{UDP_GRO})."""
    if not _LINUX:
        return False
    try:
        sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
    except OSError:
        return False
    return True


def _enlarge_buffers(sock: socket.socket) -> None:
    """Ask for big socket buffers so a window of large blocks is not dropped."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        except OSError:
            pass


def open_port(
    reactor: IReactorUDP,
    protocol: Any,
    *,
    interface: str,
    blksize: int,
    gro: bool,
    number: int = 0,
) -> tuple[Any, bool]:
    """Listen on a fresh UDP port (a TID) for a transfer of C{blksize} blocks.

    C{number} 0 lets the system choose the port (else see
    L{filexfer.tftp._portrange.PortAllocator}).

    The port takes datagrams of C{blksize} + 4 bytes (at least Twisted's
    default 8192), gets big socket buffers, and calls its protocol's
    C{readable(sock, bufsize)} instead of C{datagramReceived} (see
    L{_ReadingPort}).  With C{gro} it also asks for coalesced runs of
    datagrams, which only L{read_burst} can split.

    @return: the port, and whether GRO is on.
    @raise Exception: whatever C{listenUDP} raises.
    """
    size = max(_DEFAULT_PACKET, min(blksize + 4, MAX_DATAGRAM))
    port = _listen(reactor, protocol, interface, size, number)
    sock = _socket_of(port)
    if sock is None:
        return port, False
    _enlarge_buffers(sock)
    direct = _read_directly(port)
    return port, direct and gro and _enable_gro(sock)
