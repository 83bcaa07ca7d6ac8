"""The sending end of the TCP push.

L{send_file} connects through any client endpoint, sends the handshake,
streams the file with a pull producer (one chunk in memory at a time) and
fires with the server's receipt, checked against the client's own hash.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from functools import partial
from typing import Any, BinaryIO, cast

import attrs
from automat import MethodicalMachine
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IPullProducer,
    IReactorThreads,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._hashing import DEFAULT_DIGEST, DIGESTS, DigestName, new_hasher
from filexfer._mtime import NS_MAX, NS_MIN
from filexfer._progress import Progress as Progress
from filexfer._receipt import Receipt
from filexfer._text import escape
from filexfer._types import ISendingReactor, IStreamTransport
from filexfer.tcp import _wire
from filexfer.tcp._errors import (
    ConnectTimeout,
    ReplyTimeout,
    SendError,
    ServerRefused,
    _StartAfresh,
)
from filexfer.tcp._local import check_remote_name, describe_mode, hash_prefix, open_regular
from filexfer.tcp._retry import RETRY_DEADLINE, retry_wait, retry_while_busy
from filexfer.tcp._threaded import ThreadedSend, socket_fd

__all__ = [
    "CHUNK_SIZE",
    "CONNECT_TIMEOUT",
    "IDLE_TIMEOUT",
    "REPLY_TIMEOUT",
    "RETRY_DEADLINE",
    "ConnectTimeout",
    "Progress",
    "ReplyTimeout",
    "SendError",
    "SenderProtocol",
    "ServerRefused",
    "check_remote_name",
    "describe_mode",
    "open_regular",
    "reply_wait",
    "retry_wait",
    "send_file",
]

CHUNK_SIZE = 256 * 1024

CONNECT_TIMEOUT = 10.0
"""Seconds L{send_file} waits for a connection by default."""
REPLY_TIMEOUT = 30.0
"""Seconds L{send_file} waits for the server's first reply by default."""
HASHING_ALLOWANCE = 50_000_000
"""Bytes of the file per second added to the first-reply wait: the server
may hash what it holds (at 50 MB/s or better) before it answers."""
IDLE_TIMEOUT = 300.0
"""Seconds L{send_file} lets a transfer stall by default."""


@implementer(IPullProducer)
class _FileProducer:
    """Reads the file a chunk at a time, hashing what it sends."""

    def __init__(self, protocol: SenderProtocol) -> None:
        self._protocol = protocol

    def resumeProducing(self) -> None:
        self._protocol.send_next_chunk()

    def stopProducing(self) -> None:
        self._protocol.stop_streaming()


