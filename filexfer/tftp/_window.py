"""The window: how TFTP data moves and is retransmitted (RFC 1350, RFC 7440).

L{WindowSender} sends DATA blocks a window at a time and slides on ACKs;
L{WindowReceiver} takes DATA blocks in order and ACKs every window.  The
sender retransmits on timeout only (never on a duplicate ACK: no Sorcerer's
Apprentice, RFC 1123 4.2.3.1); the receiver also answers a repeat of the
block it has just acknowledged with that ACK at once, as tftpd-hpa does.
Both time out through a L{Retransmitter}, whose timeout follows the
transfer's own round trips (L{RoundTrip}, RFC 6298).  They know nothing
about sockets: they are given a C{send(datagram)} callable (see
L{filexfer.tftp._udp}) and a clock.  L{SourceBlocks} cuts a file into
the blocks a sender sends.
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


RTO_FLOOR = 0.1
"""The smallest retransmission timeout, in seconds, unless a smaller C{timeout}
is configured.  RFC 6298 2.4 asks TCP for 1 s because of delayed ACKs (up to
500 ms, RFC 1122 4.2.3.2); TFTP peers answer at once, and Linux's TCP already
uses 200 ms.  100 ms covers a peer's scheduling hiccup or block write on a
busy host while keeping a loss at LAN cost (a spurious retransmission costs
one window, and backs the timer off)."""

RECEIVER_RESENDS = 2
"""How many times a receiver sends its last ACK again on its own timer before
it waits silently for the sender.  Some senders resend DATA on a repeated ACK
(curl): one or two repeats make them recover at once.  Others ignore it and
restart their own timer on every packet they receive (the tftp-hpa client's
5 s C{alarm}): an ACK repeated forever would keep them from ever resending."""

RECEIVER_QUIET_REPEAT = 6.0
"""Seconds between a receiver's further repeats of its last ACK, once the
L{RECEIVER_RESENDS} quick ones are spent.  A sender that resends DATA only
when it sees a repeated ACK (curl: its own timer never resends) would
otherwise hang on a stall whose repeats were all lost; the gap stays above
the tftp-hpa client's 5 s timer, so that timer still fires in between."""

RTO_GRANULARITY = 0.001
"""The clock granularity G of RFC 6298 2.3, in seconds."""


class RoundTrip:
    """The round-trip estimate and retransmission timeout of one transfer (RFC 6298).

    Pure: it is told samples (L{sample}) and timeouts (L{back_off}), and
    says what the timeout is now (L{rto}, seconds).  RFC 6298 2.2-2.3:
    the first sample R sets C{SRTT = R}, C{RTTVAR = R/2}; later ones
    C{RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|}, C{SRTT = 7/8 SRTT + 1/8 R};
    C{RTO = SRTT + max(G, 4 RTTVAR)}, kept between C{floor} and
    C{ceiling}.  Each timeout doubles it, up to C{ceiling} (5.5), until a
    new sample recomputes it.  Before any sample it is C{initial} (2.1).

    @param initial: the timeout before any sample, seconds.
    @param floor: the smallest timeout, seconds.
    @param ceiling: the largest timeout, seconds (the end of the backoff).
    @raise ValueError: unless C{0 < floor <= initial <= ceiling}.
    """

    def __init__(self, initial: float, floor: float, ceiling: float) -> None:
        if not 0 < floor <= initial <= ceiling:
            raise ValueError("need 0 < floor <= initial <= ceiling")
        self.floor = floor
        self.ceiling = ceiling
        self.rto = initial
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0

    def sample(self, rtt: float) -> None:
        """A measured round trip of C{rtt} seconds, of a packet sent once (Karn)."""
        rtt = max(0.0, rtt)
        srtt = self.srtt
        if srtt is None:
            srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(srtt - rtt)
            srtt = 0.875 * srtt + 0.125 * rtt
        self.srtt = srtt
        self.samples += 1
        rto = srtt + max(RTO_GRANULARITY, 4 * self.rttvar)
        self.rto = min(max(rto, self.floor), self.ceiling)

    def back_off(self) -> None:
        """The timer expired: double the timeout, up to the ceiling (RFC 6298 5.5)."""
        self.rto = min(self.rto * 2, self.ceiling)


