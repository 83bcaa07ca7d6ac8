"""TFTP packet encoding, option negotiation and netascii: the pure layer."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from filexfer.tftp import _packets as p
from filexfer.tftp._netascii import NetasciiDecoder, NetasciiEncoder

_name = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)
_text = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=20
)  # latin-1 without NUL
_option_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
_options = st.lists(st.tuples(_option_name, _text), max_size=6).map(tuple)

_packets = st.one_of(
    st.builds(p.ReadRequest, _name, st.sampled_from(["octet", "netascii", "mail"]), _options),
    st.builds(p.WriteRequest, _name, st.sampled_from(["octet", "netascii"]), _options),
    st.builds(p.Data, st.integers(0, 65535), st.binary(max_size=600)),
    st.builds(p.Ack, st.integers(0, 65535)),
    st.builds(
        p.Error,
        st.integers(0, 65535),
        st.text(max_size=40).filter(lambda t: "\0" not in t),
    ),
    st.builds(p.OptionAck, _options),
)


def _reference_decode(data: bytes) -> bytes:
    """Byte-by-byte netascii decoding, the obvious way."""
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 13 and i + 1 < len(data) and data[i + 1] == 10:
            out.append(10)
            i += 2
        elif byte == 13 and i + 1 < len(data) and data[i + 1] == 0:
            out.append(13)
            i += 2
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


class EncodeDecodeTests(unittest.TestCase):
    """encode() and decode() are inverses and decode() fails only with MalformedPacket."""

    @given(_packets)
    @settings(max_examples=300, deadline=None)
    def test_round_trip(self, packet: p.Packet) -> None:
        """Every packet survives encode then decode unchanged."""
        self.assertEqual(p.decode(p.encode(packet)), packet)

    @given(st.binary(max_size=80))
    @settings(max_examples=500, deadline=None)
    def test_garbage_raises_only_malformed(self, datagram: bytes) -> None:
        """Arbitrary bytes decode to a packet or raise MalformedPacket, nothing else."""
        try:
            packet = p.decode(datagram)
        except p.MalformedPacket:
            return
        self.assertIsInstance(
            packet, p.ReadRequest | p.WriteRequest | p.Data | p.Ack | p.Error | p.OptionAck
        )

    @given(_packets, st.data())
    @settings(deadline=None)
    def test_truncated_raises_only_malformed(self, packet: p.Packet, data: st.DataObject) -> None:
        """Any prefix of a valid datagram decodes or raises MalformedPacket."""
        datagram = p.encode(packet)
        cut = data.draw(st.integers(0, len(datagram)))
        try:
            packet = p.decode(datagram[:cut])
        except p.MalformedPacket as exc:
            self.assertIsInstance(exc, ValueError)
            return
        self.assertEqual(p.encode(packet)[:2], datagram[:2])

    def test_short_datagrams(self) -> None:
        """Empty, one-byte and header-less datagrams are malformed."""
        for datagram in [b"", b"\x00", b"\x00\x03\x00", b"\x00\x04", b"\x00\x05\x00"]:
            self.assertRaises(p.MalformedPacket, p.decode, datagram)

    def test_unknown_opcode(self) -> None:
        """Opcodes 0 and 7+ are malformed, with the opcode in the message."""
        for opcode in (0, 7, 0xFFFF):
            exc = self.assertRaises(p.MalformedPacket, p.decode, struct.pack("!HH", opcode, 1))
            self.assertIn(str(opcode), str(exc))

    def test_malformed_is_value_error(self) -> None:
        """MalformedPacket is a ValueError."""
        self.assertTrue(issubclass(p.MalformedPacket, ValueError))

    def test_request_needs_name_and_mode(self) -> None:
        """A request without a NUL after the name, with an empty name or no mode is malformed.

        Each says why: the server answers with that message (ERROR 4).
        """
        cases = {
            b"\x00\x01": "no NUL after the file name",
            b"\x00\x01name": "no NUL after the file name",
            b"\x00\x02\0octet\0": "empty file name",
            b"\x00\x02\0": "empty file name",
            b"\x00\x01name\0": "no mode",
            b"\x00\x01name\0\0": "no mode",
            b"\x00\x01name\0\0blksize\x00512\0": "no mode",
            b"\x00\x01name\0oct\xe9t\0": "mode is not ASCII",
        }
        for datagram, reason in cases.items():
            exc = self.assertRaises(p.MalformedPacket, p.decode, datagram)
            self.assertIn(reason, str(exc), datagram)

    def test_request_mode_without_nul(self) -> None:
        """The mode's NUL may be missing at the end of the datagram, as tftpd-hpa reads it."""
        self.assertEqual(p.decode(b"\x00\x01name\0octet"), p.ReadRequest(b"name", "octet"))
        self.assertEqual(p.decode(b"\x00\x02name\0NetASCII"), p.WriteRequest(b"name", "netascii"))
        self.assertEqual(
            p.decode(b"\x00\x01name\0octet\0blksize\x001024"),
            p.ReadRequest(b"name", "octet", (("blksize", "1024"),)),
        )

    def test_request_wire_format(self) -> None:
        """An RRQ with options is laid out as RFC 2347 shows, names lower-cased on decode."""
        datagram = b"\x00\x01dir/file\0OCTET\0BlkSize\x001428\0tsize\x000\0"
        packet = p.decode(datagram)
        self.assertEqual(
            packet,
            p.ReadRequest(b"dir/file", "octet", (("blksize", "1428"), ("tsize", "0"))),
        )

    def test_dangling_option_ignored(self) -> None:
        """An option name without a value at the end of a request is ignored."""
        packet = p.decode(b"\x00\x02f\0octet\0blksize\x001024\0tsize\0")
        self.assertEqual(packet, p.WriteRequest(b"f", "octet", (("blksize", "1024"),)))

    def test_data_and_ack_wire_format(self) -> None:
        """DATA and ACK are opcode, 16-bit block, payload; block numbers wrap at 65536."""
        self.assertEqual(p.encode_data(65536 + 7, b"xy"), b"\x00\x03\x00\x07xy")
        self.assertEqual(p.encode_ack(65535), b"\x00\x04\xff\xff")
        self.assertEqual(p.decode(b"\x00\x03\x00\x01"), p.Data(1, b""))

    def test_error_wire_format(self) -> None:
        """encode_error writes one line, NUL-terminated, and decode reads it back."""
        datagram = p.encode_error(p.FILE_NOT_FOUND, "no\nsuch\0file")
        self.assertEqual(datagram, b"\x00\x05\x00\x01no such file\0")
        self.assertEqual(p.decode(datagram), p.Error(1, "no such file"))

    def test_error_fits_516_bytes(self) -> None:
        """An ERROR with a long message is cut to 516 bytes, at a character boundary."""
        for message in ["x" * 5000, "\u00e9" * 5000, "9" * 600]:
            datagram = p.encode_error(p.OPTION_REFUSED, message)
            self.assertLessEqual(len(datagram), 516)
            packet = p.decode(datagram)
            assert isinstance(packet, p.Error)
            self.assertTrue(message.startswith(packet.message))


