"""The TCP handshake on the wire: pure parse and encode (docs/protocol.md, "TCP")."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer._mtime import NS_MAX, NS_MIN
from filexfer._receipt import Receipt
from filexfer.tcp import _wire
from filexfer.tcp._wire import (
    ClassicRequest,
    Form,
    Ok,
    PutRequest,
    Refusal,
    classify,
    encode_done,
    encode_error,
    encode_ok,
    encode_put,
    format_mtime,
    parse_classic,
    parse_header_block,
    parse_reply,
)

DIGEST = hashlib.sha256(b"hello").hexdigest()


def feed_bytewise(block: bytes) -> tuple[PutRequest, bytes, int]:
    """Grow a buffer one byte at a time until the parser answers.

    @return: the request, the rest, and how many bytes were needed.
    """
    for end in range(1, len(block) + 1):
        request, rest = parse_header_block(block[:end])
        if request is not None:
            return request, rest, end
        assert rest == block[:end]
    raise AssertionError("the parser never finished")


class ClassifyTests(unittest.TestCase):
    def test_strict_prefixes_are_undecided(self) -> None:
        """C{F} and C{FX} (strict prefixes of C{FX/}) cannot be told yet."""
        self.assertIs(classify(b"F"), Form.UNDECIDED)
        self.assertIs(classify(b"FX"), Form.UNDECIDED)

    def test_magic_is_extended(self) -> None:
        """Anything starting with C{FX/} is the extended form."""
        self.assertIs(classify(b"FX/"), Form.EXTENDED)
        self.assertIs(classify(b"FX/1 PUT a\n"), Form.EXTENDED)

    def test_other_names_are_seed(self) -> None:
        """Other first chunks, including ones starting with F, are classic names."""
        for first in [b"file.txt", b"Foo", b"FY", b"fx/1", b"FX.txt", b"X"]:
            self.assertIs(classify(first), Form.CLASSIC, first)


class SeedTests(unittest.TestCase):
    def test_name(self) -> None:
        """The whole chunk is the name."""
        self.assertEqual(parse_classic(b"report.pdf"), ClassicRequest("report.pdf"))

    def test_one_trailing_newline_dropped(self) -> None:
        """One trailing LF or CRLF (C{echo name | nc}) is dropped; a second is not."""
        self.assertEqual(parse_classic(b"name\n"), ClassicRequest("name"))
        self.assertEqual(parse_classic(b"name\r\n"), ClassicRequest("name"))
        error = self.assertRaises(TransferError, parse_classic, b"name\n\n")
        self.assertEqual(error.code, 400)

    def test_bad_names(self) -> None:
        """Bad classic names are refused with 400."""
        for chunk in [b"../x", b"..", b"a/b", b"\xff", b"a\x00"]:
            self.assertEqual(self.assertRaises(TransferError, parse_classic, chunk).code, 400)


class HeaderBlockTests(unittest.TestCase):
    def test_minimal(self) -> None:
        """A PUT line and a blank line is a request with no headers."""
        request, rest = parse_header_block(b"FX/1 PUT a.txt\n\n")
        self.assertEqual(request, PutRequest("a.txt"))
        self.assertEqual(rest, b"")

    def test_all_headers(self) -> None:
        """Size, SHA256, Mtime and Token are parsed."""
        block = (
            f"FX/1 PUT d/a b.txt\nSize: 5\nSHA256: {DIGEST}\nMtime: 1700000000.5\nToken: s3cret\n\n"
        )
        request, rest = parse_header_block(block.encode())
        self.assertEqual(
            request, PutRequest("d/a b.txt", 5, DIGEST, 1_700_000_000_500_000_000, "s3cret")
        )
        self.assertEqual(rest, b"")

    def test_byte_by_byte(self) -> None:
        """Fed one byte at a time, the block completes exactly at its blank line."""
        block = f"FX/1 PUT x/y.bin\nSize: 10\nSHA256: {DIGEST}\n\n".encode()
        request, rest, needed = feed_bytewise(block + b"DATA")
        self.assertEqual(needed, len(block))
        self.assertEqual(request, PutRequest("x/y.bin", 10, DIGEST))
        self.assertEqual(rest, b"")

    def test_rest_returned(self) -> None:
        """Bytes after the blank line are handed back untouched."""
        request, rest = parse_header_block(b"FX/1 PUT a\n\nearly data")
        self.assertEqual(request, PutRequest("a"))
        self.assertEqual(rest, b"early data")

    def test_crlf(self) -> None:
        """CRLF line ends are accepted, byte by byte too."""
        block = b"FX/1 PUT a.txt\r\nSize: 3\r\nMtime: 12\r\n\r\n"
        request, rest, needed = feed_bytewise(block)
        self.assertEqual(request, PutRequest("a.txt", 3, None, 12 * 10**9))
        self.assertEqual(needed, len(block))

    def test_case_insensitive_headers(self) -> None:
        """Header names are case-insensitive; SHA256 values may be upper case."""
        block = f"FX/1 PUT a\nsize: 5\nsha256: {DIGEST.upper()}\nMTIME:7\ntOkEn:  t \n\n"
        request, _ = parse_header_block(block.encode())
        self.assertEqual(request, PutRequest("a", 5, DIGEST, 7 * 10**9, "t"))

    def test_unknown_headers_ignored(self) -> None:
        """Unknown headers are ignored."""
        request, _ = parse_header_block(b"FX/1 PUT a\nX-Future: 1\nSize: 2\nColor: blue\n\n")
        self.assertEqual(request, PutRequest("a", 2))

    def assertBad(self, block: bytes, code: int = 400) -> TransferError:
        error = self.assertRaises(TransferError, parse_header_block, block)
        self.assertEqual(error.code, code, str(error))
        return error

    def test_duplicate_header(self) -> None:
        """The same header twice (in any case) is a 400."""
        self.assertBad(b"FX/1 PUT a\nSize: 1\nsize: 1\n\n")
        self.assertBad(b"FX/1 PUT a\nX-Unknown: 1\nx-unknown: 2\n\n")

    def test_header_block_limit(self) -> None:
        """A block of exactly 8 KiB is fine; one byte more without its end is a 400."""
        head = b"FX/1 PUT a\nX-Pad: "
        pad = _wire.MAX_HEADER_BLOCK - len(head) - 2
        block = head + b"p" * pad + b"\n\n"
        self.assertEqual(len(block), _wire.MAX_HEADER_BLOCK)
        request, _ = parse_header_block(block)
        self.assertEqual(request, PutRequest("a"))
        self.assertBad(head + b"p" * (pad + 1) + b"\n\n")

    def test_limit_without_newline(self) -> None:
        """8 KiB with no line end at all is refused rather than buffered forever."""
        self.assertBad(b"FX/1 PUT " + b"a" * _wire.MAX_HEADER_BLOCK)
        request, rest = parse_header_block(b"FX/1 PUT " + b"a" * 100)
        self.assertIsNone(request)

    def test_bad_size(self) -> None:
        """Size must be decimal digits."""
        for value in [b"-1", b"1.5", b"0x10", b"", b"1e3", b"+5", b"\xd9\xa1"]:
            self.assertBad(b"FX/1 PUT a\nSize: " + value + b"\n\n")

    def test_bad_sha256(self) -> None:
        """SHA256 must be exactly 64 hex digits."""
        for value in [DIGEST[:-1], DIGEST + "0", "g" * 64, ""]:
            self.assertBad(f"FX/1 PUT a\nSHA256: {value}\n\n".encode())

    def test_size_digit_bound(self) -> None:
        """Size has at most 20 digits: 21 digits, or 5,000, is a 400 (not a crash of int())."""
        request, _ = parse_header_block(b"FX/1 PUT a\nSize: " + b"9" * 20 + b"\n\n")
        assert request is not None
        self.assertEqual(request.size, 10**20 - 1)
        for digits in (21, 4301, 5000):
            self.assertBad(b"FX/1 PUT a\nSize: " + b"9" * digits + b"\n\n")

    def test_bad_mtime(self) -> None:
        """Mtime must be signed decimal seconds: no exponent, no bare point, no second sign."""
        for value in ["1.", ".5", "-.5", "abc", "1e9", "", "--1", "+-1", "- 1", "1_000", "\u0661"]:
            self.assertBad(f"FX/1 PUT a\nMtime: {value}\n\n".encode())

    def test_mtime_digit_bounds(self) -> None:
        """Mtime with 5,000 digits, before or after the point, is a 400 (not a crash of int())."""
        for value in ["9" * 5000, "-" + "9" * 5000, "1." + "0" * 5000, "9" * 21, "0." + "1" * 65]:
            error = self.assertRaises(
                TransferError, parse_header_block, f"FX/1 PUT a\nMtime: {value}\n\n".encode()
            )
            self.assertEqual(error.code, 400)
            self.assertLess(len(error.reason), 200)

    def test_mtime_beyond_int64_nanoseconds(self) -> None:
        """Mtime outside the int64 nanoseconds utimensat takes (10**29 s, either sign) is a 400."""
        for value in [
            str(10**29),
            f"-{10**29}",
            "9223372037",
            "-9223372037",
            "9223372036.854775808",
        ]:
            error = self.assertRaises(
                TransferError, parse_header_block, f"FX/1 PUT a\nMtime: {value}\n\n".encode()
            )
            self.assertEqual(error.code, 400)
            self.assertIn("outside", error.reason)

    def test_mtime_int64_edges(self) -> None:
        """The extreme int64 nanoseconds themselves are accepted."""
        for value, expected in [
            ("9223372036.854775807", NS_MAX),
            ("-9223372036.854775808", NS_MIN),
        ]:
            request, _ = parse_header_block(f"FX/1 PUT a\nMtime: {value}\n\n".encode())
            assert request is not None
            self.assertEqual(request.mtime_ns, expected)

    def test_mtime_before_1970(self) -> None:
        """A signed Mtime is accepted: 1965, -1 s, -1 ns; a plus sign and -0 too."""
        for value, expected in [
            ("-157766400", -157_766_400 * 10**9),
            ("-1", -(10**9)),
            ("-0.000000001", -1),
            ("-1.5", -1_500_000_000),
            ("+5", 5 * 10**9),
            ("-0", 0),
        ]:
            request, _ = parse_header_block(f"FX/1 PUT a\nMtime: {value}\n\n".encode())
            assert request is not None
            self.assertEqual(request.mtime_ns, expected, value)

    def test_mtime_fraction_beyond_nanoseconds_truncated(self) -> None:
        """Fraction digits after the ninth are dropped, toward zero, whatever the sign."""
        for value, expected in [
            ("1.0000000019", 1_000_000_001),
            ("-0.0000000019", -1),
            ("-0.0000000009", 0),
            ("0." + "9" * 64, 999_999_999),
        ]:
            request, _ = parse_header_block(f"FX/1 PUT a\nMtime: {value}\n\n".encode())
            assert request is not None
            self.assertEqual(request.mtime_ns, expected, value)

    def test_mtime_decimal(self) -> None:
        """Mtime may carry a fraction; it becomes nanoseconds."""
        request, _ = parse_header_block(b"FX/1 PUT a\nMtime: 1.000000001\n\n")
        assert request is not None
        self.assertEqual(request.mtime_ns, 1_000_000_001)

    def test_version_and_method(self) -> None:
        """Only C{FX/1} and C{PUT} are understood."""
        self.assertBad(b"FX/2 PUT a\n\n")
        self.assertBad(b"FX/1 GET a\n\n")
        self.assertBad(b"FX/1 put a\n\n")
        self.assertBad(b"FX/1\n\n")
        self.assertBad(b"FX/\xff PUT a\n\n")

    def test_bad_path(self) -> None:
        """The path follows the path rules: 400 for C{..}, 403 for the state directory."""
        self.assertBad(b"FX/1 PUT ../x\n\n")
        self.assertBad(b"FX/1 PUT /etc/passwd\n\n")
        self.assertBad(b"FX/1 PUT \n\n")
        self.assertBad(b"FX/1 PUT .filexfer/partial/x\n\n", 403)

    def test_malformed_header_line(self) -> None:
        """A header line without a colon, or with an empty name, is a 400."""
        self.assertBad(b"FX/1 PUT a\nNoColon\n\n")
        self.assertBad(b"FX/1 PUT a\n: value\n\n")
        self.assertBad(b"FX/1 PUT a\nSize: \xff\n\n")

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_fuzz_arbitrary_bytes(self, data: bytes) -> None:
        """parse_header_block on any bytes returns or raises TransferError, nothing else."""
        for buffer in (data, b"FX/1 PUT " + data, b"FX/1 PUT a\n" + data):
            try:
                request, rest = parse_header_block(buffer)
            except TransferError as error:
                self.assertIn(error.code, (400, 403))
            else:
                if request is None:
                    self.assertEqual(rest, buffer)
                else:
                    self.assertTrue(buffer.endswith(rest))


_path_component = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/\\"),
    min_size=1,
    max_size=20,
).filter(lambda c: c not in (".", "..") and c != ".filexfer" and c == c.strip())

_requests = st.builds(
    PutRequest,
    path=st.lists(_path_component, min_size=1, max_size=4).map("/".join),
    size=st.none() | st.integers(min_value=0, max_value=10**20 - 1),
    sha256=st.none() | st.binary(min_size=1).map(lambda b: hashlib.sha256(b).hexdigest()),
    mtime_ns=st.none() | st.integers(min_value=NS_MIN, max_value=NS_MAX),
    token=st.none()
    | st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1)
    .map(str.strip)
    .filter(bool),
)


class EncodeTests(unittest.TestCase):
    def test_encode_put_exact(self) -> None:
        """encode_put writes the documented lines, in order, ending with a blank line."""
        request = PutRequest("d/a.txt", 5, DIGEST, 1_700_000_000_250_000_000, "tok")
        self.assertEqual(
            encode_put(request),
            (
                f"FX/1 PUT d/a.txt\nSize: 5\nSHA256: {DIGEST}\nMtime: 1700000000.25\nToken: tok\n\n"
            ).encode(),
        )
        self.assertEqual(encode_put(PutRequest("a")), b"FX/1 PUT a\n\n")

    @settings(max_examples=300, deadline=None)
    @given(_requests)
    def test_round_trip(self, request: PutRequest) -> None:
        """parse_header_block(encode_put(r)) gives r back, with nothing left over."""
        parsed, rest = parse_header_block(encode_put(request))
        self.assertEqual(parsed, request)
        self.assertEqual(rest, b"")

    def test_format_mtime(self) -> None:
        """Nanoseconds become decimal seconds without trailing zeros."""
        self.assertEqual(format_mtime(0), "0")
        self.assertEqual(format_mtime(1_700_000_000 * 10**9), "1700000000")
        self.assertEqual(format_mtime(1_500_000_000), "1.5")
        self.assertEqual(format_mtime(1), "0.000000001")
        self.assertEqual(format_mtime(10 * 10**9), "10")

    def test_format_negative_mtime(self) -> None:
        """Times before 1970 are written sign and magnitude: -1 ns is -0.000000001."""
        self.assertEqual(format_mtime(-1), "-0.000000001")
        self.assertEqual(format_mtime(-1_500_000_000), "-1.5")
        self.assertEqual(format_mtime(-(10**9)), "-1")
        self.assertEqual(format_mtime(-157_766_400 * 10**9), "-157766400")
        self.assertEqual(format_mtime(NS_MIN), "-9223372036.854775808")

    @settings(max_examples=500)
    @given(
        st.integers(min_value=NS_MIN, max_value=NS_MAX)
        | st.sampled_from([NS_MIN, NS_MIN + 1, -(10**9) - 1, -(10**9), -1, 0, 1, NS_MAX])
    )
    def test_format_mtime_round_trip(self, mtime_ns: int) -> None:
        """The Mtime header carries every accepted nanosecond value exactly, either sign."""
        request, _ = parse_header_block(f"FX/1 PUT a\nMtime: {format_mtime(mtime_ns)}\n\n".encode())
        assert request is not None
        self.assertEqual(request.mtime_ns, mtime_ns)


class ReplyTests(unittest.TestCase):
    def test_ok(self) -> None:
        """C{ok <offset>} parses; a bare C{ok} or a bad offset does not."""
        self.assertEqual(parse_reply(b"ok 0"), Ok(0))
        self.assertEqual(parse_reply(b"ok 12345\r"), Ok(12345))
        for line in [b"ok", b"ok -1", b"ok x", b"ok 1 2"]:
            self.assertRaises(ValueError, parse_reply, line)

    def test_reply_numbers_bounded(self) -> None:
        """Offsets and sizes over 20 digits and codes other than three digits are no reply."""
        self.assertEqual(parse_reply(b"ok " + b"9" * 20), Ok(10**20 - 1))
        for line in [
            b"ok " + b"9" * 21,
            b"ok " + b"9" * 5000,
            f"done {'9' * 5000} {DIGEST} a".encode(),
            f"done {'1' * 21} {DIGEST} a".encode(),
            b"error " + b"4" * 5000 + b" boom",
            b"error 4000 boom",
            b"error 40 boom",
            b"ok \xd9\xa1",
        ]:
            error = self.assertRaises(ValueError, parse_reply, line)
            self.assertIn("unexpected reply from server", str(error))

    def test_done_path_with_spaces(self) -> None:
        """In C{done} the path is the rest of the line, spaces included."""
        self.assertEqual(
            parse_reply(f"done 5 {DIGEST} dir/my file (1).txt".encode()),
            Receipt(5, DIGEST, "dir/my file (1).txt"),
        )

    def test_bad_done(self) -> None:
        """A C{done} with a bad size, digest or no path is not a reply."""
        for line in [f"done x {DIGEST} a", "done 5 abc a", f"done 5 {DIGEST}", "done"]:
            self.assertRaises(ValueError, parse_reply, line.encode())

    def test_error(self) -> None:
        """C{error <code> <reason>} parses with the whole reason."""
        self.assertEqual(
            parse_reply(b"error 409 a.txt already exists"), Refusal(409, "a.txt already exists")
        )
        self.assertRaises(ValueError, parse_reply, b"error xyz boom")

    def test_garbage(self) -> None:
        """Anything else is a ValueError."""
        for line in [b"", b"hello", b"\xff\xfe", b"OK 1"]:
            self.assertRaises(ValueError, parse_reply, line)

    def test_encoders_round_trip(self) -> None:
        """The server's encoders produce lines that parse_reply reads back."""
        self.assertEqual(encode_ok(7), b"ok 7\n")
        self.assertEqual(parse_reply(encode_ok(7)[:-1]), Ok(7))
        line = encode_done(5, DIGEST, "a b/c")
        self.assertEqual(line, f"done 5 {DIGEST} a b/c\n".encode())
        self.assertEqual(parse_reply(line[:-1]), Receipt(5, DIGEST, "a b/c"))
        error = TransferError(422, "short upload:\n1 of 2")
        self.assertEqual(encode_error(error), b"error 422 short upload: 1 of 2\n")
        self.assertEqual(
            parse_reply(encode_error(error)[:-1]), Refusal(422, "short upload: 1 of 2")
        )


