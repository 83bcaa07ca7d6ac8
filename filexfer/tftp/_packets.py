"""TFTP packets and option negotiation: pure functions, no I/O.

RFC 1350 (the protocol), RFC 2347 (option negotiation, OACK), RFC 2348
(C{blksize}), RFC 2349 (C{timeout}, C{tsize}) and RFC 7440 (C{windowsize}).

L{decode} turns a datagram into one of L{ReadRequest}, L{WriteRequest},
L{Data}, L{Ack}, L{Error} or L{OptionAck}, and raises L{MalformedPacket}
(and nothing else) for anything it cannot parse.  L{encode} is its inverse.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any, Literal

import attrs

# -- opcodes and error codes ------------------------------------------------

OP_RRQ = 1
OP_WRQ = 2
OP_DATA = 3
OP_ACK = 4
OP_ERROR = 5
OP_OACK = 6


class ErrorCode(IntEnum):
    """The error codes of RFC 1350 and RFC 2347."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


NOT_DEFINED = ErrorCode.NOT_DEFINED
FILE_NOT_FOUND = ErrorCode.FILE_NOT_FOUND
ACCESS_VIOLATION = ErrorCode.ACCESS_VIOLATION
DISK_FULL = ErrorCode.DISK_FULL
ILLEGAL_OPERATION = ErrorCode.ILLEGAL_OPERATION
UNKNOWN_TID = ErrorCode.UNKNOWN_TID
FILE_EXISTS = ErrorCode.FILE_EXISTS
NO_SUCH_USER = ErrorCode.NO_SUCH_USER
OPTION_REFUSED = ErrorCode.OPTION_REFUSED

_STORAGE_TO_TFTP = {
    404: FILE_NOT_FOUND,
    400: ACCESS_VIOLATION,
    401: ACCESS_VIOLATION,
    403: ACCESS_VIOLATION,
    413: DISK_FULL,
    507: DISK_FULL,
    409: FILE_EXISTS,
}


def error_code_for(storage_code: int) -> ErrorCode:
    """Map a L{filexfer._errors.TransferError} code to a TFTP error code.

    404 -> 1, 400/401/403 -> 2, 413/507 -> 3, 409 -> 6, anything else -> 0.
    """
    return _STORAGE_TO_TFTP.get(storage_code, NOT_DEFINED)


# -- limits -------------------------------------------------------------------

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
MIN_TIMEOUT = 1
MAX_TIMEOUT = 255
MIN_WINDOWSIZE = 1
MAX_WINDOWSIZE = 65535
MODES = ("octet", "netascii")
"""The transfer modes served (RFC 1350's "mail" is not)."""
MAX_OPTION_DIGITS = 20
"""Digits an option value may have (a 64-bit tsize needs 20); longer is malformed."""
MAX_ERROR_MESSAGE = 511
"""Bytes of an ERROR message, so that the packet fits in 516 bytes (RFC 1350)."""


class MalformedPacket(ValueError):
    """A datagram that is not a TFTP packet: truncated, garbage, unknown opcode."""


# -- packets ------------------------------------------------------------------

Options = tuple[tuple[str, str], ...]
"""Options in the order given: (lower-case name, value) pairs."""


