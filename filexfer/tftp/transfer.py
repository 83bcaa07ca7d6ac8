"""The transfer both ends run: one peer (TID), one port, one RFC role.

RFC 1350 gives every transfer a sender of DATA and a receiver that ACKs
it, whichever end asked: the server sends for an RRQ and receives for a
WRQ, the client the other way round.  L{Transfer} is what every transfer
does with datagrams: read them (in bursts, see L{filexfer.tftp._udp}),
check they come from the peer (else ERROR 5, unknown TID), pass DATA or
ACK straight to the window on the fast path, decode the rest, and turn an
ERROR or a failure into the end of the transfer.  L{Sender} and
L{Receiver} are the two roles, built on L{filexfer.tftp._window}.

How a transfer starts and ends (a server's log line and port, a client's
Deferred) is the server's and the client's: see L{filexfer.tftp.server} and
L{filexfer.tftp.client}, whose transfers are one of these roles each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from filexfer.storage._interfaces import IReadSource
from filexfer.tftp._netascii import NetasciiDecoder, NetasciiEncoder
from filexfer.tftp._packets import (
    OP_ACK,
    OP_DATA,
    UNKNOWN_TID,
    Error,
    MalformedPacket,
    Negotiated,
    decode,
    encode_error,
    fast_block,
)
from filexfer.tftp._udp import (
    Address,
    Send,
    SendMany,
    make_send,
    make_send_many,
    read_burst,
    write_to,
)
from filexfer.tftp._window import (
    RTO_FLOOR,
    Retransmitter,
    RoundTrip,
    SourceBlocks,
    WindowReceiver,
    WindowSender,
)

_UNKNOWN_TID = encode_error(UNKNOWN_TID, "unknown transfer ID")


def _discard(datagram: bytes) -> None:
    """Where datagrams go before the peer is known."""


class Transfer(DatagramProtocol):
    """One transfer on its own UDP port (its TID), with one peer.

    Subclasses say what the packets mean (L{fast_packet}, L{first_reply},
    L{packet_received}) and how the transfer ends (L{peer_error},
    L{timed_out}, L{local_error}, L{crashed}, L{cleanup}).

    The retransmission timeout follows the transfer's round trips (see
    L{filexfer.tftp._window.RoundTrip}): C{timeout} seconds before the
    first sample, never less than C{min(RTO_FLOOR, timeout)}, and backed
    off on each timeout up to C{ceiling} (by default C{timeout}; a server
    passes the RFC 2349 C{timeout} its client negotiated).  The transfer
    gives up after C{budget} seconds without progress (by default
    C{ceiling * (retries + 1)}).

    @ivar rtt: the transfer's L{RoundTrip}, shared by all its timers.
    @ivar budget: seconds without progress before the transfer gives up.
    @ivar timers: the L{Retransmitter}s the transfer has run.
    """

    noisy = False

    fast_opcode = -1
    """Packets with this opcode from the peer skip L{decode}: see L{fast_packet}."""

    burst = 1
    """The most reads L{readable} makes per readiness event."""

    wants_gro = False
    """Receive coalesced runs of datagrams (UDP GRO) when the port allows."""

    def __init__(
        self,
        clock: IReactorTime,
        peer: Address | None,
        timeout: float,
        retries: int,
        ceiling: float | None = None,
        budget: float | None = None,
    ) -> None:
        self.clock = clock
        self.peer = peer
        self.timeout = timeout
        self.retries = retries
        ceiling = timeout if ceiling is None else ceiling
        initial = min(timeout, ceiling)
        self.rtt = RoundTrip(initial, min(RTO_FLOOR, initial), ceiling)
        self.budget = ceiling * (retries + 1) if budget is None else budget
        self.timers: list[Retransmitter] = []
        self.port: Any = None
        self.gro = False
        self.done = False
        self.send: Send = _discard
        self.send_many: SendMany | None = None

    @property
    def retransmissions(self) -> int:
        """Datagrams this end has sent again so far (DATA, ACK, OACK or request)."""
        return sum(timer.retransmissions for timer in self.timers)

    def new_timer(self, resend: Callable[[], int], give_up: Callable[[], None]) -> Retransmitter:
        """A new L{Retransmitter} on the transfer's round-trip estimate and budget."""
        timer = Retransmitter(self.clock, self.rtt, self.budget, resend, give_up)
        self.timers.append(timer)
        return timer

    def pin(self, peer: Address) -> None:
        """Talk to C{peer} from now on (and only to it)."""
        self.peer = peer
        self.send = make_send(self.transport, peer)
        self.send_many = make_send_many(self.transport, peer, self.send)

    # -- reading ----------------------------------------------------------------

    def readable(self, sock: Any, bufsize: int) -> None:
        """The port is readable: make up to L{burst} reads.

        Called by the port itself (see L{filexfer.tftp._udp.open_port})
        instead of C{datagramReceived} per datagram.  In-order packets from
        the peer go straight to L{fast_packet}; reading stops when it says
        the peer now waits for us, so no C{recvfrom} is wasted on an empty
        socket.
        """
        read_burst(sock, bufsize, self.burst, self.gro, self._datagram)
        self.after_reading()

    def _datagram(self, datagram: Any, addr: Any) -> bool:
        block = fast_block(datagram, addr, self.peer, self.fast_opcode)
        if block >= 0 and not self.done:
            try:
                return self.fast_packet(block, datagram)
            except OSError as exc:
                self.local_error(exc)
            except Exception as exc:
                self.crashed(exc)
            return True
        self.datagramReceived(bytes(datagram), addr)
        return self.port is None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """One datagram, by the slow path: any packet, from anyone."""
        try:
            self._received(datagram, addr)
        except Exception as exc:
            self.crashed(exc)
        else:
            self.after_reading()

    def _received(self, datagram: bytes, addr: Any) -> None:
        if self.done:
            self.after_done(datagram, addr)
            return
        peer = self.peer
        if peer is None:
            if not self.may_reply(addr):
                return
        elif addr[0] != peer[0] or addr[1] != peer[1]:
            self.unknown_tid(addr)
            return
        else:
            block = fast_block(datagram, addr, peer, self.fast_opcode)
            if block >= 0:
                try:
                    self.fast_packet(block, datagram)
                except OSError as exc:
                    self.local_error(exc)
                return
        try:
            packet = decode(datagram)
        except MalformedPacket:
            return
        if isinstance(packet, Error):
            self.peer_error(packet)
            return
        try:
            if self.peer is None:
                self.pin((addr[0], addr[1]))
                self.first_reply(packet)
            else:
                self.packet_received(packet)
        except OSError as exc:
            self.local_error(exc)

    def unknown_tid(self, addr: Address) -> None:
        """A datagram from a stranger: ERROR 5 to it; the transfer goes on."""
        write_to(self.transport, _UNKNOWN_TID, addr)

    # -- for subclasses -----------------------------------------------------------

    def fast_packet(self, block: int, datagram: bytes) -> bool:
        """A datagram with opcode L{fast_opcode} from the peer, at least 4 bytes long.

        Returns True when nothing more is expected from the peer until it
        hears from us.
        """
        raise NotImplementedError

    def may_reply(self, addr: Address) -> bool:
        """Whether C{addr} may give the first reply and so become the peer."""
        return False

    def first_reply(self, packet: object) -> None:
        """The peer's first packet (a client's transfer learns the server's TID)."""
        raise NotImplementedError

    def packet_received(self, packet: object) -> None:
        """A decoded packet from the peer (not ERROR, not on the fast path)."""
        raise NotImplementedError

    def after_reading(self) -> None:
        """A burst of datagrams was handled (progress reports go here)."""

    def request_repeated(self) -> None:
        """The peer repeated what this transfer's first packet answers (its request)."""

    def after_done(self, datagram: bytes, addr: Any) -> None:
        """A datagram after the transfer ended; ignored unless overridden."""

    def peer_error(self, packet: Error) -> None:
        """The peer sent ERROR: the transfer is over."""
        raise NotImplementedError

    def timed_out(self) -> None:
        """The peer stopped answering after the allowed retries."""
        raise NotImplementedError

    def local_error(self, exc: OSError) -> None:
        """Reading or writing the local file failed."""
        raise NotImplementedError

    def crashed(self, exc: Exception) -> None:
        """A bug, not the network; called inside the C{except} block that caught it."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release what the transfer holds (files, uploads, timers)."""

    def close_port(self) -> Deferred[None]:
        """Stop listening on the transfer's port; fires once it is closed."""
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        result = port.stopListening()
        return result if isinstance(result, Deferred) else succeed(None)


