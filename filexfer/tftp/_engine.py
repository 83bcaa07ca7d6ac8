"""The two halves of a TFTP data transfer, shared by the server and the client.

L{BlockSender} sends DATA blocks a window at a time and slides on ACKs;
L{BlockReceiver} takes DATA blocks in order and ACKs every window.  Both
retransmit on timeout only (never on a duplicate packet: no Sorcerer's
Apprentice), through a L{Retransmitter}.  They know nothing about sockets:
they are given a C{send(datagram)} callable and a clock.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet import udp
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from filexfer.tftp._packets import NetasciiEncoder, encode_ack

_DATA_HEADER = struct.Struct("!HH").pack

Send = Callable[[bytes], None]

_SOCKET_BUFFER = 4 * 1024 * 1024


def make_send(transport: Any, peer: tuple[str, int]) -> Send:
    """A fast C{send(datagram)} to C{peer} through a UDP C{transport}.

    With a real Twisted UDP port this calls the socket's C{sendto} directly,
    skipping the per-datagram address validation of C{Port.write}; any other
    transport (a test fake) is written to.  A full socket buffer or an ICMP
    error counts as a lost datagram: the retransmission timer recovers.
    """
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if isinstance(sock, socket.socket):
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


def enlarge_buffers(transport: Any) -> None:
    """Ask for big socket buffers so a window of large blocks is not dropped."""
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if not isinstance(sock, socket.socket):
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        except OSError:
            pass


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


def read_directly(port: Any) -> bool:
    """Make a real Twisted UDP C{port} call its protocol's C{readable} itself.

    Any other port (a test fake) is left alone and keeps calling
    C{datagramReceived}.  Returns whether the port was changed.
    """
    if type(port) is udp.Port and callable(getattr(port.protocol, "readable", None)):
        port.__class__ = _ReadingPort
        return True
    return False


class Retransmitter:
    """A retransmission timer with a bounded number of retries.

    L{progress} (re)arms it with a fresh retry budget; when it fires it
    calls C{resend} and re-arms, up to C{retries} times, then C{give_up}.

    L{progress} runs for every packet, so it only notes the time: one
    C{DelayedCall} stays armed and, when it fires early (there was progress
    since it was set), moves itself to the real deadline, the time of the
    last progress plus the timeout.  Resetting a C{DelayedCall} per packet
    cost more than the rest of the per-packet work.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        retries: int,
        resend: Callable[[], None],
        give_up: Callable[[], None],
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._seconds = clock.seconds
        self._retries = retries
        self._left = retries
        self._resend = resend
        self._give_up = give_up
        self._last = 0.0
        self._call: IDelayedCall | None = None

    def progress(self) -> None:
        """Something moved forward: reset the retry budget and the deadline."""
        self._left = self._retries
        self._last = self._seconds()
        if self._call is None:
            self._call = self._clock.callLater(self.timeout, self._fire)

    def stop(self) -> None:
        """Disarm."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        now = self._seconds()
        wait = self._last + self.timeout - now
        if wait > 1e-6:  # progress since this call was set: not due yet
            self._call = self._clock.callLater(wait, self._fire)
            return
        if self._left <= 0:
            self._give_up()
            return
        self._left -= 1
        self._last = now
        self._call = self._clock.callLater(self.timeout, self._fire)
        self._resend()


class FileBlocks:
    """Reads a file as a sequence of blocks of C{blksize} bytes.

    The file is read in chunks of about 256 KiB; blocks are zero-copy
    slices (memoryviews) of the chunk.
    """

    def __init__(self, handle: BinaryIO, blksize: int) -> None:
        self._handle = handle
        self._blksize = blksize
        self._chunk = memoryview(b"")
        self._offset = 0
        self._chunk_size = blksize * max(1, (256 * 1024) // blksize)

    def next_block(self) -> memoryview:
        """The next block; shorter than C{blksize} (maybe empty) at the end."""
        start = self._offset
        end = start + self._blksize
        chunk = self._chunk
        if end > len(chunk):
            data = self._handle.read(self._chunk_size)
            if start < len(chunk):
                data = bytes(chunk[start:]) + data
            self._chunk = chunk = memoryview(data)
            start = 0
            end = self._blksize
        self._offset = end
        return chunk[start:end]


class NetasciiBlocks:
    """Reads a file as netascii blocks of C{blksize} bytes."""

    def __init__(self, handle: BinaryIO, blksize: int) -> None:
        self._handle = handle
        self._blksize = blksize
        self._encoder = NetasciiEncoder()
        self._buffer = b""
        self._eof = False

    def next_block(self) -> bytes:
        """The next block; shorter than C{blksize} (maybe empty) at the end."""
        while len(self._buffer) < self._blksize and not self._eof:
            chunk = self._handle.read(64 * 1024)
            if not chunk:
                self._eof = True
            self._buffer += self._encoder.encode(chunk)
        block, self._buffer = self._buffer[: self._blksize], self._buffer[self._blksize :]
        return block


class BlockSender:
    """Send DATA blocks, C{windowsize} at a time (RFC 1350, RFC 7440).

    An ACK of any block inside the window slides the window past it; if
    blocks after it were already sent (the receiver saw a gap), the window
    is sent again from there.  A duplicate ACK is ignored.  On timeout the
    whole unacknowledged window is sent again.

    @ivar acked_bytes: payload bytes the receiver has acknowledged.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        send: Send,
        next_block: Callable[[], bytes | memoryview],
        blksize: int,
        windowsize: int,
        timeout: float,
        retries: int,
        on_done: Callable[[], None],
        on_timeout: Callable[[], None],
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self._send = send
        self._next_block = next_block
        self._blksize = blksize
        self._windowsize = windowsize
        self._on_done = on_done
        self._on_progress = on_progress
        self.timer = Retransmitter(clock, timeout, retries, self._resend_window, on_timeout)
        self._window: deque[bytes] = deque()
        self._base = 1  # the (unwrapped) block number of _window[0]
        self._next = 1  # the (unwrapped) block number of the next block to read
        self._last_read = False
        self._handshake = False
        self.acked_bytes = 0
        self.finished = False

    def start(self, handshake: bytes | None = None) -> None:
        """Begin; with C{handshake} (an OACK), send it and wait for ACK 0 first."""
        if handshake is not None:
            self._handshake = True
            self._window.append(handshake)
            self._base = 0
            self._send(handshake)
        else:
            self._fill_and_send()
        self.timer.progress()

    def ack_received(self, block: int) -> None:
        """Handle an ACK of (wire) block number C{block}."""
        window = self._window
        index = (block - self._base) & 0xFFFF
        if index >= len(window):
            return  # a duplicate or stray ACK: never resend because of it
        if index == 0:
            acked = len(window.popleft()) - 4
        else:
            acked = 0
            for _ in range(index + 1):
                acked += len(window.popleft()) - 4
        if self._handshake:
            self._handshake = False
            acked = 0
        self._base += index + 1
        self.acked_bytes += acked
        if self._on_progress is not None and acked:
            self._on_progress(self.acked_bytes)
        if not window and self._last_read:
            self.finished = True
            self.timer.stop()
            self._on_done()
            return
        self.timer.progress()
        if window:
            # Blocks still in the window were sent after the one acked: the
            # receiver saw a gap (RFC 7440), so go back and send them again.
            send = self._send
            for datagram in window:
                send(datagram)
        self._fill_and_send()

    def _fill_and_send(self) -> None:
        window = self._window
        room = self._windowsize - len(window)
        if room <= 0 or self._last_read:
            return
        send = self._send
        next_block = self._next_block
        blksize = self._blksize
        number = self._next
        for _ in range(room):
            payload = next_block()
            datagram = _DATA_HEADER(3, number & 0xFFFF) + payload
            number += 1
            self._next = number
            window.append(datagram)
            send(datagram)
            if len(payload) < blksize:
                self._last_read = True
                return

    def _resend_window(self) -> None:
        for datagram in self._window:
            self._send(datagram)

    def stop(self) -> None:
        """Stop retransmitting."""
        self.timer.stop()