class ErrorMappingTests(unittest.TestCase):
    """Storage status codes map onto TFTP error codes."""

    def test_mapping(self) -> None:
        """404->1, 400/401/403->2, 413/507->3, 409->6, others->0."""
        expected = {404: 1, 400: 2, 401: 2, 403: 2, 413: 3, 507: 3, 409: 6, 422: 0, 500: 0}
        self.assertEqual({code: p.error_code_for(code) for code in expected}, expected)

    def test_constants(self) -> None:
        """The RFC 1350/2347 error codes have their numbers."""
        self.assertEqual(
            [
                p.NOT_DEFINED,
                p.FILE_NOT_FOUND,
                p.ACCESS_VIOLATION,
                p.DISK_FULL,
                p.ILLEGAL_OPERATION,
                p.UNKNOWN_TID,
                p.FILE_EXISTS,
                p.NO_SUCH_USER,
                p.OPTION_REFUSED,
            ],
            list(range(9)),
        )


class NegotiationTests(unittest.TestCase):
    """The server's side of RFC 2347/2348/2349/7440."""

    caps = p.ServerCaps(max_blksize=8192, max_windowsize=32)

    def test_no_options(self) -> None:
        """Without options the transfer is plain RFC 1350 and there is no OACK."""
        result = p.negotiate((), self.caps, kind="read", file_size=10)
        self.assertEqual(result, p.Negotiated((), 512, 1, None, None))

    def test_caps_lower_values(self) -> None:
        """blksize and windowsize above the caps are lowered to the caps."""
        result = p.negotiate({"blksize": "65464", "windowsize": "1000"}, self.caps, kind="write")
        self.assertEqual(result.options, (("blksize", "8192"), ("windowsize", "32")))
        self.assertEqual((result.blksize, result.windowsize), (8192, 32))

    def test_values_within_caps_kept(self) -> None:
        """Values within the caps are accepted exactly."""
        result = p.negotiate(
            {"blksize": "1428", "windowsize": "16", "timeout": "3"}, self.caps, kind="read"
        )
        self.assertEqual(
            result.options, (("blksize", "1428"), ("windowsize", "16"), ("timeout", "3"))
        )
        self.assertEqual((result.blksize, result.windowsize, result.timeout), (1428, 16, 3))

    def test_blksize_above_rfc_limit(self) -> None:
        """A blksize above 65464 is lowered to 65464 even with no lower cap."""
        result = p.negotiate({"blksize": "99999"}, p.ServerCaps(), kind="read")
        self.assertEqual(result.blksize, 65464)

    def test_out_of_range_ignored(self) -> None:
        """blksize<8, timeout 0 or 256, windowsize 0, and non-numbers are not acknowledged."""
        for name, value in [
            ("blksize", "7"),
            ("timeout", "0"),
            ("timeout", "256"),
            ("windowsize", "0"),
            ("windowsize", "65536"),
            ("blksize", "-1"),
            ("blksize", "1k"),
            ("tsize", "many"),
        ]:
            result = p.negotiate({name: value}, self.caps, kind="read", file_size=1)
            self.assertEqual(result.options, (), (name, value))

    def test_5000_digit_values_ignored(self) -> None:
        """Over 20 digits (5,000, or 21) any option's value is malformed: not acknowledged."""
        for name in ("blksize", "timeout", "tsize", "windowsize"):
            for value in ("9" * 5000, "0" * 5000, "1" * 21):
                for kind in ("read", "write"):
                    result = p.negotiate(
                        {name: value, "x": "1"},
                        self.caps,
                        kind=kind,  # type: ignore[arg-type]
                        file_size=7,
                    )
                    self.assertEqual(result, p.Negotiated(), (name, len(value), kind))
        # twenty digits are still a number: a blksize that large is lowered to the cap
        result = p.negotiate({"blksize": "9" * 20, "tsize": "1" * 20}, self.caps, kind="write")
        self.assertEqual(result.options, (("blksize", "8192"), ("tsize", "1" * 20)))

    def test_unknown_options_ignored(self) -> None:
        """Options the server does not honour are never acknowledged."""
        result = p.negotiate({"multicast": "1", "rollover": "0"}, self.caps, kind="read")
        self.assertEqual(result.options, ())

    def test_tsize_read_reports_file_size(self) -> None:
        """tsize on an RRQ is answered with the file size."""
        result = p.negotiate({"tsize": "0"}, self.caps, kind="read", file_size=12345)
        self.assertEqual((result.options, result.tsize), ((("tsize", "12345"),), 12345))

    def test_tsize_read_unknown_size(self) -> None:
        """tsize on an RRQ is not acknowledged when the size is unknown (netascii)."""
        result = p.negotiate({"tsize": "0"}, self.caps, kind="read", file_size=None)
        self.assertEqual(result.options, ())

    def test_tsize_write_echoed(self) -> None:
        """tsize on a WRQ is echoed and becomes the announced size."""
        result = p.negotiate({"TSIZE": "777"}, self.caps, kind="write")
        self.assertEqual((result.options, result.tsize), ((("tsize", "777"),), 777))

    def test_tsize_write_zero_is_unknown(self) -> None:
        """tsize 0 on a WRQ (curl -T -) is echoed, and means "size unknown" (tsize None)."""
        for zero in ("0", "00", " 0"):
            result = p.negotiate({"tsize": zero}, self.caps, kind="write")
            self.assertEqual((result.options, result.tsize), ((("tsize", "0"),), None), zero)

    def test_tsize_netascii_write_not_acknowledged(self) -> None:
        """Fresh-eyes finding on issue 10: a netascii WRQ's tsize counts wire bytes, which
        the server cannot hold the stored file to; it is not acknowledged (not echoed
        and then ignored), as a netascii RRQ offers none."""
        for value in ("5", "1200", "0"):
            result = p.negotiate(
                {"tsize": value, "blksize": "1024"}, self.caps, kind="write", netascii=True
            )
            self.assertEqual((result.options, result.tsize), ((("blksize", "1024"),), None))

    def test_timeout_disabled(self) -> None:
        """A server that does not honour timeout never acknowledges it."""
        caps = p.ServerCaps(allow_timeout=False, allow_tsize=False)
        result = p.negotiate({"timeout": "5", "tsize": "3"}, caps, kind="write")
        self.assertEqual(result.options, ())

    def test_first_occurrence_wins(self) -> None:
        """A repeated option counts once, by its first value."""
        result = p.negotiate((("blksize", "1024"), ("BLKSIZE", "2048")), self.caps, kind="read")
        self.assertEqual(result.options, (("blksize", "1024"),))

    @given(
        st.dictionaries(
            st.sampled_from(["blksize", "windowsize", "timeout", "tsize", "other"]),
            st.integers(-5, 200000).map(str),
        ),
        st.integers(8, 65464),
        st.integers(1, 65535),
    )
    @settings(deadline=None)
    def test_never_exceeds_caps(self, requested: dict[str, str], blk: int, win: int) -> None:
        """Negotiated values never exceed the caps, the RFC ranges, or the request."""
        caps = p.ServerCaps(max_blksize=blk, max_windowsize=win)
        result = p.negotiate(requested, caps, kind="write")
        self.assertTrue(8 <= result.blksize <= blk or result.blksize == 512)
        self.assertTrue(1 <= result.windowsize <= win or result.windowsize == 1)
        for name, value in result.options:
            self.assertIn(name, requested)
            if name in ("blksize", "windowsize"):
                self.assertLessEqual(int(value), int(requested[name]))
        self.assertNotIn("other", dict(result.options))


