"""The TCP handshake on the wire (docs/protocol.md, "TCP"): parse and encode.

Pure code: bytes in, values out.  No transport, no disk, no reactor.
"""

from __future__ import annotations

import re
from enum import Enum

import attrs

from filexfer._errors import TransferError
from filexfer._hashing import DEFAULT_DIGEST, DigestName, digest_name
from filexfer._mtime import NS_MAX, NS_MIN
from filexfer._names import validate_name, validate_path
from filexfer._receipt import Receipt

FX_MAGIC = b"FX/"
MAX_HEADER_BLOCK = 8192
CLASSIC_OK = b"ok"

MAX_SIZE_DIGITS = 20
"""Digits a Size (or an offset or size in a reply) may have: 2**64 has 20."""

MAX_MTIME_DIGITS = 20
"""Digits before the point in an Mtime (the int64 range needs 10)."""

MAX_MTIME_FRACTION = 64
"""Digits after the point in an Mtime; those after the ninth are dropped."""

# Every number read from a peer is matched by a pattern, and its digits are
# counted, before int() sees it: ASCII digits only (int() would also take
# other scripts' digits, "_" and spaces), never more than int() converts
# cheaply (past 4,300 digits it raises ValueError).
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX256 = _SHA256
"""Every receipt digest is 256 bits: 64 lower-case hex digits."""
_SIZE = re.compile(rf"[0-9]{{1,{MAX_SIZE_DIGITS}}}")
_CODE = re.compile(r"[0-9]{3}")
_MTIME = re.compile(r"(?P<sign>[+-]?)(?P<seconds>[0-9]+)(?:\.(?P<fraction>[0-9]+))?")


class Form(Enum):
    """Which handshake a connection's first bytes announce."""

    CLASSIC = "classic"
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
    return Form.CLASSIC


@attrs.frozen
class ClassicRequest:
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
    trailer: bool = False
    """C{Trailer: SHA256}: the client sends its whole-file SHA-256 after the data."""
    fresh: bool = False
    """C{Resume: no}: the server ignores held bytes and stored candidates."""
    digest: str | None = None
    """C{Digest: <name>}: the receipt digest the client asks for (lower case;
    the server may decline a name it does not know or use, and answers SHA-256)."""


Request = ClassicRequest | PutRequest

TRAILER_FIELD = "SHA256"
MAX_TRAILER = 128
"""Longest trailer line accepted, in bytes (C{SHA256: <64 hex>} needs 73)."""


def parse_classic(chunk: bytes) -> ClassicRequest:
    """Take a classic client's first chunk as the whole file name.

    One trailing newline (as C{echo name | nc} sends) is dropped.
    @raise TransferError: 400 for a name that breaks the rules.
    """
    if chunk.endswith(b"\r\n"):
        chunk = chunk[:-2]
    elif chunk.endswith(b"\n"):
        chunk = chunk[:-1]
    return ClassicRequest(validate_name(chunk))


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
    size = _parse_size(fields.get("size"))
    trailer = _parse_trailer_header(fields.get("trailer"))
    if trailer and size is None:
        raise TransferError(400, "Trailer needs Size (the trailer follows Size bytes)")
    digest = _parse_digest_header(fields.get("digest"))
    if digest is not None and not trailer:
        raise TransferError(400, "Digest needs Trailer (the reply names the digest in its ok)")
    return PutRequest(
        path=path,
        size=size,
        sha256=_parse_sha256(fields.get("sha256")),
        mtime_ns=_parse_mtime(fields.get("mtime")),
        token=fields.get("token"),
        trailer=trailer,
        fresh=_parse_resume(fields.get("resume")),
        digest=digest,
    )


def _parse_digest_header(value: str | None) -> str | None:
    """C{Digest: <name>}: one token, in lower case even when unknown (the server declines it)."""
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z0-9-]{1,32}", value):
        raise TransferError(400, "Digest must name one digest, e.g. BLAKE3")
    return value.lower()


def _parse_trailer_header(value: str | None) -> bool:
    if value is None:
        return False
    if value.upper() != TRAILER_FIELD:
        raise TransferError(400, "Trailer must be SHA256")
    return True


def _parse_resume(value: str | None) -> bool:
    """C{Resume: no} asks for a fresh upload; C{yes} (the default) allows resume."""
    if value is None or value.lower() == "yes":
        return False
    if value.lower() == "no":
        return True
    raise TransferError(400, "Resume must be yes or no")