class Retransmitter:
    """A retransmission timer: measured round trips, backoff, a budget in time.

    L{progress} notes that the peer answered: the deadline moves to now
    plus the current timeout (L{RoundTrip.rto}) and the budget restarts.
    When the deadline passes with no progress, the timer calls C{resend}
    (which returns how many datagrams it sent again), backs the timeout
    off and re-arms; once C{budget} seconds have passed since the last
    progress it calls C{give_up} instead.

    Round trips are timed one at a time (RFC 6298 3, as BSD TCP does):
    L{progress} with C{sent} starts timing the packet marked C{sent} (a
    block number, unwrapped) unless one is being timed; a later
    L{progress} whose C{answered} mark reaches it gives a sample.  A
    retransmission (L{resent}, or a timeout) ends the timing without a
    sample: Karn's rule, since an answer to a packet sent twice cannot be
    told apart.

    L{progress} runs for every packet, so it only notes the time: one
    C{DelayedCall} stays armed and, when it fires early (there was progress
    since it was set), moves itself to the real deadline.  Resetting a
    C{DelayedCall} per packet cost more than the rest of the per-packet work.

    With C{resends}, at most that many timeouts per stall resend; after
    them the timer only waits for progress, until the budget runs out,
    resending once every C{quiet_repeat} seconds if that is given.

    @ivar retransmissions: datagrams sent again, by timeouts and by L{resent}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        rtt: RoundTrip,
        budget: float,
        resend: Callable[[], int],
        give_up: Callable[[], None],
        resends: int | None = None,
        quiet_repeat: float | None = None,
    ) -> None:
        self.rtt = rtt
        self._quiet_repeat = quiet_repeat
        self._quiet = False  # the quick resends are spent: waiting quietly
        self.budget = budget
        self._resends = resends
        self._left = resends
        self.retransmissions = 0
        self._clock = clock
        self._seconds = clock.seconds
        self._resend = resend
        self._give_up = give_up
        self._last = 0.0  # the deadline counts from here (progress or a resend)
        self._quiet_since = 0.0  # the budget counts from here (progress)
        self._timed = -1  # the mark being timed, or -1
        self._timed_at = 0.0
        self._due = 0.0
        self._call: IDelayedCall | None = None

    def progress(self, answered: int = -1, sent: int = -1) -> float:
        """The peer answered up to mark C{answered}; we sent mark C{sent} for the first time.

        Either may be -1 (nothing answered, nothing new sent).  Returns the
        time now (the clock's seconds), for a caller that wants it too.
        """
        now = self._seconds()
        self._last = self._quiet_since = now
        self._left = self._resends
        self._quiet = False
        timed = self._timed
        if 0 <= timed <= answered:
            self.rtt.sample(now - self._timed_at)
            timed = self._timed = -1
            if self._call is not None and now + self.rtt.rto < self._due:
                self._call.cancel()  # the timeout shrank: do not wait for the old one
                self._call = None
        if sent >= 0 and timed < 0:
            self._timed = sent
            self._timed_at = now
        if self._call is None:
            self._arm(now, self.rtt.rto)
        return now

    def seconds(self) -> float:
        """The clock's time now."""
        return self._seconds()

    def resent(self, count: int) -> None:
        """C{count} datagrams were sent again (not on a timeout): count them; Karn's rule."""
        self.retransmissions += count
        self._timed = -1

    def stop(self) -> None:
        """Disarm."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _arm(self, now: float, wait: float) -> None:
        self._due = now + wait
        self._call = self._clock.callLater(wait, self._fire)

    def _fire(self) -> None:
        self._call = None
        now = self._seconds()
        rto = self.rtt.rto
        left = self._quiet_since + self.budget - now
        wait = min(self._last + rto, self._quiet_since + self.budget) - now
        if wait > 1e-6:  # progress since this call was set: not due yet
            self._arm(now, wait)
            return
        if left <= 1e-6:
            self._give_up()
            return
        if self._left is not None:
            if self._left <= 0:  # wait quietly for the peer, until the budget runs out
                repeat = self._quiet_repeat
                if repeat is None:
                    self._arm(now, left)
                    return
                if not self._quiet:  # counted from the last quick resend
                    self._quiet = True
                    self._arm(now, max(min(self._last + repeat - now, left), 1e-3))
                    return
                self._timed = -1
                self._last = now
                self._arm(now, min(repeat, left))
                self.retransmissions += self._resend()
                return
            self._left -= 1
        self._timed = -1
        self.rtt.back_off()
        self._last = now
        self._arm(now, min(self.rtt.rto, left))
        self.retransmissions += self._resend()


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
    whole unacknowledged window is sent again.  The newest block of a
    window (or the OACK) is timed for the round trip.

    @ivar acked_bytes: payload bytes the receiver has acknowledged.
    @ivar timer: the L{Retransmitter} (its C{retransmissions} counts resent DATA).
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        send: Send,
        next_block: Callable[[], bytes | memoryview | None],
        blksize: int,
        windowsize: int,
        rtt: RoundTrip,
        budget: float,
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
        self.timer = Retransmitter(clock, rtt, budget, self._resend_window, on_timeout)
        self._window: deque[bytes] = deque()
        self._base = 1  # the (unwrapped) block number of _window[0]
        self._next = 1  # the (unwrapped) block number of the next block to read
        self._ahead: deque[bytes] = deque()  # read (as datagrams) but not sent yet
        self._ahead_max = max(1, min(windowsize, _READ_AHEAD // (blksize + 4)))
        self._read_all = False  # the last block has been read (into _ahead)
        self._last_read = False  # the last block has been sent (it is in _window)
        self._handshake = False
        self._answered = False  # an ACK came (for the OACK or DATA 1)
        self._first_sent_at = -1.0
        self.acked_bytes = 0
        self.finished = False

    def start(self, handshake: bytes | None = None) -> None:
        """Begin; with C{handshake} (an OACK), send it and wait for ACK 0 first."""
        self._first_sent_at = self.timer.seconds()
        if handshake is not None:
            self._handshake = True
            self._window.append(handshake)
            self._base = 0
            self._send(handshake)
        else:
            self._fill_and_send()
        self.timer.progress(sent=self._base + len(self._window) - 1)
        self._read_ahead()

    def ack_received(self, block: int) -> None:
        """Handle an ACK of (wire) block number C{block}."""
        window = self._window
        index = (block - self._base) & 0xFFFF
        if index >= len(window):
            return  # a duplicate or stray ACK: never resend because of it
        self._answered = True
        if index == 0:
            acked = len(window.popleft()) - 4
        else:
            acked = 0
            for _ in range(index + 1):
                acked += len(window.popleft()) - 4
        answered = self._base + index
        self._base = answered + 1
        if self._handshake:
            self._handshake = False
            acked = 0
        if window:
            # Blocks still in the window were sent after the one acked: the
            # receiver saw a gap (RFC 7440), so go back and send them again.
            self._send_many(list(window))
            self.timer.resent(len(window))
        elif self._last_read:
            self.acked_bytes += acked
            self.finished = True
            self.timer.stop()
            if self._on_progress is not None and acked:
                self._on_progress(self.acked_bytes)
            self._on_done()
            return
        sent = self._fill_and_send()
        # The bookkeeping comes after sending: the peer is working meanwhile.
        self.timer.progress(answered, self._base + len(window) - 1 if sent else -1)
        if acked:
            self.acked_bytes += acked
            if self._on_progress is not None:
                self._on_progress(self.acked_bytes)
        self._read_ahead()

    def request_repeated(self) -> None:
        """The peer repeated its request: our first answer (OACK or DATA 1) was lost.

        That first packet is sent again at once, as a receiver re-ACKs a
        repeated block, instead of waiting for the timer; only while no ACK
        has come, and not twice within half the timer's floor (a copy the
        network made of the request).  Karn's rule: no round-trip sample.
        """
        if self._answered or not self._window:
            return
        now = self.timer.seconds()
        if now - self._first_sent_at < self.timer.rtt.floor / 2:
            return
        self._first_sent_at = now
        self._send(self._window[0])
        self.timer.resent(1)

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

    def _fill_and_send(self) -> int:
        """Send new blocks until the window is full; return how many."""
        window = self._window
        room = self._windowsize - len(window)
        if room <= 0 or self._last_read:
            return 0
        ahead = self._ahead
        limit = self._blksize + 4
        if room == 1:  # lock-step: no list, no batch
            datagram = ahead.popleft() if ahead else self._read_one()
            if datagram is None:
                return 0
            window.append(datagram)
            if len(datagram) < limit:
                self._last_read = True
            self._send(datagram)
            return 1
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
        return len(batch)

    def _resend_window(self) -> int:
        self._send_many(list(self._window))
        return len(self._window)

    def stop(self) -> None:
        """Stop retransmitting."""
        self.timer.stop()


class WindowReceiver:
    """Receive DATA blocks in order, ACKing every C{windowsize} blocks.

    A block ahead of the expected one (a gap) makes it ACK the last block it
    has in order, once per gap (RFC 7440).  A repeat of the block just
    acknowledged (nothing newer arrived since) means the sender did not get
    that ACK: it is sent again at once, as tftpd-hpa does, unless it went
    out less than L{duplicate_guard} seconds ago (a copy the network made,
    or an echo of a sender that resends on every duplicate ACK, is not
    answered twice).  Older duplicates are ignored.  On timeout it sends
    its last ACK (or the handshake) again.  After the final (short) block
    the owner calls L{ack_final}; from then on a repeated final block is
    answered with the final ACK again (the RFC 1350 dally).  Each ACK the
    sender must answer is timed for the round trip.  Its timer resends the
    last ACK L{RECEIVER_RESENDS} times per stall, then once every
    L{RECEIVER_QUIET_REPEAT} seconds.

    @ivar received_bytes: payload bytes taken in order.
    @ivar timer: the L{Retransmitter} (its C{retransmissions} counts resent ACKs).
    @ivar duplicate_guard: seconds (half the timer's floor).
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        send: Send,
        deliver: Callable[[bytes], object],
        blksize: int,
        windowsize: int,
        rtt: RoundTrip,
        budget: float,
        on_last: Callable[[], None],
        on_timeout: Callable[[], None],
    ) -> None:
        self._send = send
        self._deliver = deliver
        self._blksize = blksize
        self._windowsize = windowsize
        self._on_last = on_last
        self._seconds = clock.seconds
        self.timer = Retransmitter(
            clock,
            rtt,
            budget,
            self._resend_ack,
            on_timeout,
            RECEIVER_RESENDS,
            RECEIVER_QUIET_REPEAT,
        )
        self.duplicate_guard = rtt.floor / 2
        self._acked = 0  # unwrapped number of the block last ACKed (0: the handshake)
        self._acked_at = -1.0  # when that ACK last went out (-1: withheld, or none)
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
            self._acked_at = self.timer.progress(sent=0)
        else:
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
            self._since_ack += 1
            if self._since_ack >= self._windowsize:
                self._since_ack = 0
                self._acked = expected
                if self._held:
                    self._ack_withheld = True
                    self._acked_at = -1.0
                    self.timer.progress(expected - 1)
                else:
                    self._send(encode_ack(expected))
                    self._acked_at = self.timer.progress(expected - 1, expected)
                return True
            self.timer.progress(expected - 1)
            return False
        if self.complete:
            if self._final_ack is not None and block == (expected - 1) & 0xFFFF:
                self._send(self._final_ack)  # our final ACK was lost: dally
                self.timer.resent(1)
            return True
        if (block - expected) & 0xFFFF < 0x8000:
            if not self._gap_acked:
                self._gap_acked = True
                self._since_ack = 0
                self._acked = expected - 1
                self._send(encode_ack(expected - 1))
                self._acked_at = self._seconds()
                return True
        elif block == (expected - 1) & 0xFFFF and self._acked == expected - 1 > 0:
            # A repeat of the block just acknowledged: the sender missed the ACK.
            at = self._acked_at
            if at >= 0:
                now = self._seconds()
                if now - at >= self.duplicate_guard:
                    self._acked_at = now
                    self._send(encode_ack(expected - 1))
                    self.timer.resent(1)
                return True
        # else: an older duplicate; the timer re-ACKs if needed
        return False

    def handshake_repeated(self) -> None:
        """The sender repeated what our handshake answers (its OACK): send it again at once.

        Only before any DATA, and not twice within L{duplicate_guard}.
        """
        at = self._acked_at
        if self._expected == 1 and at >= 0:
            now = self._seconds()
            if now - at >= self.duplicate_guard:
                self._acked_at = now
                self._send(self._handshake)
                self.timer.resent(1)

    def hold(self) -> None:
        """Back-pressure: withhold window ACKs (the timer still re-ACKs, slowly)."""
        self._held = True

    def release(self) -> None:
        """End the back-pressure; send the ACK that was withheld."""
        self._held = False
        if self._ack_withheld and not self.complete:
            self._ack_withheld = False
            self._send(encode_ack(self._expected - 1))
            self._acked_at = self._seconds()

    def ack_final(self) -> None:
        """Acknowledge the final block (after the data is safely stored)."""
        self._final_ack = encode_ack(self._expected - 1)
        self._send(self._final_ack)

    def _resend_ack(self) -> int:
        self._since_ack = 0
        self._ack_withheld = False
        self._acked = self._expected - 1
        self._acked_at = self._seconds()
        if self._expected == 1:
            self._send(self._handshake)
        else:
            self._send(encode_ack(self._expected - 1))
        return 1

    def stop(self) -> None:
        """Stop retransmitting."""
        self.timer.stop()