class CheckOackTests(unittest.TestCase):
    """The client's check of a server's OACK."""

    asked = {"blksize": "1428", "windowsize": "16", "timeout": "1", "tsize": "0"}

    def test_accepts_lower_values(self) -> None:
        """A smaller blksize/windowsize and the tsize are taken over."""
        result = p.check_oack(
            self.asked, (("blksize", "1024"), ("windowsize", "4"), ("tsize", "99"))
        )
        self.assertEqual((result.blksize, result.windowsize, result.tsize), (1024, 4, 99))

    def test_missing_options_default(self) -> None:
        """Options the server left out take their RFC 1350 defaults."""
        result = p.check_oack(self.asked, (("tsize", "5"),))
        self.assertEqual((result.blksize, result.windowsize), (512, 1))

    def test_refuses_bad_answers(self) -> None:
        """Unrequested options, larger values, other timeouts and non-numbers are refused."""
        for answer in [
            (("multicast", "1"),),
            (("blksize", "2000"),),
            (("blksize", "4"),),
            (("windowsize", "17"),),
            (("timeout", "2"),),
            (("tsize", "x"),),
        ]:
            self.assertRaises(p.OptionRefused, p.check_oack, self.asked, answer)

    def test_5000_digit_answers_refused(self) -> None:
        """A 5,000-digit value for any option is OptionRefused, with a short message."""
        for name in ("blksize", "windowsize", "timeout", "tsize"):
            for value in ("9" * 5000, "0" * 5000, "1" * 21):
                error = self.assertRaises(
                    p.OptionRefused, p.check_oack, self.asked, ((name, value),)
                )
                self.assertLess(len(str(error)), 120)

    def test_long_unrequested_name_quoted_short(self) -> None:
        """An unrequested option with a 5,000-character name is refused in a short message."""
        error = self.assertRaises(p.OptionRefused, p.check_oack, self.asked, (("9" * 5000, "1"),))
        self.assertLess(len(str(error)), 120)