def trailer_field(digest: DigestName = DEFAULT_DIGEST) -> str:
    """The trailer line's name for C{digest}: C{SHA256}, C{BLAKE3} (the name in capitals)."""
    return digest.upper()


def parse_trailer(line: bytes, digest: DigestName = DEFAULT_DIGEST) -> str:
    """Parse the trailer line C{SHA256: <64 hex>} (C{BLAKE3: <64 hex>} when C{digest}
    is BLAKE3) without its newline.

    @return: the sender's digest of its whole file, lower-case hex.
    @raise TransferError: 400 for anything else (another digest's line too).
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    # bytes that are not text are no trailer line either: say what was expected
    name, colon, value = line.decode("ascii", "replace").partition(":")
    hexdigest = _parse_hex256(value.strip()) if colon else None
    field = trailer_field(digest)
    if name.strip().upper() != field or hexdigest is None:
        raise TransferError(400, f"expected the trailer line '{field}: <64 hex digits>'")
    return hexdigest


def encode_trailer(hexdigest: str, digest: DigestName = DEFAULT_DIGEST) -> bytes:
    """The client's trailer: its whole-file digest after the data (C{SHA256: <hex>})."""
    return f"{trailer_field(digest)}: {hexdigest}\n".encode()


def _parse_size(value: str | None) -> int | None:
    if value is None:
        return None
    if not _SIZE.fullmatch(value):
        raise TransferError(400, f"Size must be 1 to {MAX_SIZE_DIGITS} decimal digits")
    return int(value)


def _parse_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.lower()
    if not _SHA256.fullmatch(value):
        raise TransferError(400, "SHA256 must be 64 hex digits")
    return value


def _parse_hex256(value: str) -> str | None:
    value = value.lower()
    return value if _HEX256.fullmatch(value) else None


def _parse_mtime(value: str | None) -> int | None:
    """Signed decimal seconds -> nanoseconds, within L{NS_MIN}..L{NS_MAX}.

    Fraction digits after the ninth are dropped (truncation toward zero):
    C{-0.0000000019} is -1 ns.  The digit counts are checked before int()
    sees them.
    """
    if value is None:
        return None
    match = _MTIME.fullmatch(value)
    if match is None:
        raise TransferError(
            400, "Mtime must be decimal seconds since the epoch, e.g. 1700000000.25 or -1.5"
        )
    seconds, fraction = match["seconds"], match["fraction"] or ""
    if len(fraction) > MAX_MTIME_FRACTION:
        raise TransferError(400, f"Mtime has more than {MAX_MTIME_FRACTION} digits after the point")
    if len(seconds) > MAX_MTIME_DIGITS:
        raise _mtime_outside(value)
    magnitude = int(seconds) * 10**9 + int(fraction[:9].ljust(9, "0"))
    mtime_ns = -magnitude if match["sign"] == "-" else magnitude
    if not NS_MIN <= mtime_ns <= NS_MAX:
        raise _mtime_outside(value)
    return mtime_ns


def _mtime_outside(value: str) -> TransferError:
    shown = value if len(value) <= 32 else f"{value[:24]}... ({len(value)} characters)"
    return TransferError(
        400,
        f"Mtime {shown} is outside the times a file can have "
        f"({format_mtime(NS_MIN)} to {format_mtime(NS_MAX)} seconds)",
    )


def format_mtime(mtime_ns: int) -> str:
    """Nanoseconds since the epoch as the decimal seconds the Mtime header carries.

    Sign and magnitude, as people write it: -1 ns is C{-0.000000001}.
    """
    seconds, fraction = divmod(abs(mtime_ns), 10**9)
    text = f"{seconds}.{fraction:09d}".rstrip("0").rstrip(".")
    return f"-{text}" if mtime_ns < 0 else text


def encode_put(request: PutRequest) -> bytes:
    """The client's FX/1 handshake for C{request}.

    The block is parsed back before it is returned: a path or token that
    would read differently on the server (a newline that starts a header
    of its own, a trailing CR it would drop, a control character, spaces
    around a token) is never sent.

    @raise ValueError: C{request} cannot be sent as it is; the message says why.
    """
    token = request.token
    if token is not None and (not token or token != token.strip() or "\n" in token):
        raise ValueError("a token must be one line of text, without spaces at its ends")
    try:
        validate_path(request.path)
        block = _encode_put(request)
        parsed, rest = parse_header_block(block)
    except TransferError as error:
        raise ValueError(error.reason) from None
    if parsed != request or rest:
        raise ValueError("the request would not read back as it was sent")
    return block