class RetryHintTests(unittest.TestCase):
    def test_encode(self) -> None:
        """The hint is appended to the reason in whole seconds or up to milliseconds."""
        self.assertEqual(_wire.encode_retry_hint("busy", 2), "busy; retry in 2 s")
        self.assertEqual(_wire.encode_retry_hint("busy", 0.25), "busy; retry in 0.25 s")

    def test_on_the_wire(self) -> None:
        """A 503 line with a hint is still an ordinary refusal; the hint parses out of it."""
        reason = _wire.encode_retry_hint("too many connections from your address", 2)
        line = encode_error(TransferError(503, reason))
        self.assertEqual(line, b"error 503 too many connections from your address; retry in 2 s\n")
        refusal = parse_reply(line[:-1])
        self.assertEqual(refusal, Refusal(503, reason))
        assert isinstance(refusal, Refusal)
        self.assertEqual(_wire.parse_retry_hint(refusal.reason), 2.0)

    def test_no_hint(self) -> None:
        """Reasons without a well-formed hint at the end give None."""
        for reason in [
            "",
            "too many connections; try again later",
            "retry in 2 s, please",
            "busy; retry in -1 s",
            "busy; retry in 1e3 s",
            "busy; retry in 1234567 s",
            "busy; retry in s",
        ]:
            self.assertIsNone(_wire.parse_retry_hint(reason), reason)

    @given(st.floats(min_value=0, max_value=999_999, allow_nan=False))
    @settings(max_examples=200, deadline=None)
    def test_round_trip(self, seconds: float) -> None:
        """Any hint the server encodes parses back to within a millisecond."""
        parsed = _wire.parse_retry_hint(_wire.encode_retry_hint("busy", seconds))
        assert parsed is not None
        self.assertLessEqual(abs(parsed - seconds), 0.00051)
