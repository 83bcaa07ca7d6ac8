"""The TCP handshake on the wire (PROTOCOL.md section 1): parse and encode.

Pure code: bytes in, values out.  No transport, no disk, no reactor.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import Enum

import attrs

from filexfer._errors import TransferError
from filexfer._names import validate_name, validate_path

FX_MAGIC = b"FX/"
MAX_HEADER_BLOCK = 8192
SEED_OK = b"ok"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]+")
_MTIME = re.compile(r"[0-9]+(\.[0-9]+)?")


class Form(Enum):
    """Which handshake a connection's first bytes announce."""

    SEED = "seed"
    EXTENDED = "extended"
    UNDECIDED = "undecided"


def classify(first: bytes) -> Form:
    """Tell the classic form from FX/1 by the first bytes received.

    A strict prefix of C{FX/} cannot be told yet (L{Form.UNDECIDED}); the
    receiver waits briefly for more before taking it as a classic name.
    """
    if first.startswith(FX_MAGIC):
        return Form.EXTENDED
    if FX_MAGIC.startswith(first):
        return Form.UNDECIDED
    return Form.SEED


@attrs.frozen
class SeedRequest:
    """The classic form: a bare file name."""

    name: str


@attrs.frozen
class PutRequest:
    """An FX/1 C{PUT} and its headers."""

    path: str
    size: int | None = None
    sha256: str | None = None
    mtime_ns: int | None = None
    token: str | None = None


Request = SeedRequest | PutRequest


def parse_seed(chunk: bytes) -> SeedRequest:
    """Take a classic client's first chunk as the whole file name.

    One trailing newline (as C{echo name | nc} sends) is dropped.
    @raise TransferError: 400 for a name that breaks the rules.
    """
    if chunk.endswith(b"\r\n"):
        chunk = chunk[:-2]
    elif chunk.endswith(b"\n"):
        chunk = chunk[:-1]
    return SeedRequest(validate_name(chunk))


