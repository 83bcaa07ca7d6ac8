"""The window: how TFTP data moves and is retransmitted (RFC 1350, RFC 7440).

L{WindowSender} sends DATA blocks a window at a time and slides on ACKs;
L{WindowReceiver} takes DATA blocks in order and ACKs every window.  Both
retransmit on timeout only (never on a duplicate packet: no Sorcerer's
Apprentice), through a L{Retransmitter}.  They know nothing about sockets:
they are given a C{send(datagram)} callable (see L{filexfer.tftp._udp}) and
a clock.  L{SourceBlocks} cuts a file into the blocks a sender sends.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from filexfer.storage._interfaces import IReadSource
from filexfer.tftp._packets import encode_ack
from filexfer.tftp._udp import Send, SendMany

_DATA_HEADER = struct.Struct("!HH").pack

_READ_AHEAD = 1024 * 1024


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


class SourceBlocks:
    """Cuts an L{IReadSource} into the blocks a sender sends, reading one chunk ahead.

    The source is read in chunks of about 256 KiB; blocks are zero-copy
    slices (memoryviews) of the chunk.  A local file's reads have fired when
    they return, so its blocks are there at once; a remote store's arrive
    later: L{next_block} returns None meanwhile and C{on_ready} is called
    when it has more.

    @param transform: applied to each chunk as it arrives (netascii).
    """

    def __init__(
        self,
        source: IReadSource,
        blksize: int,
        on_ready: Callable[[], None] = lambda: None,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._source = source
        self._blksize = blksize
        self.on_ready = on_ready
        self._transform = transform
        self._chunk = memoryview(b"")
        self._offset = 0
        self._arrived: list[bytes] = []  # fetched, not yet cut
        self._reading = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiting = False
        self._chunk_size = blksize * max(1, (256 * 1024) // blksize)
        self._fetch()

    def _fetch(self) -> None:
        if self._reading or self._eof or self._arrived or self._error is not None:
            return
        self._reading = True
        self._source.read(self._chunk_size).addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if not data:
            self._eof = True
        else:
            self._arrived.append(self._transform(data) if self._transform else data)
        self._wake()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        self._error = failure.value
        self._wake()

    def _wake(self) -> None:
        if self._waiting:
            self._waiting = False
            self.on_ready()

    def next_block(self) -> memoryview | None:
        """The next block; shorter than C{blksize} (maybe empty) at the end; None: not yet.

        @raise OSError: the source failed.
        """
        start = self._offset
        end = start + self._blksize
        chunk = self._chunk
        while end > len(chunk) and not (self._eof and not self._arrived):
            if not self._arrived:
                self._fetch()  # a local source answers here and now
            if self._error is not None:
                raise OSError(str(self._error))
            if not self._arrived:
                if self._eof:
                    break
                self._waiting = True
                self._offset = start
                self._chunk = chunk
                return None
            data = self._arrived.pop(0)
            if start < len(chunk):
                data = bytes(chunk[start:]) + data
            chunk = memoryview(data)
            start, end = 0, self._blksize
            self._chunk = chunk
            self._fetch()  # read ahead while this chunk is sent
        self._chunk = chunk
        self._offset = end
        return chunk[start:end]


class WindowSender:
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
        next_block: Callable[[], bytes | memoryview | None],
        blksize: int,
        windowsize: int,
        timeout: float,
        retries: int,
        on_done: Callable[[], None],
        on_timeout: Callable[[], None],
        on_progress: Callable[[int], None] | None = None,
        send_many: SendMany | None = None,
    ) -> None:
        self._send = send
        self._send_many = send_many if send_many is not None else self._send_each
        self._next_block = next_block
        self._blksize = blksize
        self._windowsize = windowsize
        self._on_done = on_done
        self._on_progress = on_progress
        self.timer = Retransmitter(clock, timeout, retries, self._resend_window, on_timeout)
        self._window: deque[bytes] = deque()
        self._base = 1  # the (unwrapped) block number of _window[0]
        self._next = 1  # the (unwrapped) block number of the next block to read
        self._ahead: deque[bytes] = deque()  # read (as datagrams) but not sent yet
        self._ahead_max = max(1, min(windowsize, _READ_AHEAD // (blksize + 4)))
        self._read_all = False  # the last block has been read (into _ahead)
        self._last_read = False  # the last block has been sent (it is in _window)
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
        self._read_ahead()

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
        self._base += index + 1
        if self._handshake:
            self._handshake = False
            acked = 0
        if window:
            # Blocks still in the window were sent after the one acked: the
            # receiver saw a gap (RFC 7440), so go back and send them again.
            self._send_many(list(window))
        elif self._last_read:
            self.acked_bytes += acked
            self.finished = True
            self.timer.stop()
            if self._on_progress is not None and acked:
                self._on_progress(self.acked_bytes)
            self._on_done()
            return
        self._fill_and_send()
        # The bookkeeping comes after sending: the peer is working meanwhile.
        self.timer.progress()
        if acked:
            self.acked_bytes += acked
            if self._on_progress is not None:
                self._on_progress(self.acked_bytes)
        self._read_ahead()

    def _send_each(self, datagrams: Sequence[bytes]) -> None:
        send = self._send
        for datagram in datagrams:
            send(datagram)

    def more(self) -> None:
        """Blocks that were not ready (C{next_block} gave None) have arrived: go on."""
        if self.finished:
            return
        if not self._handshake:
            self._fill_and_send()
        self._read_ahead()

    def _read_one(self) -> bytes | None:
        payload = self._next_block()
        if payload is None:
            return None  # not there yet: more() is called when it is
        datagram = _DATA_HEADER(3, self._next & 0xFFFF) + payload
        self._next += 1
        if len(payload) < self._blksize:
            self._read_all = True
        return datagram

    def _read_ahead(self) -> None:
        """Read the next window now, while the peer works on this one.

        Reading and framing the blocks is then off the critical path: when
        the ACK comes, the window only has to be sent.  At most a window
        (and at most 1 MiB) is held.
        """
        ahead = self._ahead
        while len(ahead) < self._ahead_max and not self._read_all:
            datagram = self._read_one()
            if datagram is None:
                return
            ahead.append(datagram)

    def _fill_and_send(self) -> None:
        window = self._window
        room = self._windowsize - len(window)
        if room <= 0 or self._last_read:
            return
        ahead = self._ahead
        limit = self._blksize + 4
        if room == 1:  # lock-step: no list, no batch
            datagram = ahead.popleft() if ahead else self._read_one()
            if datagram is None:
                return
            window.append(datagram)
            if len(datagram) < limit:
                self._last_read = True
            self._send(datagram)
            return
        batch = []
        try:
            for _ in range(room):
                datagram = ahead.popleft() if ahead else self._read_one()
                if datagram is None:
                    break
                window.append(datagram)
                batch.append(datagram)
                if len(datagram) < limit:
                    self._last_read = True
                    break
        finally:
            if batch:
                self._send_many(batch)

    def _resend_window(self) -> None:
        self._send_many(list(self._window))

    def stop(self) -> None:
        """Stop retransmitting."""
        self.timer.stop()


class WindowReceiver:
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