def _no_delay(transport: object) -> None:
    """Turn Nagle's algorithm off on a TCP C{transport} (others are left as they are).

    The trailer (73 bytes) follows the last data segment at once; with Nagle
    on it waited for the server's delayed ACK of that segment, about 40 ms on
    Linux, so every file cost that much more (found by a tester sending 200
    small files: 57 ms per file). The data itself goes out in full segments
    either way.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except OSError:
        pass  # a socket that refuses it still sends, as before


class SenderProtocol(Protocol):
    """Sends one file: handshake, wait for C{ok}, stream, wait for C{done}.

    Over TCP without TLS on a reactor with threads, the bytes go out with
    C{sendfile} and are hashed in a second thread (L{ThreadedSend}); over
    TLS, or in memory, a pull producer sends a chunk at a time.

    A connection moves through a declared state machine (the table is at the
    end of the class); C{dataReceived} and C{connectionLost} only feed it.
    """

    _machine = MethodicalMachine()

    def __init__(
        self,
        handle: BinaryIO,
        size: int,
        request: _wire.ClassicRequest | _wire.PutRequest,
        progress: Progress | None,
        clock: IReactorTime | ISendingReactor,
        idle_timeout: float,
        reply_timeout: float | None = None,
    ) -> None:
        self._clock = clock
        self._threads_reactor = _with_threads(clock)
        """The clock again when it has a thread pool for the threaded send, else None."""
        self._idle_timeout = idle_timeout
        self._reply_timeout = reply_timeout
        """Seconds for the first reply (None: the idle timeout)."""
        self._answered = False
        self._timer: IDelayedCall | None = None
        self._handle = handle
        self._size = size
        self._request = request
        self._classic = isinstance(request, _wire.ClassicRequest)
        self._progress = progress
        self._algorithm: DigestName = DEFAULT_DIGEST
        """The receipt digest: SHA-256 unless the server's ok names the one we asked for."""
        self._digest = new_hasher(DEFAULT_DIGEST)
        self._hashed_upto = 0
        """Bytes of the file that C{_digest} covers before sending starts."""
        self._sent = 0
        self._buffer = b""
        self._line = b""
        """The reply being handled, for messages about it."""
        self._offset = 0
        self._trailer = False
        self._producer: _FileProducer | None = None
        """Registered with the transport while pulling."""
        self._threads: ThreadedSend | None = None
        """Running from C{threaded} until both threads have reported."""
        self._early_receipt: Receipt | None = None
        """The receipt held in C{confirmed_early}."""
        self.result: Deferred[Receipt] = Deferred(self._cancelled)
        """Cancelling it stops the send and drops the connection (the
        server keeps what it received, for a resume)."""

    @property
    def _transport(self) -> IStreamTransport:
        """C{self.transport}, typed as what this protocol uses of it (once connected)."""
        return cast(IStreamTransport, self.transport)

    # -- Twisted's calls -----------------------------------------------------

    def connectionMade(self) -> None:
        if self._reply_timeout is None:
            self._timer = self._clock.callLater(self._idle_timeout, self._stalled)
        else:
            self._timer = self._clock.callLater(self._reply_timeout, self._no_reply)
        if hasattr(self._transport, "bufferSize"):
            self._transport.bufferSize = CHUNK_SIZE
        _no_delay(self.transport)
        if isinstance(self._request, _wire.ClassicRequest):
            self._transport.write(self._request.name.encode("utf-8"))
        else:
            self._transport.write(_wire.encode_put(self._request))

    def dataReceived(self, data: bytes) -> None:
        self._still_alive()
        self.data_received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.connection_lost(reason)

    # -- states ----------------------------------------------------------------

    @_machine.state(initial=True)
    def handshake(self) -> None:
        """The request is sent; waiting for C{ok} (or C{error})."""

    @_machine.state()
    def checking_prefix(self) -> None:
        """C{ok <offset> <prefix>}: hashing our first offset bytes to compare."""

    @_machine.state()
    def pulling(self) -> None:
        """Sending a chunk per pull of the transport (TLS, in memory)."""

    @_machine.state()
    def threaded(self) -> None:
        """One thread sends with C{sendfile}, another hashes."""

    @_machine.state()
    def confirmed_early(self) -> None:
        """C{done} came in while our hashing thread still runs: checked when it ends."""

    @_machine.state()
    def confirming(self) -> None:
        """All bytes (and the trailer) are sent: waiting for C{done}, or the classic close."""

    @_machine.state()
    def done(self) -> None:
        """The result has fired."""

    # -- inputs ----------------------------------------------------------------

    @_machine.input()
    def data_received(self, data: bytes) -> None:
        "Bytes from the server."

    @_machine.input()
    def offered_pull(self, offset: int, trailer: bool) -> None:
        "The server's ok: send from offset, a chunk per pull."

    @_machine.input()
    def offered_threads(self, offset: int, trailer: bool) -> None:
        "The server's ok: send from offset with sendfile and a hashing thread."

    @_machine.input()
    def prefix_offered(self, offset: int, theirs: str | None) -> None:
        "The server holds [0, offset) with this digest (None: a stored file to prove)."

    @_machine.input()
    def prefix_verified_pull(self, offset: int, trailer: bool) -> None:
        "Our first offset bytes are what the server holds: pull the rest."

    @_machine.input()
    def prefix_verified_threads(self, offset: int, trailer: bool) -> None:
        "Our first offset bytes are what the server holds: send the rest in threads."

    @_machine.input()
    def all_sent(self) -> None:
        "Every byte of the file is sent and hashed."

    @_machine.input()
    def receipt_received(self, receipt: Receipt) -> None:
        "The server's done line."

    @_machine.input()
    def refused(self, refusal: _wire.Refusal) -> None:
        "The server's error line."

    @_machine.input()
    def failed(self, error: SendError) -> None:
        "Something on our side ends the send (timeout, bad reply, unreadable file)."

    @_machine.input()
    def connection_lost(self, reason: Failure) -> None:
        "The connection is gone."

    # -- outputs: replies --------------------------------------------------------

    @_machine.output()
    def _read_first_replies(self, data: bytes) -> None:
        self._buffer += data
        if self._classic and self._buffer.startswith(_wire.CLASSIC_OK):
            self._buffer = self._buffer[len(_wire.CLASSIC_OK) :]
            self._offer(0, False)
        self._read_lines()

    @_machine.output()
    def _read_replies(self, data: bytes) -> None:
        self._buffer += data
        self._read_lines()

    def _read_lines(self) -> None:
        while b"\n" in self._buffer and not self.result.called:
            self._line, _, self._buffer = self._buffer.partition(b"\n")
            self._dispatch(self._line)
        if len(self._buffer) > _wire.MAX_HEADER_BLOCK:
            self.failed(SendError("the server sent an overlong reply"))

    def _dispatch(self, line: bytes) -> None:
        """Turn one reply line into the machine's input for it."""
        try:
            reply = _wire.parse_reply(line)
        except ValueError as error:
            self.failed(SendError(str(error)))
            return
        if isinstance(reply, _wire.Refusal):
            self.refused(reply)
        elif isinstance(reply, Receipt):
            self.receipt_received(reply)
        elif self._classic:
            self.failed(SendError(f"unexpected reply from server: {line[:80]!r}"))
        elif reply.digest not in (None, DEFAULT_DIGEST, self._asked_digest):
            self.failed(SendError(f"the server chose the digest {reply.digest}, not asked for"))
        elif reply.offset > self._size:
            self.failed(SendError(f"server offered offset {reply.offset} beyond the file"))
        else:
            self._algorithm = reply.digest or DEFAULT_DIGEST
            self._digest = new_hasher(self._algorithm)
            if reply.trailer and reply.offset:
                self.prefix_offered(reply.offset, reply.prefix_sha256)
            else:
                self._offer(reply.offset, reply.trailer)

    @property
    def _asked_digest(self) -> str | None:
        """The digest our request asked for (C{Digest:}), or None."""
        return self._request.digest if isinstance(self._request, _wire.PutRequest) else None

    @property
    def algorithm(self) -> DigestName:
        """The receipt digest this send verifies with (known once the server said C{ok})."""
        return self._algorithm

    def _offer(self, offset: int, trailer: bool) -> None:
        if self._can_use_threads():
            self.offered_threads(offset, trailer)
        else:
            self.offered_pull(offset, trailer)

    def _can_use_threads(self) -> bool:
        return self._threads_reactor is not None and socket_fd(self.transport) is not None

    @_machine.output()
    def _unexpected(self) -> None:
        self._fail(SendError(f"unexpected reply from server: {self._line[:80]!r}"))

    @_machine.output()
    def _report_refusal(self, refusal: _wire.Refusal) -> None:
        self._fail(self._refusal_error(refusal))

    def _refusal_error(self, refusal: _wire.Refusal) -> SendError:
        if refusal.code == 422 and self._offset and self._trailer:
            # what the server held (a partial, a stored file) is not this
            # file as it is now: one fresh attempt (docs/protocol.md, I1)
            return _StartAfresh(f"server refused: {refusal.code} {refusal.reason}")
        return ServerRefused(refusal.code, refusal.reason)

    @_machine.output()
    def _give_up(self, error: SendError) -> None:
        self._fail(error)

    # -- outputs: the prefix -------------------------------------------------------

    @_machine.output()
    def _hash_our_prefix(self, offset: int, theirs: str | None) -> None:
        """Hash our bytes [0, offset) (off the reactor thread when it has threads), then go on.

        C{theirs} is the server's SHA-256 of the bytes it holds: a mismatch
        means our file changed since the interrupted upload, so this attempt
        stops and a fresh one follows.  Without it (C{ok <size> -}, a stored
        file with our Size and Mtime) the trailer carries the proof.
        """
        self._offset = offset
        self._trailer = True
        reactor = self._threads_reactor
        if reactor is not None:
            hashing = deferToThreadPool(
                reactor,
                reactor.getThreadPool(),
                hash_prefix,
                self._handle,
                offset,
                self._algorithm,
            )
        else:
            hashing = maybeDeferred(hash_prefix, self._handle, offset, self._algorithm)

        def hashed(digest: Any) -> None:
            if self.result.called:
                return
            if theirs is not None and digest.hexdigest() != theirs:
                self.failed(_StartAfresh("the server holds other bytes for this file"))
                return
            self._digest = digest
            self._hashed_upto = offset
            if self._can_use_threads():
                self.prefix_verified_threads(offset, True)
            else:
                self.prefix_verified_pull(offset, True)

        def failed(failure: Failure) -> None:
            self.failed(SendError(f"cannot read the file: {failure.getErrorMessage()}"))

        hashing.addCallbacks(hashed, failed)

    # -- outputs: sending ----------------------------------------------------------

    @_machine.output()
    def _start_threads(self, offset: int, trailer: bool) -> None:
        self._begin_at(offset, trailer)
        # The hashing thread starts at 0 unless the prefix is hashed
        # already: a resumed prefix is hashed off the reactor thread too.
        assert self._threads_reactor is not None  # _can_use_threads chose this path
        self._threads = ThreadedSend(
            self._threads_reactor,
            cast(int, socket_fd(self.transport)),
            self._handle.fileno(),
            offset,
            self._size,
            self._digest,
            self._sent_by_thread,
            self._threads_finished,
            hash_from=self._hashed_upto if self._hashed_upto == offset else 0,
        )

    @_machine.output()
    def _start_pull(self, offset: int, trailer: bool) -> None:
        self._begin_at(offset, trailer)
        if offset and self._hashed_upto != offset:
            self._digest = hash_prefix(self._handle, offset, self._algorithm)
        self._handle.seek(offset)
        if offset == self._size:
            self._sent_everything()
            return
        # first: a real transport pulls the first chunk at once
        self._producer = _FileProducer(self)
        self._transport.registerProducer(self._producer, False)

    def _begin_at(self, offset: int, trailer: bool) -> None:
        self._offset = offset
        self._trailer = trailer
        self._sent = offset
        self._report_progress()

    def send_next_chunk(self) -> None:
        """Send one more chunk (the producer's pull)."""
        if self._producer is None:
            return
        chunk = self._handle.read(min(CHUNK_SIZE, self._size - self._sent))
        if not chunk:
            self._sent_everything()
            return
        self._digest.update(chunk)
        self._sent += len(chunk)
        self._transport.write(chunk)
        self._still_alive()
        self._report_progress()
        if self._sent >= self._size:
            self._sent_everything()

    def stop_streaming(self) -> None:
        """The transport gave up on us: no more pulls."""
        self._producer = None

    def _sent_by_thread(self, position: int) -> None:
        self._sent = position
        self._still_alive()
        self._report_progress()

    def _threads_finished(self, sent: int, hashed: int, error: BaseException | None) -> None:
        self._threads = None
        if self.result.called:
            return  # stopped: the result is settled already
        if error is not None:
            self.failed(SendError(f"sending failed: {error}"))
            return
        self._sent = min(sent, hashed)
        self._sent_everything()

    def _sent_everything(self) -> None:
        if self._sent != self._size:
            self.failed(
                SendError(f"file changed while sending: {self._sent} of {self._size} bytes")
            )
        else:
            self.all_sent()

    @_machine.output()
    def _send_trailer_or_close(self) -> None:
        self._stop_sending()
        if self._classic:
            self._transport.loseConnection()
        elif self._trailer:
            trailer = _wire.encode_trailer(self._digest.hexdigest(), self._algorithm)
            self._transport.write(trailer)

    def _stop_sending(self) -> None:
        """No more reads from the file (it is closed once the result fires)."""
        if self._threads is not None:
            self._threads.stop()
        if self._producer is not None:  # not registered when nothing was left to send
            self._producer = None
            self._transport.unregisterProducer()

    # -- outputs: the receipt --------------------------------------------------------

    @_machine.output()
    def _hold_receipt(self, receipt: Receipt) -> None:
        self._early_receipt = receipt  # the hashing thread has yet to report

    @_machine.output()
    def _check_held_receipt(self) -> None:
        self._stop_sending()
        assert self._early_receipt is not None
        self._verify(self._early_receipt)

    @_machine.output()
    def _check_receipt(self, receipt: Receipt) -> None:
        self._verify(receipt)

    def _verify(self, receipt: Receipt) -> None:
        ours = self._digest.hexdigest()
        if receipt.algorithm != self._algorithm:
            self._fail(
                SendError(
                    f"the server's receipt carries {receipt.algorithm}, "
                    f"but its ok chose {self._algorithm}"
                )
            )
            return
        if receipt.size != self._size or receipt.digest != ours:
            self._fail(
                SendError(
                    f"server stored {receipt.size} bytes hashing to {receipt.digest} "
                    f"({receipt.algorithm}), but the file has {self._size} bytes hashing to {ours}"
                )
            )
            return
        self._succeed(receipt)

    # -- outputs: the connection ends ------------------------------------------------

    @_machine.output()
    def _lost_in_handshake(self, reason: Failure) -> None:
        self._connection_failed(reason, "during the handshake")

    @_machine.output()
    def _lost_unconfirmed(self, reason: Failure) -> None:
        self._connection_failed(reason, "before confirming the upload")

    @_machine.output()
    def _lost_after_sending(self, reason: Failure) -> None:
        if self._classic and not self._buffer.startswith(b"error") and reason.check(ConnectionDone):
            # the classic form's only confirmation is the server's clean close
            self._succeed(Receipt(self._size, self._digest.hexdigest(), self._request_path))
        else:
            self._connection_failed(reason, "before confirming the upload")

    def _connection_failed(self, reason: Failure, stage: str) -> None:
        self._stop_sending()
        if self._buffer.startswith(b"error"):
            try:
                refusal = _wire.parse_reply(self._buffer)
            except ValueError as error:
                self._fail(SendError(str(error)))
                return
            assert isinstance(refusal, _wire.Refusal)
            self._fail(self._refusal_error(refusal))
            return
        tls_problem = _describe_tls_failure(reason)
        if tls_problem is not None:
            self._fail(SendError(tls_problem))
            return
        self._fail(SendError(self._lost_text(reason, stage)))

    def _lost_text(self, reason: Failure, stage: str) -> str:
        """What a person should know about a connection that ended C{stage}."""
        how = "closed" if reason.check(ConnectionDone) else "lost"
        if stage == "during the handshake" and not self._answered:
            if self._buffer[:1] in (b"\x15", b"\x16") and self._buffer[1:2] == b"\x03":
                return (
                    "the server answered in TLS and closed the connection: "
                    "it expects TLS (use --tls)"
                )
            return (
                f"the server {how} the connection during the handshake, without answering "
                "(does it expect TLS (--tls), or is it not a filexfer server?)"
            )
        if self._classic:
            return f"the server {how} the connection {stage}: the file may not be stored"
        return (
            f"the server {how} the connection {stage}: the file is not stored yet; "
            "run the same command again to resume"
        )

    # -- transitions ---------------------------------------------------------------

    handshake.upon(data_received, enter=handshake, outputs=[_read_first_replies])
    handshake.upon(offered_pull, enter=pulling, outputs=[_start_pull])
    handshake.upon(offered_threads, enter=threaded, outputs=[_start_threads])
    handshake.upon(prefix_offered, enter=checking_prefix, outputs=[_hash_our_prefix])
    handshake.upon(receipt_received, enter=done, outputs=[_unexpected])
    handshake.upon(refused, enter=done, outputs=[_report_refusal])
    handshake.upon(failed, enter=done, outputs=[_give_up])
    handshake.upon(connection_lost, enter=done, outputs=[_lost_in_handshake])

    checking_prefix.upon(data_received, enter=checking_prefix, outputs=[_read_replies])
    checking_prefix.upon(prefix_verified_pull, enter=pulling, outputs=[_start_pull])
    checking_prefix.upon(prefix_verified_threads, enter=threaded, outputs=[_start_threads])
    checking_prefix.upon(refused, enter=done, outputs=[_report_refusal])
    checking_prefix.upon(failed, enter=done, outputs=[_give_up])
    checking_prefix.upon(connection_lost, enter=done, outputs=[_lost_unconfirmed])

    pulling.upon(data_received, enter=pulling, outputs=[_read_replies])
    pulling.upon(all_sent, enter=confirming, outputs=[_send_trailer_or_close])
    pulling.upon(refused, enter=done, outputs=[_report_refusal])
    pulling.upon(failed, enter=done, outputs=[_give_up])
    pulling.upon(connection_lost, enter=done, outputs=[_lost_unconfirmed])

    threaded.upon(data_received, enter=threaded, outputs=[_read_replies])
    threaded.upon(all_sent, enter=confirming, outputs=[_send_trailer_or_close])
    threaded.upon(receipt_received, enter=confirmed_early, outputs=[_hold_receipt])
    threaded.upon(refused, enter=done, outputs=[_report_refusal])
    threaded.upon(failed, enter=done, outputs=[_give_up])
    threaded.upon(connection_lost, enter=done, outputs=[_lost_unconfirmed])

    # The receipt is in; our hashing thread is not done: wait for it, even
    # when the server has closed already.
    confirmed_early.upon(data_received, enter=confirmed_early, outputs=[_read_replies])
    confirmed_early.upon(all_sent, enter=done, outputs=[_check_held_receipt])
    confirmed_early.upon(receipt_received, enter=confirmed_early, outputs=[_hold_receipt])
    confirmed_early.upon(refused, enter=done, outputs=[_report_refusal])
    confirmed_early.upon(failed, enter=done, outputs=[_give_up])
    confirmed_early.upon(connection_lost, enter=confirmed_early, outputs=[])

    confirming.upon(data_received, enter=confirming, outputs=[_read_replies])
    confirming.upon(receipt_received, enter=done, outputs=[_check_receipt])
    confirming.upon(refused, enter=done, outputs=[_report_refusal])
    confirming.upon(failed, enter=done, outputs=[_give_up])
    confirming.upon(connection_lost, enter=done, outputs=[_lost_after_sending])

    # A second ok, or a done before the bytes, is a server out of step.
    for _state in (checking_prefix, pulling, threaded, confirmed_early, confirming):
        for _offer_input in (offered_pull, offered_threads, prefix_offered):
            _state.upon(_offer_input, enter=done, outputs=[_unexpected])
    for _state in (checking_prefix, pulling):
        _state.upon(receipt_received, enter=done, outputs=[_unexpected])

    # Nothing moves once the result has fired: late thread reports, a prefix
    # hashed after a failure, the close that follows our own.
    for _input in (
        data_received,
        offered_pull,
        offered_threads,
        prefix_offered,
        prefix_verified_pull,
        prefix_verified_threads,
        all_sent,
        receipt_received,
        refused,
        failed,
        connection_lost,
    ):
        done.upon(_input, enter=done, outputs=[])
    del _state, _offer_input, _input

    # -- helpers -------------------------------------------------------------------

    def _stalled(self) -> None:
        self._timer = None
        self.failed(SendError(f"no progress for {self._idle_timeout:g} seconds; giving up"))

    def _no_reply(self) -> None:
        self._timer = None
        self.failed(
            ReplyTimeout(
                f"the server accepted the connection but did not answer within "
                f"{self._reply_timeout:g} s (is it a filexfer server, with TLS if it needs it?)"
            )
        )

    def _still_alive(self) -> None:
        if self._timer is not None and self._timer.active():
            if not self._answered and self._reply_timeout is not None:
                self._timer.cancel()
                self._timer = self._clock.callLater(self._idle_timeout, self._stalled)
            else:
                self._timer.reset(self._idle_timeout)
        self._answered = True

    def _cancelled(self, _: Deferred[Receipt]) -> None:
        """The result was cancelled: stop reading and sending, drop the connection."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._stop_sending()
        if self.transport is not None:
            self._transport.abortConnection()

    def _report_progress(self) -> None:
        if self._progress is not None:
            self._progress(self._sent, self._size)

    def _succeed(self, receipt: Receipt) -> None:
        if not self.result.called:
            self.result.callback(receipt)
        self._transport.loseConnection()

    def _fail(self, error: Exception) -> None:
        self._stop_sending()
        if not self.result.called:
            self.result.errback(Failure(error))
        self._transport.loseConnection()

    @property
    def _request_path(self) -> str:
        request = self._request
        return request.name if isinstance(request, _wire.ClassicRequest) else request.path


def _with_threads(clock: IReactorTime | ISendingReactor) -> ISendingReactor | None:
    """C{clock} when it has a thread pool too (L{IReactorThreads}), else None.

    Real reactors declare L{IReactorTime} and L{IReactorThreads} apart, not
    their combination, so the check is on L{IReactorThreads}.
    """
    return cast(ISendingReactor, clock) if IReactorThreads.providedBy(clock) else None


def _describe_tls_failure(reason: Failure) -> str | None:
    """One line for a failed TLS handshake, or None when it is something else."""
    if reason.check("service_identity.exceptions.VerificationError"):
        return "TLS: the server's certificate is not valid for this host name or address"
    if reason.check("OpenSSL.SSL.Error"):
        args = getattr(reason.value, "args", ())
        details = [str(part[-1]) for part in args[0] if part] if args else []
        text = "; ".join(d for d in details if d) or "handshake failed"
        if "certificate verify failed" in text:
            return (
                f"TLS: {text}: the server's certificate is not signed by an authority "
                "this machine trusts (use --cacert FILE for a private authority)"
            )
        if any(sign in text for sign in _NOT_TLS):
            return (
                f"TLS: {text}: the server did not answer in TLS "
                "(is this port plain TCP? then send without --tls)"
            )
        return f"TLS: {text}"
    return None


_NOT_TLS = ("wrong version number", "packet length too long", "record layer failure", "http")
"""OpenSSL's words when the peer answered something that is not TLS."""


