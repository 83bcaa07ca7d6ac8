"""Direct I/O for received files: L{DirectWriter} writes aligned blocks past the page cache.

Real files in the test's directory (the file system under test); the
fallbacks are driven by unaligned offsets, lengths and buffers, which
O_DIRECT refuses, and by a patched C{os.open}.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

from twisted.trial import unittest

from filexfer.storage import _disk
from filexfer.storage._disk import DIRECT_ALIGN, DirectWriter

from .helpers import payload

BLOCKS = payload(4 * DIRECT_ALIGN, seed=11)


def aligned(data: bytes) -> memoryview:
    """C{data} in a page-aligned buffer (an anonymous mmap), as the receiving thread has it."""
    buffer = mmap.mmap(-1, max(len(data), 1))
    buffer[: len(data)] = data
    return memoryview(buffer)[: len(data)]


def o_direct_open(fd: int) -> bool:
    """Is C{fd} open with O_DIRECT (its flags in /proc/self/fdinfo)?"""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
    return bool(flags & os.O_DIRECT)


class DirectWriterTests(unittest.TestCase):
    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "f.part")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, self.fd)
        self.writer = DirectWriter(self.fd)
        self.addCleanup(self.writer.close)

    def contents(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read()

    def test_aligned_blocks_written_directly(self) -> None:
        """Aligned offset, length and buffer: all written, through an O_DIRECT descriptor."""
        self.assertEqual(self.writer.write(aligned(BLOCKS[:DIRECT_ALIGN]), 0), DIRECT_ALIGN)
        self.assertEqual(self.writer.write(aligned(BLOCKS[DIRECT_ALIGN:]), DIRECT_ALIGN), 3 * 4096)
        self.assertTrue(o_direct_open(self.writer._fd))  # type: ignore[arg-type]
        self.assertEqual(self.contents(), BLOCKS)

    def test_unaligned_offset_or_length_left_to_the_caller(self) -> None:
        """A resumed file's first bytes, a file's last ones: 0, nothing written, still usable."""
        self.assertEqual(self.writer.write(aligned(BLOCKS[:DIRECT_ALIGN]), 1000), 0)
        self.assertEqual(self.writer.write(aligned(BLOCKS[:1000]), 0), 0)
        self.assertEqual(self.contents(), b"")
        self.assertEqual(self.writer.write(aligned(BLOCKS[:DIRECT_ALIGN]), 0), DIRECT_ALIGN)

    def test_refused_buffer_falls_back_for_good(self) -> None:
        """A buffer O_DIRECT refuses (EINVAL): 0, and the writer stops trying."""
        buffer = aligned(b"\0" + BLOCKS[:DIRECT_ALIGN])
        self.assertEqual(self.writer.write(buffer[1:], 0), 0)  # one byte off the page
        self.assertEqual(self.writer.write(aligned(BLOCKS[:DIRECT_ALIGN]), 0), 0)
        self.assertEqual(self.contents(), b"")

    def test_file_system_without_direct_io(self) -> None:
        """open(2) refusing O_DIRECT (EINVAL, as tmpfs did before Linux 6.6): 0 from then on."""
        for refusal in (errno.EINVAL, errno.ENOENT, errno.EPERM):  # no /proc; a sandbox
            opened: list[Any] = []

            def refuse(
                path: str, flags: int, *args: Any, refusal: int = refusal, opened: Any = opened
            ) -> int:
                opened.append(path)
                raise OSError(refusal, os.strerror(refusal))

            writer = DirectWriter(self.fd)
            self.patch(_disk.os, "open", refuse)
            self.assertEqual(writer.write(aligned(BLOCKS), 0), 0)
            self.assertEqual(writer.write(aligned(BLOCKS), 0), 0)
            self.assertEqual(opened, [f"/proc/self/fd/{self.fd}"])  # tried once

    def test_disk_refusal_raised(self) -> None:
        """A write the disk refuses (ENOSPC) is an error, not a silent fallback."""

        def full(fd: int, data: Any, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(_disk.os, "pwrite", full)
        with self.assertRaises(OSError) as caught:
            self.writer.write(aligned(BLOCKS), 0)
        self.assertEqual(caught.exception.errno, errno.ENOSPC)

    def test_short_write_returns_what_was_taken(self) -> None:
        """The disk takes part of a chunk (not a whole block): that length comes back."""
        calls: list[int] = []

        def short(fd: int, data: Any, offset: int) -> int:
            calls.append(offset)
            return 5000

        self.patch(_disk.os, "pwrite", short)
        self.assertEqual(self.writer.write(aligned(BLOCKS), 0), 5000)
        self.assertEqual(calls, [0])  # not retried at an unaligned offset