class Sender(Transfer):
    """The RFC's sender: sends a file as DATA, a window at a time, and reads ACKs."""

    fast_opcode = OP_ACK
    sender: WindowSender | None = None
    source: IReadSource | None = None

    def send_file(
        self,
        source: IReadSource,
        netascii: bool,
        settings: Negotiated,
        *,
        handshake: bytes | None,
        on_done: Callable[[], None],
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Start sending C{source}; with C{handshake} (an OACK) wait for ACK 0 first."""
        self.source = source
        blocks = SourceBlocks(
            source, settings.blksize, transform=NetasciiEncoder().encode if netascii else None
        )
        self.sender = WindowSender(
            clock=self.clock,
            send=self.send,
            next_block=blocks.next_block,
            blksize=settings.blksize,
            windowsize=settings.windowsize,
            rtt=self.rtt,
            budget=self.budget,
            on_done=on_done,
            on_timeout=self.timed_out,
            on_progress=on_progress,
            send_many=self.send_many,
        )
        self.timers.append(self.sender.timer)
        blocks.on_ready = self._more
        self.sender.start(handshake)

    def _more(self) -> None:
        if self.sender is not None and not self.done:
            try:
                self.sender.more()
            except OSError as exc:
                self.local_error(exc)

    def request_repeated(self) -> None:
        """The peer repeated the request this transfer answers: resend the first answer."""
        if self.sender is not None:
            self.sender.request_repeated()

    def readable(self, sock: Any, bufsize: int) -> None:
        """One ACK per window: read one datagram; an ACK from the peer goes
        straight to the sender (the shortest path, for lock-step peers)."""
        try:
            datagram, addr = sock.recvfrom(bufsize)
        except OSError:
            return  # nothing there, or an ICMP error about an earlier datagram
        # fast_block() written out: this runs once per ACK, and for lock-step
        # peers (windowsize 1) once per block, where the call measured ~5% CPU.
        peer = self.peer
        sender = self.sender
        if (
            peer is not None
            and addr[1] == peer[1]
            and addr[0] == peer[0]
            and len(datagram) >= 4
            and datagram[1] == OP_ACK
            and datagram[0] == 0
            and sender is not None
            and not self.done
        ):
            try:
                sender.ack_received((datagram[2] << 8) | datagram[3])
            except OSError as exc:
                self.local_error(exc)
            except Exception as exc:
                self.crashed(exc)
            return
        self.datagramReceived(datagram, addr)

    def fast_packet(self, block: int, datagram: bytes) -> bool:
        if self.sender is not None:
            self.sender.ack_received(block)
        return True  # one ACK per window: the next one comes after our DATA

    def nbytes(self) -> int:
        """Payload bytes the peer has acknowledged."""
        return self.sender.acked_bytes if self.sender is not None else 0

    def cleanup(self) -> None:
        if self.sender is not None:
            self.sender.stop()
        if self.source is not None:
            self.source.close()


class Receiver(Transfer):
    """The RFC's receiver: takes DATA in order, ACKs every window, reads in bursts."""

    fast_opcode = OP_DATA
    wants_gro = True
    receiver: WindowReceiver | None = None
    decoder: NetasciiDecoder | None = None
    """Set for a netascii transfer: payloads are converted before they are written."""

    def receive_file(
        self,
        settings: Negotiated,
        *,
        handshake: bytes | None,
        write: Callable[[bytes], object],
        on_last: Callable[[], None],
    ) -> None:
        """Start receiving into C{write}; C{handshake} (ACK 0 or an OACK) is sent first."""
        decoder = self.decoder
        deliver = write
        if decoder is not None:

            def deliver(payload: bytes) -> None:
                write(decoder.decode(bytes(payload)))

        self.burst = min(settings.windowsize, 64) + 1
        self.receiver = WindowReceiver(
            clock=self.clock,
            send=self.send,
            deliver=deliver,
            blksize=settings.blksize,
            windowsize=settings.windowsize,
            rtt=self.rtt,
            budget=self.budget,
            on_last=on_last,
            on_timeout=self.timed_out,
        )
        self.timers.append(self.receiver.timer)
        self.receiver.start(handshake)

    def request_repeated(self) -> None:
        """The peer repeated what our handshake answers: send it again at once."""
        if self.receiver is not None:
            self.receiver.handshake_repeated()

    def netascii_tail(self) -> bytes:
        """At the end: what the netascii decoder still holds (a CR), else nothing."""
        return self.decoder.flush() if self.decoder is not None else b""

    def fast_packet(self, block: int, datagram: bytes) -> bool:
        if self.receiver is None:
            return True
        return self.receiver.data_received(block, datagram[4:])

    def nbytes(self) -> int:
        """Payload bytes taken in order."""
        return self.receiver.received_bytes if self.receiver is not None else 0

    def cleanup(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