def send_file(
    reactor: IReactorTime | ISendingReactor,
    endpoint: IStreamClientEndpoint,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    plain: bool = False,
    token: str | None = None,
    progress: Progress | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
    retry_deadline: float = RETRY_DEADLINE,
    jitter: Callable[[], float] = random.random,
    on_retry: Callable[[ServerRefused, float], None] | None = None,
    connect_timeout: float | None = CONNECT_TIMEOUT,
    reply_timeout: float | None = REPLY_TIMEOUT,
    digest: DigestName = DEFAULT_DIGEST,
) -> Deferred[Receipt]:
    """Send the file at C{path} to the receiver at C{endpoint}.

    @param reactor: the clock for timeouts and retry waits.  A reactor with
        threads too (L{ISendingReactor}: any real one) sends over plain TCP
        with C{sendfile} and hashes in threads; a bare clock (C{task.Clock}
        in tests) sends a chunk per pull on the reactor thread.
    @param name: the remote relative path (FX/1) or name (classic); the
        file's own name by default.
    @param plain: use the classic form (name, C{ok}, stream, close) for
        receivers that speak nothing else.  There is no receipt then: the
        result describes what was sent.
    @param token: the shared secret for servers that require one.
    @param idle_timeout: give up after this many seconds without progress.
    @param connect_timeout: give up (L{ConnectTimeout}) when the endpoint
        has not connected after this many seconds; None waits as long as
        the endpoint does.
    @param reply_timeout: give up (L{ReplyTimeout}) when the server has not
        answered the request this many seconds after the connection was
        made (a TLS handshake included); None uses C{idle_timeout}.
    @param retry_deadline: while this many seconds have not passed since the
        first attempt, a server that answers C{error 503} (busy) is tried
        again after a wait from L{retry_wait}; 0 never retries.  Nothing
        else is retried: a refused connection means no server is listening.
    @param jitter: random numbers in [0, 1) that spread the waits apart.
    @param on_retry: called as C{on_retry(refusal, seconds)} before each wait.
    @param digest: the receipt digest to ask for (FX/1 C{Digest:}):
        C{"blake3"} asks, and the server may decline (then SHA-256 is used);
        C{"sha256"} (the default) asks nothing, as clients before BLAKE3 did.
        The receipt's C{algorithm} says which one was verified.  The
        classic form (C{plain}) has no receipt and asks for none.
    @raise ValueError: C{digest} is not one of L{DIGESTS} (lower case).
    @return: a Deferred firing with the server's L{Receipt}, verified
        against the client's own digest of the file, or failing with L{SendError}
        (L{ServerRefused} for an C{error} reply, the last one when the
        server stayed busy) or a connection error.  A name the server's
        rules refuse, or a path that is not a regular file (a FIFO is never
        opened in a way that blocks), fails with L{SendError} before
        connecting.  Cancelling it stops the send and drops the connection;
        the server keeps the bytes it has for a resume (FX/1).
    """
    if digest not in DIGESTS:
        raise ValueError(f"digest must be one of {', '.join(map(repr, DIGESTS))}, not {digest!r}")
    timeouts = _Timeouts(idle_timeout, connect_timeout, reply_timeout)
    once = partial(
        _send_once, reactor, endpoint, path, name, plain, token, progress, timeouts, digest
    )

    def attempt() -> Deferred[Receipt]:
        def again_from_zero(failure: Failure) -> Deferred[Receipt]:
            if failure.check(_StartAfresh):
                return once(fresh=True)
            return fail(failure)

        return once(fresh=False).addErrback(again_from_zero)

    return Deferred.fromCoroutine(
        retry_while_busy(reactor, attempt, retry_deadline, jitter, on_retry)
    )


