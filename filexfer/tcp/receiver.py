r"""The receiving end of the TCP push: thin glue from bytes to parser to storage.

A connection moves through a declared state machine::

    handshake --parsed--> starting --accepted--> streaming --all bytes / EOF--> finishing
        |                   |                       |    \                         |
        +--refused--> closed +--already stored-->    |     +--Size bytes, Trailer--> trailer
                            |   closed (ok + done)  |                              |
                            +--refused--> closed    +--failed / lost--> closed    --SHA256 line-->
                                                                                   finishing

C{starting} waits for the storage (L{IStorage.begin} fires a Deferred: any
look-up or hashing of bytes already on disk happens off the reactor).  With
C{Trailer: SHA256} the client sends its whole-file SHA-256 after the data,
and the file gets its final name only when the stored bytes hash to it.

The handshake is parsed by L{filexfer.tcp._wire}; bytes are stored through
an L{IStorage}; the clock is injected so that timeouts are testable.
"""

from __future__ import annotations

import hmac
from typing import cast

from automat import MethodicalMachine
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorFromThreads,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer._guard import AccessPolicy, ConnectionLimits
from filexfer._hashing import DEFAULT_DIGEST, DigestName, digest_name
from filexfer._log import describe_peer, log
from filexfer._receipt import Receipt
from filexfer._records import ITransferObserver, Observers, TransferRecord, transfer_ended
from filexfer._types import IStreamTransport
from filexfer.storage import IDirectUpload, IStorage, IUpload
from filexfer.tcp import _wire
from filexfer.tcp._threaded import ThreadedReceive, socket_fd

PREFIX_WAIT = 0.5
"""Seconds to wait for more when the first chunk is a strict prefix of C{FX/}."""

LINGER = 5.0
"""Seconds to keep reading (and discarding) after refusing a peer mid-stream."""

READ_SIZE = 256 * 1024
"""Bytes read from the socket at a time: large reads mean fewer Python calls."""

THREADED_MINIMUM = 4 << 20
"""Uploads with at least this many bytes still to come are received in a
thread of their own (L{ThreadedReceive}) over plain TCP; smaller ones on the
reactor thread, where a thread would cost more than it saves."""

RECEIVE_THREADS = 8
"""At most this many uploads of one factory are received in threads at once;
the others are read on the reactor thread."""


def close_after_last_words(transport: IStreamTransport, peer_finished: bool) -> bool:
    """Close C{transport} without destroying the reply just written to it.

    Closing with the peer's bytes unread would reset the connection, and a
    reset can destroy the reply before the peer has read it: unless the
    peer has finished sending (C{peer_finished}), only the writing side is
    closed and reading goes on (the caller discards what arrives).

    @return: True when the connection is half-closed: the caller closes it
        when the peer does, or after L{LINGER} seconds.
    """
    if peer_finished:
        transport.loseConnection()
        return False
    try:
        transport.loseWriteConnection()
    except (AttributeError, NotImplementedError):
        transport.loseConnection()
        return False
    transport.resumeProducing()
    return True