def _options(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> Options:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((name.lower(), val) for name, val in items)


@attrs.frozen
class ReadRequest:
    """RRQ: the client wants to read C{filename}."""

    filename: bytes
    mode: str = "octet"
    options: Options = attrs.field(default=(), converter=_options)


@attrs.frozen
class WriteRequest:
    """WRQ: the client wants to write C{filename}."""

    filename: bytes
    mode: str = "octet"
    options: Options = attrs.field(default=(), converter=_options)


@attrs.frozen
class Data:
    """DATA: block C{block} (0-65535) carrying C{payload}."""

    block: int
    payload: bytes


@attrs.frozen
class Ack:
    """ACK of block C{block} (0-65535)."""

    block: int


def _one_line(message: str) -> str:
    """C{message} as one line: NULs, line breaks and runs of white space become one space."""
    return " ".join(message.replace("\0", " ").split())


@attrs.frozen
class Error:
    """ERROR: C{code} and a one-line C{message} (made one line when built)."""

    code: int
    message: str = attrs.field(converter=_one_line)


@attrs.frozen
class OptionAck:
    """OACK: the options the server accepted, with the values it chose."""

    options: Options = attrs.field(default=(), converter=_options)


Packet = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck

_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")


def fast_block(datagram: Any, addr: Any, peer: tuple[str, int] | None, opcode: int) -> int:
    """The block number of a C{opcode} packet (DATA or ACK) from C{peer}, else -1.

    The hot path of every transfer: it reads the header without L{decode}.
    C{datagram} may be a memoryview, C{addr} anything indexable as (host, port).
    """
    if (
        peer is not None
        and addr[1] == peer[1]
        and addr[0] == peer[0]
        and len(datagram) >= 4
        and datagram[1] == opcode
        and datagram[0] == 0
    ):
        return (datagram[2] << 8) | datagram[3]
    return -1


def encode_data(block: int, payload: bytes) -> bytes:
    """The datagram for DATA C{block} (taken modulo 65536)."""
    return _HEADER.pack(OP_DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    """The datagram for ACK C{block} (taken modulo 65536)."""
    return _HEADER.pack(OP_ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    """The datagram for ERROR C{code} with C{message}: the one ERROR encoder.

    The message is made one line (NULs removed) and cut (at a character
    boundary) to L{MAX_ERROR_MESSAGE} bytes: clients read with 512-byte
    buffers.  C{encode(Error(code, message))} gives the same datagram.
    """
    data = _one_line(message).encode("utf-8")[:MAX_ERROR_MESSAGE]
    data = data.decode("utf-8", "ignore").encode("utf-8")
    return _HEADER.pack(OP_ERROR, code & 0xFFFF) + data + b"\0"


def _encode_options(options: Options) -> bytes:
    return b"".join(
        name.encode("latin-1") + b"\0" + value.encode("latin-1") + b"\0" for name, value in options
    )


def encode(packet: Packet) -> bytes:
    """Serialise C{packet} to a datagram."""
    if isinstance(packet, Data):
        return encode_data(packet.block, packet.payload)
    if isinstance(packet, Ack):
        return encode_ack(packet.block)
    if isinstance(packet, Error):
        return encode_error(packet.code, packet.message)
    if isinstance(packet, OptionAck):
        return _OPCODE.pack(OP_OACK) + _encode_options(packet.options)
    opcode = OP_RRQ if isinstance(packet, ReadRequest) else OP_WRQ
    return (
        _OPCODE.pack(opcode)
        + packet.filename
        + b"\0"
        + packet.mode.encode("ascii")
        + b"\0"
        + _encode_options(packet.options)
    )


def _decode_options(fields: Sequence[bytes]) -> Options:
    # An odd trailing field (a name without a value) is ignored, leniently.
    return tuple(
        (fields[i].lower().decode("latin-1"), fields[i + 1].decode("latin-1"))
        for i in range(0, len(fields) - 1, 2)
    )


def _strings(body: bytes) -> list[bytes]:
    """NUL-terminated strings; the last terminator may be missing."""
    fields = body.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    return fields


def _request_fields(body: bytes) -> tuple[bytes, str, Options]:
    """The file name, mode (lower case) and options of an RRQ or WRQ body.

    As tftpd-hpa does: the file name must end with a NUL and must not be
    empty, and the mode must be there, but the mode's own NUL (and the last
    option value's) may be missing, at the end of the datagram.

    @raise MalformedPacket: with a message fit for the ERROR 4 a server
        answers with.
    """
    if b"\0" not in body:
        raise MalformedPacket("the request has no NUL after the file name")
    filename, rest = body.split(b"\0", 1)
    if not filename:
        raise MalformedPacket("the request has an empty file name")
    mode, _, rest = rest.partition(b"\0")
    if not mode:
        raise MalformedPacket("the request has no mode")
    try:
        mode_text = mode.decode("ascii").lower()
    except UnicodeDecodeError:
        raise MalformedPacket("the request's mode is not ASCII") from None
    return filename, mode_text, _decode_options(_strings(rest))


def decode(datagram: bytes) -> Packet:
    """Parse one datagram.

    @raise MalformedPacket: when the datagram is truncated, garbled or has
        an unknown opcode; for an RRQ or WRQ its message says what is wrong
        (see L{_request_fields}).
    """
    if len(datagram) < 2:
        raise MalformedPacket("datagram shorter than an opcode")
    opcode = (datagram[0] << 8) | datagram[1]
    if opcode == OP_DATA:
        if len(datagram) < 4:
            raise MalformedPacket("DATA without a block number")
        return Data((datagram[2] << 8) | datagram[3], bytes(datagram[4:]))
    if opcode == OP_ACK:
        if len(datagram) < 4:
            raise MalformedPacket("ACK without a block number")
        return Ack((datagram[2] << 8) | datagram[3])
    if opcode == OP_ERROR:
        if len(datagram) < 4:
            raise MalformedPacket("ERROR without a code")
        message = bytes(datagram[4:]).split(b"\0", 1)[0]
        return Error((datagram[2] << 8) | datagram[3], message.decode("utf-8", "replace"))
    if opcode == OP_OACK:
        return OptionAck(_decode_options(_strings(bytes(datagram[2:]))))
    if opcode in (OP_RRQ, OP_WRQ):
        filename, mode_text, options = _request_fields(bytes(datagram[2:]))
        if opcode == OP_RRQ:
            return ReadRequest(filename, mode_text, options)
        return WriteRequest(filename, mode_text, options)
    raise MalformedPacket(f"unknown opcode {opcode}")


# -- option negotiation ---------------------------------------------------------


@attrs.frozen
class ServerCaps:
    """What a server is willing to negotiate."""

    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64
    allow_timeout: bool = True
    allow_tsize: bool = True
    refused: frozenset[str] = frozenset()
    """Options never acknowledged, whatever their value (tftpd-hpa C{--refuse})."""


@attrs.frozen
class Negotiated:
    """The transfer parameters that result from negotiation.

    @ivar options: the accepted options, as they go in the OACK (empty: no
        OACK; the transfer proceeds as plain RFC 1350).
    @ivar tsize: the transfer size the peer announced (WRQ; None for
        C{tsize 0}, "unknown") or the size we report (RRQ), or None.
    @ivar timeout: the negotiated retransmission timeout in seconds, or None.
    """

    options: Options = ()
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: int | None = None
    tsize: int | None = None
    refused: tuple[str, ...] = ()
    """Requested options the server's C{refused} caps kept out of the OACK."""


def _integer(text: str) -> int | None:
    """A peer's option value as a number, or None when it is not 1 to 20 ASCII digits.

    The length is checked before int() sees the text: past 4,300 digits
    int() raises, and no option needs more than 20.
    """
    text = text.strip()
    if not 0 < len(text) <= MAX_OPTION_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _shown(raw: str) -> str:
    """A peer's value, cut short enough to quote in one line."""
    return repr(raw) if len(raw) <= 24 else f"{raw[:20]!r}... ({len(raw)} characters)"


def negotiate(
    requested: Options | Mapping[str, str],
    caps: ServerCaps,
    *,
    kind: Literal["read", "write"],
    file_size: int | None = None,
    netascii: bool = False,
) -> Negotiated:
    """Decide which requested options a server accepts, and their values.

    Unknown options and malformed or out-of-range values (anything but 1 to
    L{MAX_OPTION_DIGITS} ASCII digits is malformed) are ignored, as RFC 2347
    allows: the server simply does not acknowledge them.
    C{blksize} and C{windowsize} above the server's caps are lowered to the
    caps; C{timeout} is accepted exactly or not at all; C{tsize} on a read is
    answered with C{file_size} (ignored when that is None, e.g. in netascii
    mode), on a write it is echoed; a write's C{tsize 0} means the size is
    unknown (curl sends it for C{-T -}; tftpd-hpa stores such uploads), so
    L{Negotiated.tsize} is None then; a C{netascii} write's C{tsize} is not
    acknowledged (it counts bytes on the wire, not the file's, so the server
    could not hold the upload to it: as a netascii read offers none).  The
    first occurrence of a repeated option counts.  Options named in
    C{caps.refused} are never acknowledged (the transfer goes on with their
    RFC 1350 defaults) and are listed in the result's C{refused}.
    """
    accepted: dict[str, str] = {}
    refused: list[str] = []
    blksize = DEFAULT_BLKSIZE
    windowsize = 1
    timeout: int | None = None
    tsize: int | None = None
    for name, raw in _options(requested):
        if name in accepted or name in refused:
            continue
        if name in caps.refused:
            refused.append(name)
            continue
        value = _integer(raw)
        if value is None:
            continue
        if name == "blksize" and value >= MIN_BLKSIZE:
            blksize = min(value, MAX_BLKSIZE, caps.max_blksize)
            accepted[name] = str(blksize)
        elif name == "windowsize" and MIN_WINDOWSIZE <= value <= MAX_WINDOWSIZE:
            windowsize = min(value, caps.max_windowsize)
            accepted[name] = str(windowsize)
        elif name == "timeout" and caps.allow_timeout and MIN_TIMEOUT <= value <= MAX_TIMEOUT:
            timeout = value
            accepted[name] = str(value)
        elif name == "tsize" and caps.allow_tsize:
            if kind == "write" and netascii:
                continue
            if kind == "write":
                # 0 is "size unknown" (curl -T - sends it); echoed, as tftpd-hpa does.
                tsize = value or None
                accepted[name] = str(value)
            elif file_size is not None:
                tsize = file_size
                accepted[name] = str(file_size)
    return Negotiated(tuple(accepted.items()), blksize, windowsize, timeout, tsize, tuple(refused))


class OptionRefused(ValueError):
    """The server's OACK broke RFC 2347: an unrequested option or a bad value."""


def check_oack(requested: Mapping[str, str], answered: Options) -> Negotiated:
    """Validate a server's OACK against what a client asked for.

    @raise OptionRefused: for an option that was not requested, a malformed
        value (anything but 1 to L{MAX_OPTION_DIGITS} ASCII digits), a
        C{blksize} or C{windowsize} larger than requested or out of range, or
        a C{timeout} different from the one requested.  Nothing else.
    """
    asked = {name.lower(): value for name, value in requested.items()}
    blksize = DEFAULT_BLKSIZE
    windowsize = 1
    timeout: int | None = None
    tsize: int | None = None
    for name, raw in answered:
        if name not in asked:
            raise OptionRefused(f"server acknowledged option {_shown(name)} that was not requested")
        value = _integer(raw)
        if value is None:
            raise OptionRefused(f"server answered {name}={_shown(raw)}, not a number")
        if name == "blksize":
            if not MIN_BLKSIZE <= value <= int(asked[name]):
                raise OptionRefused(f"server answered blksize {value}, asked {asked[name]}")
            blksize = value
        elif name == "windowsize":
            if not MIN_WINDOWSIZE <= value <= int(asked[name]):
                raise OptionRefused(f"server answered windowsize {value}, asked {asked[name]}")
            windowsize = value
        elif name == "timeout":
            if value != int(asked[name]):
                raise OptionRefused(f"server answered timeout {value}, asked {asked[name]}")
            timeout = value
        elif name == "tsize":
            tsize = value
    return Negotiated(answered, blksize, windowsize, timeout, tsize)