def _encode_put(request: PutRequest) -> bytes:
    lines = [f"FX/1 PUT {request.path}"]
    if request.size is not None:
        lines.append(f"Size: {request.size}")
    if request.sha256 is not None:
        lines.append(f"SHA256: {request.sha256}")
    if request.mtime_ns is not None:
        lines.append(f"Mtime: {format_mtime(request.mtime_ns)}")
    if request.token is not None:
        lines.append(f"Token: {request.token}")
    if request.trailer:
        lines.append(f"Trailer: {TRAILER_FIELD}")
    if request.fresh:
        lines.append("Resume: no")
    if request.digest is not None:
        lines.append(f"Digest: {request.digest.upper()}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


# -- the server's replies ----------------------------------------------------


@attrs.frozen
class Ok:
    """C{ok <offset>}: send the file from C{offset}.

    To a client that announced C{Trailer}, the server answers
    C{ok <offset> <prefix>}: C{prefix} is the SHA-256 of the bytes
    [0, offset) it holds, for the client to check against its own file, or
    C{-} (L{prefix_sha256} None) when the held bytes are a stored file that
    the client proves with its trailer instead.
    """

    offset: int
    prefix_sha256: str | None = None
    """The prefix's digest (hex), by L{digest}: SHA-256 unless the reply names another."""
    trailer: bool = False
    """The server takes the trailer (it answered in the three-field form)."""
    digest: DigestName | None = None
    """The receipt digest the server chose, named in a fourth field when the
    client asked (C{Digest:}); None from a server that did not name one (SHA-256)."""


@attrs.frozen
class Refusal:
    """C{error <code> <reason>}."""

    code: int
    reason: str


Reply = Ok | Receipt | Refusal
"""C{done <size> <sha256> <path>} is read as the L{Receipt} it carries."""


def encode_ok(
    offset: int,
    prefix_sha256: str | None = None,
    trailer: bool = False,
    digest: DigestName | None = None,
) -> bytes:
    """The FX/1 go-ahead: C{ok <offset>}, or C{ok <offset> <prefix|->} with a trailer,
    and C{ok <offset> <prefix|-> <digest>} to a client that asked for a digest."""
    if not trailer:
        return b"ok %d\n" % offset
    named = "" if digest is None else f" {digest}"
    return f"ok {offset} {prefix_sha256 or '-'}{named}\n".encode()


def encode_done(size: int, digest: str, path: str, label: DigestName | None = None) -> bytes:
    """The FX/1 receipt: C{done <size> <sha256> <path>}, or with the digest
    labelled (C{done <size> blake3:<hex> <path>}, C{sha256:<hex>}) to a
    client that asked for a digest (C{label})."""
    shown = digest if label is None else f"{label}:{digest}"
    return f"done {size} {shown} {path}\n".encode()


def encode_error(error: TransferError) -> bytes:
    """A refusal line, for either form."""
    return f"error {error.code} {error.reason}\n".encode()


def parse_reply(line: bytes) -> Reply:
    """Parse one line the server sent (without its newline).

    Offsets and sizes are 1 to L{MAX_SIZE_DIGITS} digits, error codes three
    digits (docs/protocol.md, "Numbers"): a server cannot make the client convert more.

    @raise ValueError: for anything that is not a reply (and nothing else).
    """
    text = line.decode("utf-8", "replace").rstrip("\r")
    word, _, rest = text.partition(" ")
    if word == "ok":
        offset, _, prefix = rest.partition(" ")
        prefix, _, named = prefix.partition(" ")
        chosen = digest_name(named) if named else None
        if _SIZE.fullmatch(offset) and not prefix:
            return Ok(int(offset))
        if (
            _SIZE.fullmatch(offset)
            and (prefix == "-" or _HEX256.fullmatch(prefix))
            and (not named or chosen is not None)
        ):
            return Ok(int(offset), None if prefix == "-" else prefix, trailer=True, digest=chosen)
    if word == "done":
        size, _, rest = rest.partition(" ")
        digest, _, path = rest.partition(" ")
        label, colon, hexdigest = digest.rpartition(":")
        algorithm = digest_name(label) if colon else DEFAULT_DIGEST
        if _SIZE.fullmatch(size) and algorithm and _HEX256.fullmatch(hexdigest) and path:
            return Receipt(int(size), hexdigest, path, algorithm)
    if word == "error":
        code, _, reason = rest.partition(" ")
        if _CODE.fullmatch(code):
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
