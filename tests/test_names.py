"""Name and path validation (docs/protocol.md, "Paths and storage")."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer._names import STATE_DIR, from_tftp_root, validate_name, validate_path


class ValidatePathTests(unittest.TestCase):
    def assertRefused(self, raw: bytes | str, code: int = 400) -> TransferError:
        error = self.assertRaises(TransferError, validate_path, raw)
        self.assertEqual(error.code, code, f"{raw!r}: {error}")
        return error

    def test_plain_relative_paths(self) -> None:
        """Ordinary relative paths validate to themselves, text or bytes."""
        for path in ["a", "a/b/c.txt", "dir with space/file (1).tar.gz", "ünïcødé/名前"]:
            self.assertEqual(validate_path(path), path)
            self.assertEqual(validate_path(path.encode("utf-8")), path)

    def test_dot_and_dotdot(self) -> None:
        """C{.} and C{..} components are refused with 400 wherever they are."""
        for path in ["..", ".", "../x", "a/../b", "a/./b", "a/..", "a/."]:
            self.assertRefused(path)

    def test_dots_inside_a_name_are_fine(self) -> None:
        """Names that merely contain dots (C{...}, C{.bashrc}, C{a..b}) are allowed."""
        for path in ["...", ".bashrc", "a..b", "..hidden"]:
            self.assertEqual(validate_path(path), path)

    def test_absolute(self) -> None:
        """Absolute paths are refused with 400."""
        self.assertRefused("/etc/passwd")
        self.assertRefused("/")

    def test_empty_components(self) -> None:
        """An empty path, a doubled slash or a trailing slash is refused."""
        for path in ["", "a//b", "a/", "/"]:
            self.assertRefused(path)

    def test_nul(self) -> None:
        """NUL anywhere is refused."""
        self.assertRefused("a\x00b")
        self.assertRefused(b"dir/\x00")

    def test_control_characters(self) -> None:
        """C0 controls, DEL and C1 controls (e.g. NEL U+0085) are refused."""
        for char in ["\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"]:
            self.assertRefused(f"a{char}b")
            self.assertRefused(f"dir/a{char}b")

    def test_backslash(self) -> None:
        """Backslashes are refused (no Windows-style separators)."""
        self.assertRefused("a\\b")
        self.assertRefused("..\\x")

    def test_invalid_utf8(self) -> None:
        """Bytes that are not valid UTF-8 are refused with 400."""
        for raw in [b"\xff", b"a\xc3", b"\xed\xa0\x80", b"dir/\x80x"]:
            self.assertRefused(raw)

    def test_component_length(self) -> None:
        """A component of 255 bytes is fine; 256 bytes is refused (bytes, not characters)."""
        self.assertEqual(validate_path("a" * 255), "a" * 255)
        self.assertEqual(validate_path("d/" + "a" * 255), "d/" + "a" * 255)
        self.assertRefused("a" * 256)
        self.assertRefused("é" * 128)  # 256 bytes in 128 characters
        self.assertEqual(validate_path("é" * 127 + "a"), "é" * 127 + "a")

    def test_state_directory(self) -> None:
        """Paths into the server's state directory are refused with 403."""
        self.assertRefused(STATE_DIR, 403)
        self.assertRefused(f"{STATE_DIR}/partial/x", 403)
        self.assertRefused(f"{STATE_DIR}/digests".encode(), 403)

    def test_state_directory_name_deeper_is_refused(self) -> None:
        """The state directory's name is refused (403) at any depth: mounts have one too."""
        self.assertRefused(f"a/{STATE_DIR}", 403)
        self.assertRefused(f"archive/{STATE_DIR}/partial/x", 403)
        self.assertEqual(validate_path(f"a/{STATE_DIR}x/b"), f"a/{STATE_DIR}x/b")

    def test_error_is_one_line(self) -> None:
        """The refusal reason is one line of text, even for a name with newlines."""
        error = self.assertRefused("a\nb")
        self.assertNotIn("\n", error.reason)
        self.assertEqual(str(error), f"error 400 {error.reason}")

    def test_surrogates(self) -> None:
        """Text with lone surrogates (undecodable file names) is refused, not a crash."""
        self.assertRefused("\udcff")
        self.assertRefused("dir/a\udc80b")

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.characters(codec=None), max_size=40))
    def test_any_text_validates_or_refuses(self, text: str) -> None:
        """Any text (surrogates included) validates to itself or raises TransferError."""
        try:
            result = validate_path(text)
        except TransferError as error:
            self.assertIn(error.code, (400, 403))
        else:
            self.assertEqual(result, text)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=40))
    def test_any_bytes_validate_or_refuse(self, raw: bytes) -> None:
        """Any bytes validate to their UTF-8 decoding or raise TransferError."""
        try:
            result = validate_path(raw)
        except TransferError as error:
            self.assertIn(error.code, (400, 403))
        else:
            self.assertEqual(result.encode("utf-8"), raw)


class FromTFTPRootTests(unittest.TestCase):
    def test_leading_slashes_dropped(self) -> None:
        """Leading slashes go, the rest stays for validate_path (tftpd-hpa -s serves them)."""
        cases = {
            "/pxelinux.cfg/default": "pxelinux.cfg/default",
            "//boot.cfg": "boot.cfg",
            "boot.cfg": "boot.cfg",
            "/../x": "../x",
            "/a//b/": "a//b/",
            "/": "",
        }
        self.assertEqual({name: from_tftp_root(name) for name in cases}, cases)

    def test_component_rules_still_apply(self) -> None:
        """What is left after the slashes is still refused when it breaks a rule."""
        for name in ["/../x", "/", "/./a", "/a//b", "/.filexfer/tmp"]:
            self.assertRaises(TransferError, validate_path, from_tftp_root(name))


class ValidateNameTests(unittest.TestCase):
    def test_plain_name(self) -> None:
        """A single-component name validates to itself."""
        self.assertEqual(validate_name(b"report.pdf"), "report.pdf")
        self.assertEqual(validate_name("名前 (1).txt"), "名前 (1).txt")

    def test_slash_refused(self) -> None:
        """A classic (seed-form) name cannot contain C{/}."""
        for name in ["a/b", "/abs", "../x", "FX/"]:
            error = self.assertRaises(TransferError, validate_name, name)
            self.assertEqual(error.code, 400)

    def test_same_component_rules(self) -> None:
        """Seed names follow the component rules: dots, controls, backslash, UTF-8, length."""
        for name in [b"..", b".", b"a\x00", b"a\x85".decode("latin-1"), "a\\b", b"\xff", "a" * 256]:
            error = self.assertRaises(TransferError, validate_name, name)
            self.assertEqual(error.code, 400)

    def test_255_bytes(self) -> None:
        """A 255-byte seed name is accepted."""
        self.assertEqual(validate_name("x" * 255), "x" * 255)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.characters(codec=None), max_size=40))
    def test_any_text_validates_or_refuses(self, text: str) -> None:
        """Any text validates to itself (and has no slash) or raises TransferError."""
        try:
            result = validate_name(text)
        except TransferError as error:
            self.assertEqual(error.code, 400)
        else:
            self.assertEqual(result, text)
            self.assertNotIn("/", result)