def parse_header_block(buffer: bytes) -> tuple[PutRequest | None, bytes]:
    """Parse an FX/1 header block from the start of C{buffer}.

    @return: C{(request, rest)} once the blank line has arrived, where
        C{rest} is whatever followed it; C{(None, buffer)} while more is needed.
    @raise TransferError: 400 for a malformed or oversized block.
    """
    lines: list[bytes] = []
    start = 0
    while True:
        end = buffer.find(b"\n", start, MAX_HEADER_BLOCK)
        if end < 0:
            if len(buffer) >= MAX_HEADER_BLOCK:
                raise TransferError(400, f"header block larger than {MAX_HEADER_BLOCK} bytes")
            return None, buffer
        line = buffer[start:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        start = end + 1
        if not line:
            break
        lines.append(line)
    if not lines:
        raise TransferError(400, "empty FX/1 handshake")
    return _parse_request(lines), buffer[start:]


def _text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise TransferError(400, "handshake is not valid UTF-8") from None


def _parse_request(lines: list[bytes]) -> PutRequest:
    version, _, rest = lines[0].partition(b" ")
    if version != b"FX/1":
        raise TransferError(400, f"unsupported protocol version {_text(version)!r}")
    method, _, raw_path = rest.partition(b" ")
    if method != b"PUT":
        raise TransferError(400, f"unsupported method {_text(method)!r}")
    path = validate_path(raw_path)
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = _text(line).partition(":")
        if not colon or not name.strip():
            raise TransferError(400, "malformed header line")
        key = name.strip().lower()
        if key in fields:
            raise TransferError(400, f"header {name.strip()!r} given twice")
        fields[key] = value.strip()
    return PutRequest(
        path=path,
        size=_parse_size(fields.get("size")),
        sha256=_parse_sha256(fields.get("sha256")),
        mtime_ns=_parse_mtime(fields.get("mtime")),
        token=fields.get("token"),
    )


def _parse_size(value: str | None) -> int | None:
    if value is None:
        return None
    if not _DIGITS.fullmatch(value):
        raise TransferError(400, "Size must be decimal digits")
    return int(value)


def _parse_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.lower()
    if not _SHA256.fullmatch(value):
        raise TransferError(400, "SHA256 must be 64 hex digits")
    return value


def _parse_mtime(value: str | None) -> int | None:
    if value is None:
        return None
    if not _MTIME.fullmatch(value):
        raise TransferError(400, "Mtime must be seconds since the epoch")
    try:
        return int(Decimal(value) * 10**9)
    except InvalidOperation:  # pragma: no cover - the pattern already excludes it
        raise TransferError(400, "Mtime must be seconds since the epoch") from None


def format_mtime(mtime_ns: int) -> str:
    """Nanoseconds since the epoch as the decimal seconds the Mtime header carries."""
    seconds, fraction = divmod(mtime_ns, 10**9)
    return f"{seconds}.{fraction:09d}".rstrip("0").rstrip(".")


def encode_put(request: PutRequest) -> bytes:
    """The client's FX/1 handshake for C{request}."""
    lines = [f"FX/1 PUT {request.path}"]
    if request.size is not None:
        lines.append(f"Size: {request.size}")
    if request.sha256 is not None:
        lines.append(f"SHA256: {request.sha256}")
    if request.mtime_ns is not None:
        lines.append(f"Mtime: {format_mtime(request.mtime_ns)}")
    if request.token is not None:
        lines.append(f"Token: {request.token}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


# -- the server's replies ----------------------------------------------------


@attrs.frozen
class Ok:
    """C{ok <offset>}: send the file from C{offset}."""

    offset: int


@attrs.frozen
class Done:
    """C{done <size> <sha256> <path>}: the file is durable under C{path}."""

    size: int
    sha256: str
    path: str


@attrs.frozen
class Refusal:
    """C{error <code> <reason>}."""

    code: int
    reason: str


Reply = Ok | Done | Refusal


def encode_ok(offset: int) -> bytes:
    """The FX/1 go-ahead."""
    return b"ok %d\n" % offset


def encode_done(size: int, sha256: str, path: str) -> bytes:
    """The FX/1 receipt."""
    return f"done {size} {sha256} {path}\n".encode()


def encode_error(error: TransferError) -> bytes:
    """A refusal line, for either form."""
    return f"error {error.code} {error.reason}\n".encode()


def parse_reply(line: bytes) -> Reply:
    """Parse one line the server sent (without its newline).

    @raise ValueError: for anything that is not a reply.
    """
    text = line.decode("utf-8", "replace").rstrip("\r")
    word, _, rest = text.partition(" ")
    if word == "ok" and _DIGITS.fullmatch(rest):
        return Ok(int(rest))
    if word == "done":
        size, _, rest = rest.partition(" ")
        digest, _, path = rest.partition(" ")
        if _DIGITS.fullmatch(size) and _SHA256.fullmatch(digest) and path:
            return Done(int(size), digest, path)
    if word == "error":
        code, _, reason = rest.partition(" ")
        if _DIGITS.fullmatch(code):
            return Refusal(int(code), reason)
    raise ValueError(f"unexpected reply from server: {text[:80]!r}")


# -- the retry hint in a 503's reason -------------------------------------------

_RETRY_HINT = re.compile(r"(?:^|;)\s*retry in ([0-9]{1,6}(?:\.[0-9]{1,3})?) s\s*$")


def encode_retry_hint(reason: str, seconds: float) -> str:
    """C{reason} with the retry hint a busy server appends: C{"<reason>; retry in 2 s"}.

    The hint is part of the reason text, so a client that knows nothing of it
    still shows a sensible line.
    """
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{reason}; retry in {text} s"


def parse_retry_hint(reason: str) -> float | None:
    """The seconds a refusal's reason asks the client to wait, or None when it names none."""
    match = _RETRY_HINT.search(reason)
    return float(match.group(1)) if match else None
