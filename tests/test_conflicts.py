"""numbered_name: free names for the rename policy that fit the file system."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer._names import validate_name
from filexfer.storage._conflicts import name_limit, numbered_name, split_suffix


def size(text: str) -> int:
    """Bytes of UTF-8."""
    return len(text.encode())


_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\\"),
    min_size=1,
    max_size=255,
).filter(lambda name: size(name) <= 255 and name not in (".", ".."))


class NumberedNameTests(unittest.TestCase):
    def test_long_extension_is_not_kept_apart(self) -> None:
        """An extension leaving no room for the stem: the whole name is cut, the number ends it."""
        name = "a." + "b" * 253
        renamed = numbered_name(name, 1)
        self.assertEqual(size(renamed), 255)
        self.assertEqual(renamed, "a." + "b" * 249 + " (1)")

    def test_long_stem_is_cut_before_the_extension(self) -> None:
        """A 255-byte name keeps its extension; the stem makes room for the number."""
        renamed = numbered_name("x" * 251 + ".bin", 7)
        self.assertEqual(renamed, "x" * 247 + " (7).bin")

    def test_compound_extension_kept(self) -> None:
        """A long .tar.gz name keeps .tar.gz whole."""
        renamed = numbered_name("x" * 248 + ".tar.gz", 12)
        self.assertEqual(renamed, "x" * 243 + " (12).tar.gz")

    def test_long_dotfile(self) -> None:
        """A long dotfile keeps its leading dot and gets the number at the end."""
        renamed = numbered_name("." + "b" * 254, 3)
        self.assertEqual(renamed, "." + "b" * 250 + " (3)")

    def test_multibyte_cut_at_a_character(self) -> None:
        """A stem of 2-byte characters is cut between characters, never inside one."""
        renamed = numbered_name("é" * 125 + ".txt", 12)  # 254 bytes
        self.assertEqual(renamed, "é" * 123 + " (12).txt")
        renamed = numbered_name("€" * 85, 1)  # 3-byte characters
        self.assertEqual(renamed, "€" * 83 + " (1)")

    def test_smaller_limit(self) -> None:
        """A file system allowing 64 bytes gets names of at most 64 bytes."""
        renamed = numbered_name("report-" + "q" * 70 + ".pdf", 9999, limit=64)
        self.assertEqual(size(renamed), 64)
        self.assertTrue(renamed.startswith("report-q") and renamed.endswith(" (9999).pdf"))
        self.assertEqual(numbered_name("x." + "y" * 60, 1, limit=64), "x." + "y" * 58 + " (1)")

    def test_limit_too_small_for_the_number(self) -> None:
        """A limit that cannot hold the number is a ValueError, not a bad name."""
        self.assertRaises(ValueError, numbered_name, "a", 10000, limit=8)

    def test_split_suffix(self) -> None:
        """Stems and extensions, dotfiles and compound extensions included."""
        self.assertEqual(split_suffix("a.TAR.GZ"), ("a", ".TAR.GZ"))
        self.assertEqual(split_suffix(".tar.gz"), (".tar", ".gz"))
        self.assertEqual(split_suffix(".bashrc"), (".bashrc", ""))
        self.assertEqual(split_suffix("noext"), ("noext", ""))

    def test_name_limit_of_a_directory(self) -> None:
        """name_limit asks the file system, capped at the protocol's 255 bytes."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, fd)
        self.assertEqual(name_limit(fd), min(255, os.fpathconf(fd, "PC_NAME_MAX")))

    @settings(max_examples=400, deadline=None)
    @given(_names, st.integers(1, 10**6), st.integers(1, 10**6), st.integers(20, 255))
    def test_always_fits_and_distinct(self, name: str, first: int, second: int, limit: int) -> None:
        """Any valid name and number: a valid name within the limit; distinct numbers differ."""
        try:
            validate_name(name)
        except TransferError:
            return
        renamed = numbered_name(name, first, limit)
        self.assertLessEqual(size(renamed), limit)
        self.assertEqual(validate_name(renamed.encode()), renamed)  # valid UTF-8, a valid name
        self.assertIn(f" ({first})", renamed)
        if first != second:
            self.assertNotEqual(renamed, numbered_name(name, second, limit))