class NetasciiTests(unittest.TestCase):
    """Netascii conversion, also across arbitrary chunk boundaries."""

    def test_encode(self) -> None:
        """LF becomes CR LF and CR becomes CR NUL."""
        self.assertEqual(NetasciiEncoder().encode(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n")

    def test_decode(self) -> None:
        """CR LF becomes LF, CR NUL becomes CR, a lone CR stays."""
        decoder = NetasciiDecoder()
        self.assertEqual(decoder.decode(b"a\r\nb\r\0c\rd") + decoder.flush(), b"a\nb\rc\rd")

    def test_trailing_cr_held_back(self) -> None:
        """A CR at the end of a chunk waits for the next chunk."""
        decoder = NetasciiDecoder()
        self.assertEqual(decoder.decode(b"x\r"), b"x")
        self.assertEqual(decoder.decode(b"\ny\r"), b"\ny")
        self.assertEqual(decoder.flush(), b"\r")

    @given(st.binary(max_size=200), st.lists(st.integers(0, 1000), max_size=8))
    @settings(max_examples=300, deadline=None)
    def test_incremental_round_trip(self, data: bytes, cuts: list[int]) -> None:
        """Encoding then decoding in arbitrary chunks gives back the original bytes."""
        encoder = NetasciiEncoder()
        wire = b"".join(encoder.encode(piece) for piece in _cut(data, cuts))
        decoder = NetasciiDecoder()
        local = b"".join(decoder.decode(piece) for piece in _cut(wire, cuts[::-1]))
        self.assertEqual(local + decoder.flush(), data)

    @given(st.binary(max_size=200), st.lists(st.integers(0, 1000), max_size=8))
    @settings(max_examples=300, deadline=None)
    def test_decode_matches_reference(self, wire: bytes, cuts: list[int]) -> None:
        """Chunked decoding of any bytes (even invalid netascii) matches a byte-wise decoder."""
        decoder = NetasciiDecoder()
        local = b"".join(decoder.decode(piece) for piece in _cut(wire, cuts)) + decoder.flush()
        self.assertEqual(local, _reference_decode(wire))