@implementer(IHalfCloseableProtocol)
class ReceiverProtocol(Protocol):
    """Receives one file per connection, in the classic or the FX/1 form."""

    _machine = MethodicalMachine()

    def __init__(self, factory: ReceiverFactory) -> None:
        self.factory = factory
        self._clock = factory.clock
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self._prefix_timer: IDelayedCall | None = None
        self._prefix_expired = False
        self._peer_finished = False
        self._classic = True
        """Until FX/ is seen; decides the replies and the log line."""
        self._upload: IUpload | None = None
        self._peer = "?"
        self._path = ""
        self._started = 0.0
        self._trailer = False
        self._trailer_line = b""
        self._claimed_digest: str | None = None
        self._digest: DigestName | None = None
        """The receipt digest chosen for a client that asked for one (C{Digest:}),
        named in C{ok} and labelled in C{done}; None for a client that did not ask."""
        self._client_outcome: str | None = None
        """Set when the client ended the upload early: the log says so, not "refused"."""
        self._announced = False
        """The factory's observer was told this upload started (it is told of its end too)."""
        self._receiving: ThreadedReceive | None = None
        """The thread receiving the bytes, while it runs (plain TCP, large uploads)."""
        self._receiving_stopped = False

    @property
    def _transport(self) -> IStreamTransport:
        """C{self.transport}, typed as what this protocol uses of it (once connected)."""
        return cast(IStreamTransport, self.transport)

    # -- Twisted's calls -----------------------------------------------------

    def connectionMade(self) -> None:
        self._peer = describe_peer(self._transport.getPeer())
        self._started = self._clock.seconds()
        self.factory.live.add(self)
        refusal = self.factory.admit(self)
        if refusal is not None:
            self.refused(refusal)
            return
        if hasattr(self._transport, "bufferSize"):
            self._transport.bufferSize = READ_SIZE
        self._arm(self.factory.handshake_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.data_received(data)

    def readConnectionLost(self) -> None:
        self._peer_finished = True
        self.end_of_stream()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_receiving()
        self._disarm()
        self.factory.live.discard(self)
        self.factory.release(self)
        self.connection_lost(reason)

    # -- states ----------------------------------------------------------------

    @_machine.state(initial=True)
    def handshake(self) -> None:
        """Reading the name or the FX/1 header block."""

    @_machine.state()
    def starting(self) -> None:
        """The request is parsed; waiting for the storage to take it."""

    @_machine.state()
    def streaming(self) -> None:
        """Storing the file's bytes."""

    @_machine.state()
    def trailer(self) -> None:
        """Size bytes are in; reading the client's C{SHA256:} trailer line."""

    @_machine.state()
    def finishing(self) -> None:
        """All bytes are in; waiting for verify, fsync and rename."""

    @_machine.state()
    def closed(self) -> None:
        """Nothing more to do on this connection."""

    # -- inputs ----------------------------------------------------------------

    @_machine.input()
    def data_received(self, data: bytes) -> None:
        "Bytes from the peer."

    @_machine.input()
    def parsed(self, request: _wire.Request) -> None:
        "A complete handshake arrived."

    @_machine.input()
    def accepted(self, upload: IUpload) -> None:
        "The storage took the request."

    @_machine.input()
    def already_stored(self, upload: IUpload) -> None:
        "The exact file is in place already."

    @_machine.input()
    def refused(self, error: TransferError) -> None:
        "The request, or a byte of the stream, was refused."

    @_machine.input()
    def all_bytes_in(self) -> None:
        "Size bytes have arrived."

    @_machine.input()
    def data_complete(self) -> None:
        "Size bytes have arrived; the trailer follows."

    @_machine.input()
    def trailer_received(self) -> None:
        "The client's SHA-256 trailer arrived."

    @_machine.input()
    def end_of_stream(self) -> None:
        "The peer half-closed or closed cleanly."

    @_machine.input()
    def stored(self, receipt: Receipt) -> None:
        "The file is durable under its final name."

    @_machine.input()
    def timed_out(self) -> None:
        "The handshake took too long, or the stream went idle."

    @_machine.input()
    def connection_lost(self, reason: Failure) -> None:
        "The connection is gone."

    @_machine.input()
    def shutting_down(self) -> None:
        "The service is stopping (SIGTERM): an upload in progress is cut."

    # -- outputs: handshake ----------------------------------------------------

    @_machine.output()
    def _parse_handshake(self, data: bytes) -> None:
        self._buffer += data
        try:
            request, rest = self._parse_buffer()
        except TransferError as error:
            self.refused(error)
            return
        if request is None:
            return
        if rest:
            self._disarm()
            self.refused(TransferError(400, "data arrived before the server's ok"))
            return
        self._path = request.name if isinstance(request, _wire.ClassicRequest) else request.path
        try:
            self.factory.check_token(request)
        except TransferError as error:
            self.refused(error)
            return
        self.parsed(request)

    def _parse_buffer(self) -> tuple[_wire.Request | None, bytes]:
        form = _wire.classify(self._buffer)
        if form is _wire.Form.UNDECIDED:
            if self._prefix_expired:
                return _wire.parse_classic(self._buffer), b""
            if self._prefix_timer is None:
                self._prefix_timer = self._clock.callLater(PREFIX_WAIT, self._prefix_wait_over)
            return None, b""
        if form is _wire.Form.CLASSIC:
            return _wire.parse_classic(self._buffer), b""
        self._classic = False
        return _wire.parse_header_block(self._buffer)

    def _prefix_wait_over(self) -> None:
        self._prefix_expired = True
        self.data_received(b"")

    @_machine.output()
    def _start(self, request: _wire.Request) -> None:
        # The handshake is complete: from here the server is the one working
        # (hashing a large partial can take a while), so its timer stops.
        self._disarm()
        self._buffer = b""
        storage = self.factory.storage
        starting: Deferred[IUpload]
        if isinstance(request, _wire.ClassicRequest):
            starting = maybeDeferred(storage.begin, request.name, None, None, None)
        else:
            self._trailer = request.trailer
            self._digest = choose_digest(request, storage)
            chosen = {} if self._digest in (None, DEFAULT_DIGEST) else {"digest": self._digest}
            starting = maybeDeferred(
                storage.begin,
                request.path,
                request.size,
                request.sha256,
                request.mtime_ns,
                trailer=request.trailer,
                fresh=request.fresh,
                **chosen,
            )
        starting.addCallbacks(self._storage_took, self._storage_refused)

    def _storage_took(self, upload: IUpload) -> None:
        if upload.stored is not None:
            self.already_stored(upload)
        else:
            self.accepted(upload)

    def _storage_refused(self, failure: Failure) -> None:
        error = failure.value
        if not isinstance(error, TransferError):
            log.failure("storage failed to start an upload", failure)
            error = TransferError(500, "internal server error")
        self.refused(error)

    @_machine.output()
    def _send_ok(self, upload: IUpload) -> None:
        self.factory.handshake_done(self)
        self._upload = upload
        self._announced = True
        self.factory.observer.transfer_started(self._protocol, "upload")
        if IConsumer.providedBy(upload):
            # storage that writes in the background pauses us while it catches up
            IConsumer(upload).registerProducer(self._transport, True)
        if self._classic:
            self._transport.write(_wire.CLASSIC_OK)
        else:
            prefix = upload.prefix_sha256 if upload.offset < (upload.expected_size or 0) else None
            line = _wire.encode_ok(upload.offset, prefix, self._trailer, self._digest)
            self._transport.write(line)
        self._arm(self.factory.idle_timeout)
        if upload.expected_size is not None and upload.received >= upload.expected_size:
            self._size_reached()
        elif not self._peer_finished:
            self._receive_in_thread(upload)
        if self._peer_finished:
            self.end_of_stream()  # it half-closed while the storage started

    def _receive_in_thread(self, upload: IUpload) -> None:
        """Hand the rest of a large plain-TCP upload to a L{ThreadedReceive}, when one fits.

        The reactor stops reading the connection until the thread has the
        announced Size bytes (or stops early); the trailer, an early end or
        a reset are then read on the reactor thread as usual.
        """
        reactor = self.factory._threads
        if upload.expected_size is None or reactor is None:
            return
        remaining = upload.expected_size - upload.received
        fd = socket_fd(self.transport)
        if remaining < THREADED_MINIMUM or fd is None or not IDirectUpload.providedBy(upload):
            return
        if not self.factory.take_receive_thread():
            return
        self._transport.pauseProducing()
        sink = IDirectUpload(upload).direct()
        self._receiving = ThreadedReceive(
            reactor,
            fd,
            remaining,
            sink,
            self._received_in_thread,
            self._thread_finished,
            start=upload.received,
        )

    def _received_in_thread(self, received: int) -> None:
        if self._receiving is not None:
            self._rearm(self.factory.idle_timeout)

    def _thread_finished(
        self, received: int, error: BaseException | None, lost: OSError | None
    ) -> None:
        self._receiving = None
        self.factory.give_receive_thread()
        upload = self._accepted
        IDirectUpload(upload).direct_done()
        if self._receiving_stopped:
            return  # the connection was dropped meanwhile: nothing more to do
        if error is not None:
            if not isinstance(error, TransferError):
                log.failure("receiving in a thread", Failure(error))
                error = TransferError(500, "internal server error")
            self.refused(error)
            return
        if lost is not None:
            self._transport.abortConnection()  # reset already: connectionLost follows
            return
        self._rearm(self.factory.idle_timeout)
        self._transport.resumeProducing()  # the trailer, or an early end
        if upload.expected_size is not None and upload.received >= upload.expected_size:
            self._size_reached()

    def _stop_receiving(self) -> None:
        """Stop a receiving thread (it reports once more, then nothing follows)."""
        if self._receiving is not None:
            self._receiving_stopped = True
            self._receiving.stop()

    def _abort_upload(self, keep_partial: bool) -> None:
        """Stop any receiving thread, then abort the upload (closed once the thread is out)."""
        self._stop_receiving()
        self._accepted.abort(keep_partial=keep_partial)

    @_machine.output()
    def _send_ok_and_done(self, upload: IUpload) -> None:
        assert upload.stored is not None
        self._upload = upload
        line = _wire.encode_ok(upload.offset, None, self._trailer, self._digest)
        self._transport.write(line)
        self._reply_done(upload.stored, "already stored as", "already_stored")

    def _size_reached(self) -> None:
        if self._trailer:
            self.data_complete()
        else:
            self.all_bytes_in()

    # -- outputs: streaming ----------------------------------------------------

    @_machine.output()
    def _write(self, data: bytes) -> None:
        upload = self._accepted
        after = b""
        if self._trailer and upload.expected_size is not None:
            wanted = upload.expected_size - upload.received
            data, after = data[:wanted], data[wanted:]
        try:
            if data:
                upload.write(data)
        except TransferError as error:
            self.refused(error)
            return
        self._rearm(self.factory.idle_timeout)
        if upload.expected_size is not None and upload.received == upload.expected_size:
            self._size_reached()
            if after:
                self.data_received(after)

    @_machine.output()
    def _read_trailer(self, data: bytes) -> None:
        self._trailer_line += data
        line, newline, extra = self._trailer_line.partition(b"\n")
        if not newline:
            if len(self._trailer_line) > _wire.MAX_TRAILER:
                self.refused(TransferError(400, "overlong trailer line"))
            return
        if extra:
            self.refused(TransferError(422, "more bytes than Size and the trailer"))
            return
        try:
            self._claimed_digest = _wire.parse_trailer(line, self._digest or DEFAULT_DIGEST)
        except TransferError as error:
            self.refused(error)
            return
        self.trailer_received()

    @_machine.output()
    def _refuse_short(self) -> None:
        self._abort_upload(keep_partial=True)
        self._client_outcome = self._client_ended("client closed")
        field = _wire.trailer_field(self._digest or DEFAULT_DIGEST)
        self._drop_upload(TransferError(422, f"the connection ended before the {field} trailer"))

    @_machine.output()
    def _finish(self) -> None:
        self._disarm()
        self._transport.pauseProducing()
        upload = self._accepted
        if upload.expected_size is not None and upload.received < upload.expected_size:
            # the client half-closed before Size bytes: the storage refuses
            # the short upload (422, the partial kept), which the client caused
            self._client_outcome = self._client_ended("client closed")
        result: Deferred[Receipt] = upload.finish(self._claimed_digest)
        result.addCallbacks(self.stored, self._finish_failed)

    def _finish_failed(self, failure: Failure) -> None:
        error = failure.value if failure.check(TransferError) else None
        if error is None:
            error = TransferError(500, f"could not store the file: {failure.getErrorMessage()}")
        self.refused(error)

    # -- outputs: endings --------------------------------------------------------

    @_machine.output()
    def _report_stored(self, receipt: Receipt) -> None:
        upload = self._accepted
        offset = upload.offset
        if upload.prefix_sha256 is None and offset == upload.expected_size:
            # proved by the trailer: nothing was sent
            self._reply_done(receipt, "already stored as", "already_stored")
        elif offset:
            self._reply_done(receipt, f"resumed at byte {offset}, stored as", "stored")
        else:
            self._reply_done(receipt, "stored as", "stored")

    def _reply_done(self, receipt: Receipt, words: str, outcome: str) -> None:
        if not self._classic:
            label = None if self._digest is None else receipt.algorithm
            line = _wire.encode_done(receipt.size, receipt.digest, receipt.path, label)
            self._transport.write(line)
        self._log(self._received(), f"{words} {receipt.path!r}", outcome, receipt=receipt)
        self._transport.loseConnection()

    @_machine.output()
    def _refuse_request(self, error: TransferError) -> None:
        self._refuse_before_ok(error)

    @_machine.output()
    def _refuse_upload(self, error: TransferError) -> None:
        self._drop_upload(error)

    def _refuse_before_ok(self, error: TransferError) -> None:
        """Before C{ok}: say why, log, and close."""
        self._disarm()
        self._log(0, f"refused: {error.code} {error.reason}", "refused", code=error.code)
        self._say_error(error)

    def _drop_upload(self, error: TransferError) -> None:
        """After C{ok}: drop the upload, say why (the classic form: reset), log, and close."""
        self._disarm()
        # A store that is unavailable (503) is a passing trouble: what it holds
        # stays for a resume.  Anything else drops it (a no-op once finish()
        # kept a short partial).
        self._abort_upload(keep_partial=error.code == 503)
        if self._client_outcome is not None:
            self._log(self._received(), self._client_outcome, "aborted", code=error.code)
        else:
            words = f"refused: {error.code} {error.reason}"
            self._log(self._received(), words, "refused", code=error.code)
        if self._classic:
            # The classic form has no words after "ok": a reset is the only
            # way to tell the client that its file was not stored.
            self._transport.abortConnection()
            return
        self._say_error(error)

    def _say_error(self, error: TransferError) -> None:
        self._transport.write(_wire.encode_error(error))
        self._close_after_last_words()

    def _close_after_last_words(self) -> None:
        """Half-close, then read and discard until the peer closes (or LINGER passes).

        Closing with the peer's bytes unread would reset the connection, and
        a reset can destroy the error line before the peer has read it.
        """
        if close_after_last_words(self._transport, self._peer_finished):
            self._arm(LINGER)

    @_machine.output()
    def _close(self) -> None:
        self._disarm()
        self._transport.loseConnection()

    @_machine.output()
    def _refuse_slow_handshake(self) -> None:
        self._refuse_before_ok(TransferError(408, "handshake timed out"))

    @_machine.output()
    def _refuse_stalled_upload(self) -> None:
        self._abort_upload(keep_partial=True)  # a stalled upload may be resumed
        self._drop_upload(TransferError(408, "transfer timed out"))

    @_machine.output()
    def _keep_partial(self, reason: Failure) -> None:
        self._abort_upload(keep_partial=True)
        # A half-close is end_of_stream: a connection lost mid-stream was reset or dropped.
        self._log(self._received(), self._client_ended("client aborted"), "aborted")

    @_machine.output()
    def _cut(self) -> None:
        """The service stops: keep the bytes for a resume, say so, and drop the connection."""
        self._disarm()
        self._abort_upload(keep_partial=True)
        self._log(self._received(), self._client_ended("cut by shutdown"), "aborted")
        self._transport.abortConnection()

    @_machine.output()
    def _log_vanished(self, reason: Failure) -> None:
        if self._buffer:
            self._log(0, "connection closed during the handshake", "aborted")

    @_machine.output()
    def _refuse_early_data(self, data: bytes) -> None:
        if data:
            self.refused(TransferError(400, "data arrived before the server's ok"))

    @_machine.output()
    def _note_gone(self, reason: Failure) -> None:
        self._log(0, "client aborted while the upload was starting", "aborted")

    @_machine.output()
    def _put_back(self, upload: IUpload) -> None:
        """The storage took a request whose connection has ended: keep any partial."""
        upload.abort(keep_partial=True)

    # -- transitions ---------------------------------------------------------------

    handshake.upon(data_received, enter=handshake, outputs=[_parse_handshake])
    handshake.upon(parsed, enter=starting, outputs=[_start])
    handshake.upon(end_of_stream, enter=closed, outputs=[_close])
    handshake.upon(refused, enter=closed, outputs=[_refuse_request])
    handshake.upon(timed_out, enter=closed, outputs=[_refuse_slow_handshake])
    handshake.upon(connection_lost, enter=closed, outputs=[_log_vanished])
    handshake.upon(shutting_down, enter=handshake, outputs=[])

    # The client sends nothing before "ok" (docs/protocol.md, "FX/1").
    starting.upon(data_received, enter=starting, outputs=[_refuse_early_data])
    starting.upon(end_of_stream, enter=starting, outputs=[])
    starting.upon(accepted, enter=streaming, outputs=[_send_ok])
    starting.upon(already_stored, enter=closed, outputs=[_send_ok_and_done])
    starting.upon(refused, enter=closed, outputs=[_refuse_request])
    starting.upon(timed_out, enter=closed, outputs=[_refuse_slow_handshake])
    starting.upon(connection_lost, enter=closed, outputs=[_note_gone])
    starting.upon(shutting_down, enter=starting, outputs=[])

    streaming.upon(data_received, enter=streaming, outputs=[_write])
    streaming.upon(all_bytes_in, enter=finishing, outputs=[_finish])
    streaming.upon(data_complete, enter=trailer, outputs=[])
    streaming.upon(end_of_stream, enter=finishing, outputs=[_finish])
    streaming.upon(refused, enter=closed, outputs=[_refuse_upload])
    streaming.upon(timed_out, enter=closed, outputs=[_refuse_stalled_upload])
    streaming.upon(connection_lost, enter=closed, outputs=[_keep_partial])
    streaming.upon(shutting_down, enter=closed, outputs=[_cut])

    trailer.upon(data_received, enter=trailer, outputs=[_read_trailer])
    trailer.upon(trailer_received, enter=finishing, outputs=[_finish])
    trailer.upon(end_of_stream, enter=closed, outputs=[_refuse_short])
    trailer.upon(refused, enter=closed, outputs=[_refuse_upload])
    trailer.upon(timed_out, enter=closed, outputs=[_refuse_stalled_upload])
    trailer.upon(connection_lost, enter=closed, outputs=[_keep_partial])
    trailer.upon(shutting_down, enter=closed, outputs=[_cut])

    # Reading is paused while finishing; bytes beyond Size in the final read
    # were already refused by the upload (422).
    finishing.upon(data_received, enter=finishing, outputs=[])
    finishing.upon(end_of_stream, enter=finishing, outputs=[])
    finishing.upon(stored, enter=closed, outputs=[_report_stored])
    finishing.upon(refused, enter=closed, outputs=[_refuse_upload])
    finishing.upon(connection_lost, enter=finishing, outputs=[])
    finishing.upon(shutting_down, enter=finishing, outputs=[])

    closed.upon(accepted, enter=closed, outputs=[_put_back])
    closed.upon(already_stored, enter=closed, outputs=[])
    closed.upon(data_received, enter=closed, outputs=[])
    closed.upon(end_of_stream, enter=closed, outputs=[_close])
    closed.upon(refused, enter=closed, outputs=[])
    closed.upon(timed_out, enter=closed, outputs=[_close])
    closed.upon(connection_lost, enter=closed, outputs=[])
    closed.upon(shutting_down, enter=closed, outputs=[])

    # -- helpers -------------------------------------------------------------------

    def _timeout_fired(self) -> None:
        self._timer = None
        self.timed_out()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self._clock.callLater(seconds, self._timeout_fired)

    def _rearm(self, seconds: float) -> None:
        """Restart the running timer (cheap: no new delayed call)."""
        if self._timer is not None and self._timer.active():
            self._timer.reset(seconds)
        else:
            self._arm(seconds)

    def _disarm(self) -> None:
        for timer in (self._timer, self._prefix_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = None

    @property
    def _accepted(self) -> IUpload:
        """The upload the storage took: there is one from C{streaming} on."""
        assert self._upload is not None
        return self._upload

    def _client_ended(self, how: str) -> str:
        """How an upload ended early, in the client's terms, and what became of its bytes.

        E.g. C{client closed after 40000 of 100000 bytes (kept for resume)}:
        the bytes held (a resumed upload's earlier ones included) of the
        announced Size.
        """
        upload = self._accepted
        held, size = upload.received, upload.expected_size
        if self._trailer and size is not None and held >= size:
            field = _wire.trailer_field(self._digest or DEFAULT_DIGEST)
            where = f"before the {field} trailer"
        elif size is not None:
            where = f"after {held} of {size} bytes"
        else:
            where = f"after {held} bytes"
        kept = "kept for resume" if getattr(upload, "resumable", False) and held else "discarded"
        return f"{how} {where} ({kept})"

    def _received(self) -> int:
        """Bytes of the accepted upload that arrived on this connection."""
        return int(self._accepted.received - self._accepted.offset)

    @property
    def _protocol(self) -> str:
        return "classic" if self._classic else "fx/1"

    def _log(
        self,
        nbytes: int,
        detail: str,
        outcome: str,
        *,
        code: int | None = None,
        receipt: Receipt | None = None,
    ) -> None:
        """The transfer's one record: its log line, and the factory's observer hears it."""
        now = self._clock.seconds()
        upload = self._upload
        record = TransferRecord(
            protocol=self._protocol,
            direction="upload",
            peer=self._peer,
            path=self._path,
            outcome=outcome,
            detail=detail,
            nbytes=nbytes,
            seconds=now - self._started,
            time=now,
            stored_path=receipt.path if receipt is not None else None,
            size=receipt.size if receipt is not None else None,
            sha256=receipt.sha256 if receipt is not None else None,
            blake3=receipt.digest
            if receipt is not None and receipt.algorithm == "blake3"
            else None,
            resumed_offset=upload.offset if upload is not None and self._announced else 0,
            error_code=code,
            accepted=self._announced,
        )
        transfer_ended(self.factory.observer, record)


class ReceiverFactory(Factory):
    """Makes a L{ReceiverProtocol} per connection, all storing into C{storage}.

    @param clock: the reactor's clock (injected for tests).
    @param token: when set, FX/1 uploads must carry it; classic ones are refused.
    @param handshake_timeout: seconds a peer has to finish its handshake.
    @param idle_timeout: seconds the stream may stall before it is dropped.
    @param limits: caps on connections in total, and per address on those
        still in their handshake.
    @param access: which peer addresses may connect.
    @param observer: told when an upload starts and given every
        connection's L{TransferRecord} (after its log line).
    """

    protocol = ReceiverProtocol

    def __init__(
        self,
        storage: IStorage,
        *,
        clock: IReactorTime,
        token: str | None = None,
        handshake_timeout: float = 30.0,
        idle_timeout: float = 300.0,
        limits: ConnectionLimits | None = None,
        access: AccessPolicy | None = None,
        observer: ITransferObserver | None = None,
    ) -> None:
        self.storage = storage
        self.observer: ITransferObserver = observer if observer is not None else Observers()
        self.clock = clock
        self.token = token
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.limits = limits if limits is not None else ConnectionLimits()
        self.access = access if access is not None else AccessPolicy()
        self.live: set[ReceiverProtocol] = set()
        """The connections open now."""
        # The reactor, when it runs threads: large plain-TCP uploads are then
        # received in threads of their own (ThreadedReceive); None on a bare clock.
        self._threads: IReactorFromThreads | None = (
            cast(IReactorFromThreads, clock) if IReactorThreads.providedBy(clock) else None
        )
        self._receive_threads = 0

    def take_receive_thread(self) -> bool:
        """Count a receiving thread in, unless L{RECEIVE_THREADS} run already."""
        if self._receive_threads >= RECEIVE_THREADS:
            return False
        self._receive_threads += 1
        return True

    def give_receive_thread(self) -> None:
        """Count a receiving thread out."""
        self._receive_threads -= 1

    def buildProtocol(self, addr: IAddress | None) -> ReceiverProtocol:
        return ReceiverProtocol(self)

    def admit(self, connection: ReceiverProtocol) -> TransferError | None:
        """Count a new connection in, or say why it may not stay."""
        transport = connection.transport
        assert transport is not None
        peer = transport.getPeer()
        host = getattr(peer, "host", None)
        if not self.access.allows(host):
            return TransferError(403, "your address is not allowed")
        return self.limits.enter(connection, host)

    def handshake_done(self, connection: ReceiverProtocol) -> None:
        """The connection's upload was accepted: it no longer counts against its address."""
        self.limits.handshake_done(connection)

    def release(self, connection: ReceiverProtocol) -> None:
        """Count a closed connection out."""
        self.limits.leave(connection)

    def shut_down(self) -> None:
        """The service stops: cut every upload in progress (each logs one line).

        Twisted leaves open connections alone when the reactor stops, so an
        upload cut by a shutdown would end without a word; its bytes are kept
        for a resume, as after any lost connection.
        """
        for connection in list(self.live):
            connection.shutting_down()

    def check_token(self, request: _wire.Request) -> None:
        """Refuse with 401 unless the request carries the shared secret."""
        if self.token is None:
            return
        if isinstance(request, _wire.ClassicRequest):
            raise TransferError(401, "this server requires a token: use the FX/1 form")
        if request.token is None or not _constant_time_equal(request.token, self.token):
            raise TransferError(401, "bad or missing token")


def choose_digest(request: _wire.PutRequest, storage: IStorage) -> DigestName | None:
    """The receipt digest for C{request}: None when the client did not ask (C{Digest:}).

    The asked-for digest when the storage computes it (C{IStorage.digests})
    and the client announced no SHA256 up front (that digest is SHA-256);
    otherwise the server declines and answers with SHA-256, which every
    client can check (docs/protocol.md, "Receipt digests").
    """
    if request.digest is None:
        return None
    asked = digest_name(request.digest)
    offered = getattr(storage, "digests", (DEFAULT_DIGEST,))
    if asked is None or asked not in offered or request.sha256 is not None:
        return DEFAULT_DIGEST
    return asked


def _constant_time_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