def reply_wait(
    timeouts: _Timeouts, request: _wire.ClassicRequest | _wire.PutRequest
) -> float | None:
    """Seconds to wait for the first reply to C{request}.

    Before it answers an FX/1 request the server may hash up to Size bytes it
    already holds (a partial to resume, a stored file with our Size and
    Mtime), so the wait grows by a second per L{HASHING_ALLOWANCE} bytes of
    the file: 30 s for a small file, 20 s more per GB.
    """
    if timeouts.reply is None or not isinstance(request, _wire.PutRequest):
        return timeouts.reply
    return timeouts.reply + (request.size or 0) // HASHING_ALLOWANCE


@attrs.frozen
class _Timeouts:
    idle: float
    connect: float | None
    reply: float | None


def _send_once(
    reactor: IReactorTime | ISendingReactor,
    endpoint: IStreamClientEndpoint,
    path: str | os.PathLike[str],
    name: str | None,
    classic: bool,
    token: str | None,
    progress: Progress | None,
    timeouts: _Timeouts,
    digest: DigestName,
    *,
    fresh: bool,
) -> Deferred[Receipt]:
    """One attempt of L{send_file}: one connection, no retry; C{fresh}: C{Resume: no}."""
    remote = name if name is not None else os.path.basename(os.fspath(path))
    try:
        check_remote_name(remote, classic)
        handle = open_regular(path)  # closed when the Deferred fires
    except SendError as error:
        return fail(error)
    info = os.fstat(handle.fileno())
    request: _wire.ClassicRequest | _wire.PutRequest
    if classic:
        request = _wire.ClassicRequest(remote)
    else:
        # Mtime is optional: a time no server accepts (after 2262-04-11, which
        # ext4 can hold) is left out rather than have the upload refused.
        mtime_ns = info.st_mtime_ns if NS_MIN <= info.st_mtime_ns <= NS_MAX else None
        request = _wire.PutRequest(
            remote,
            info.st_size,
            None,
            mtime_ns,
            token,
            trailer=True,
            fresh=fresh,
            digest=None if digest == DEFAULT_DIGEST else digest,
        )
        try:
            _wire.encode_put(request)  # what connectionMade sends: checked before connecting
        except ValueError as error:
            handle.close()
            return fail(SendError(f"cannot send {escape(repr(remote))}: {error}"))
    protocol = SenderProtocol(
        handle,
        info.st_size,
        request,
        progress,
        reactor,
        timeouts.idle,
        reply_wait(timeouts, request),
    )
    connecting = endpoint.connect(Factory.forProtocol(lambda: protocol))
    timer: IDelayedCall | None = None
    if timeouts.connect is not None:
        timer = reactor.callLater(timeouts.connect, connecting.cancel)

    def close(result: Any) -> Any:
        handle.close()
        return result

    def connected(_: Any) -> Deferred[Receipt]:
        if timer is not None and timer.active():
            timer.cancel()
        return protocol.result

    def not_connected(failure: Failure) -> Failure:
        if timer is None or timer.active():
            if timer is not None:
                timer.cancel()
            return failure  # refused, unreachable, or cancelled by our caller
        if failure.check(CancelledError, "twisted.internet.error.ConnectingCancelledError"):
            raise ConnectTimeout(
                f"no connection within {timeouts.connect:g} s "
                "(is the host up and the port open, or a firewall dropping packets?)"
            )
        return failure

    return connecting.addErrback(not_connected).addCallback(connected).addBoth(close)