class BlockReceiver:
    """Receive DATA blocks in order, ACKing every C{windowsize} blocks.

    A block ahead of the expected one (a gap) makes it ACK the last block it
    has in order, once per gap (RFC 7440); a duplicate is ignored.  On
    timeout it sends its last ACK (or the handshake) again.  After the final
    (short) block the owner calls L{ack_final}; from then on a repeated final
    block is answered with the final ACK again (the RFC 1350 dally).

    @ivar received_bytes: payload bytes taken in order.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        send: Send,
        deliver: Callable[[bytes], object],
        blksize: int,
        windowsize: int,
        timeout: float,
        retries: int,
        on_last: Callable[[], None],
        on_timeout: Callable[[], None],
    ) -> None:
        self._send = send
        self._deliver = deliver
        self._blksize = blksize
        self._windowsize = windowsize
        self._on_last = on_last
        self.timer = Retransmitter(clock, timeout, retries, self._resend_ack, on_timeout)
        self._expected = 1  # unwrapped number of the next block wanted
        self._since_ack = 0
        self._gap_acked = False
        self._handshake = encode_ack(0)
        self._final_ack: bytes | None = None
        self._held = False
        self._ack_withheld = False
        self.complete = False
        self.received_bytes = 0

    def start(self, handshake: bytes | None = None) -> None:
        """Begin; C{handshake} (ACK 0 or an OACK) is sent now and on timeout."""
        if handshake is not None:
            self._handshake = handshake
            self._send(handshake)
        self.timer.progress()

    def data_received(self, block: int, payload: bytes) -> bool:
        """Handle DATA with (wire) block number C{block}.

        Returns True when the sender now waits for us: this block completed
        a window (and was ACKed), ended the transfer, or showed a gap.  A
        reader can stop reading the socket then, as nothing more is coming.
        """
        expected = self._expected
        if block == expected & 0xFFFF and not self.complete:
            self._expected = expected + 1
            self.received_bytes += len(payload)
            self._gap_acked = False
            self._deliver(payload)
            if len(payload) < self._blksize:
                self.complete = True
                self.timer.stop()
                self._on_last()
                return True
            self.timer.progress()
            self._since_ack += 1
            if self._since_ack >= self._windowsize:
                self._since_ack = 0
                if self._held:
                    self._ack_withheld = True
                else:
                    self._send(encode_ack(expected))
                return True
            return False
        if self.complete:
            if self._final_ack is not None and block == (expected - 1) & 0xFFFF:
                self._send(self._final_ack)  # our final ACK was lost: dally
            return True
        if (block - expected) & 0xFFFF < 0x8000:
            if not self._gap_acked:
                self._gap_acked = True
                self._since_ack = 0
                self._send(encode_ack(expected - 1))
                return True
        # else: a duplicate of a block we have; the timer re-ACKs if needed
        return False

    def hold(self) -> None:
        """Back-pressure: withhold window ACKs (the timer still re-ACKs, slowly)."""
        self._held = True

    def release(self) -> None:
        """End the back-pressure; send the ACK that was withheld."""
        self._held = False
        if self._ack_withheld and not self.complete:
            self._ack_withheld = False
            self._send(encode_ack(self._expected - 1))

    def ack_final(self) -> None:
        """Acknowledge the final block (after the data is safely stored)."""
        self._final_ack = encode_ack(self._expected - 1)
        self._send(self._final_ack)

    def _resend_ack(self) -> None:
        self._since_ack = 0
        self._ack_withheld = False
        if self._expected == 1:
            self._send(self._handshake)
        else:
            self._send(encode_ack(self._expected - 1))

    def stop(self) -> None:
        """Stop retransmitting."""
        self.timer.stop()
