"""--tftp-port-range: parsing, and a bounded allocator that says when the range is full."""

from __future__ import annotations

import errno
import random

from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from filexfer.tftp._portrange import PortAllocator, PortRange, PortsExhausted


class ParseTests(unittest.TestCase):
    """LOW:HIGH."""

    def test_forms(self) -> None:
        """tftpd-hpa's LOW:HIGH, and LOW-HIGH; a single port is a range of one."""
        self.assertEqual(PortRange.parse("40000:40099"), PortRange(40000, 40099))
        self.assertEqual(PortRange.parse("40000-40001"), PortRange(40000, 40001))
        self.assertEqual(len(PortRange.parse("69:69")), 1)

    def test_mistakes(self) -> None:
        """Each mistake says what is expected."""
        for text, words in [
            ("40000", "LOW:HIGH"),
            ("a:b", "LOW:HIGH"),
            ("0:10", "1-65535"),
            ("1:70000", "1-65535"),
            ("50:40", "above"),
        ]:
            with self.assertRaises(ValueError) as caught:
                PortRange.parse(text)
            self.assertIn(words, str(caught.exception), text)


def _taken(*numbers: int):  # type: ignore[no-untyped-def]
    def bind(number: int) -> str:
        if number in numbers:
            raise CannotListenError("", number, OSError(errno.EADDRINUSE, "in use"))
        return f"port {number}"

    return bind


class AllocatorTests(unittest.TestCase):
    """Handing out numbers."""

    def test_within_range_and_distinct(self) -> None:
        """Every number handed out is in the range, none twice while held."""
        allocator = PortAllocator(PortRange(40000, 40004), random.Random(1))
        got = [allocator.open(_taken())[0] for _ in range(5)]
        self.assertEqual(sorted(got), [40000, 40001, 40002, 40003, 40004])

    def test_exhausted_is_an_error_at_once(self) -> None:
        """A full range raises PortsExhausted (with the range in the message) after one walk."""
        allocator = PortAllocator(PortRange(40000, 40001), random.Random(1))
        allocator.open(_taken())
        tried: list[int] = []

        def bind(number: int) -> None:
            tried.append(number)
            raise CannotListenError("", number, OSError(errno.EADDRINUSE, "in use"))

        with self.assertRaises(PortsExhausted) as caught:
            allocator.open(bind)
        self.assertEqual(len(tried), 1)  # the held number is not even tried
        self.assertIn("all 2 transfer ports (40000:40001) are in use", str(caught.exception))

    def test_skips_numbers_other_programs_hold(self) -> None:
        """A number another program bound is skipped, not fatal."""
        allocator = PortAllocator(PortRange(40000, 40002), random.Random(0))
        numbers = {allocator.open(_taken(40001))[0] for _ in range(2)}
        self.assertEqual(numbers, {40000, 40002})

    def test_release(self) -> None:
        """A released number can be handed out again."""
        allocator = PortAllocator(PortRange(40000, 40000))
        number, port = allocator.open(_taken())
        self.assertEqual(port, "port 40000")
        with self.assertRaises(PortsExhausted):
            allocator.open(_taken())
        allocator.release(number)
        self.assertEqual(allocator.open(_taken())[0], 40000)

    def test_other_errors_propagate(self) -> None:
        """An error that is not 'in use' is not mistaken for a busy port."""
        allocator = PortAllocator(PortRange(40000, 40009))

        def bind(number: int) -> None:
            raise PermissionError("no")

        self.assertRaises(PermissionError, allocator.open, bind)
