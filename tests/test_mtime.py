"""The range of modification times a file system keeps, probed and judged."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from filexfer._errors import TransferError
from filexfer._mtime import NS_MAX, NS_MIN, check_mtime, describe_ns, probe_mtime_range

YEAR_1965_NS = -157_766_400 * 10**9
"""1965-01-01T00:00:00Z."""


class ProbeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def test_range_is_what_the_kernel_keeps(self) -> None:
        """The probe returns times a file really keeps: set either end, read it back unchanged."""
        low, high = probe_mtime_range(self.directory)
        self.assertLess(low, 0)
        self.assertGreater(high, (2**31 - 1) * 10**9)
        path = os.path.join(self.directory, "f")
        with open(path, "wb"):
            pass
        for value in (low, high):
            os.utime(path, ns=(value, value))
            self.assertEqual(os.stat(path).st_mtime_ns, value)

    def test_within_int64_nanoseconds(self) -> None:
        """The probed range never leaves the int64 nanoseconds the wire allows."""
        low, high = probe_mtime_range(self.directory)
        self.assertTrue(NS_MIN <= low < high <= NS_MAX, (low, high))

    def test_leaves_nothing_behind(self) -> None:
        """The probe's temporary file is gone afterwards."""
        probe_mtime_range(self.directory)
        self.assertEqual(os.listdir(self.directory), [])

    def test_pre_1970_inside_and_far_future_outside(self) -> None:
        """1965 and -1 ns fit the probed range (ext4, tmpfs); 10**29 s does not."""
        allowed = probe_mtime_range(self.directory)
        check_mtime(YEAR_1965_NS, allowed)
        check_mtime(-1, allowed)
        check_mtime(0, allowed)
        error = self.assertRaises(TransferError, check_mtime, 10**29 * 10**9, allowed)
        self.assertEqual(error.code, 400)

    def test_missing_directory(self) -> None:
        """A directory that cannot take a file is an OSError, not a made-up range."""
        self.assertRaises(OSError, probe_mtime_range, os.path.join(self.directory, "missing"))


class CheckTests(unittest.TestCase):
    ALLOWED = (-(2**31) * 10**9, NS_MAX)

    def test_inside(self) -> None:
        """Times inside the range, its ends included, pass."""
        for value in (self.ALLOWED[0], -1, 0, YEAR_1965_NS, self.ALLOWED[1]):
            check_mtime(value, self.ALLOWED)

    def test_outside_is_400_in_one_line(self) -> None:
        """Outside the range: 400, one line naming the time and the range as dates."""
        error = self.assertRaises(TransferError, check_mtime, self.ALLOWED[0] - 1, self.ALLOWED)
        self.assertEqual(error.code, 400)
        self.assertNotIn("\n", error.reason)
        self.assertIn("1901-12-13 20:45:51 UTC", error.reason)
        self.assertIn("(1901-12-13 20:45:52 UTC to 2262-04-11 23:47:16 UTC)", error.reason)

    def test_far_outside(self) -> None:
        """Times beyond any calendar date are still one readable line."""
        error = self.assertRaises(TransferError, check_mtime, -(10**40), self.ALLOWED)
        self.assertEqual(error.code, 400)
        self.assertIn("more than 10**20 s before the epoch", error.reason)
        error = self.assertRaises(TransferError, check_mtime, -(10**25), self.ALLOWED)
        self.assertIn("-10000000000000000 s since the epoch", error.reason)
        self.assertLess(len(error.reason), 200)

    @given(
        st.integers(min_value=-(10**40), max_value=10**40)
        | st.sampled_from([10**5000, -(10**5000), 10**20 * 10**9, -(10**20) * 10**9])
    )
    def test_describe_any_time(self, value: int) -> None:
        """describe_ns gives one short line for any integer."""
        text = describe_ns(value)
        self.assertNotIn("\n", text)
        self.assertLess(len(text), 64)
