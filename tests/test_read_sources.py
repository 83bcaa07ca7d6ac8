"""Read sources: a local file answers at once; a remote one later, and TFTP waits for it."""

from __future__ import annotations

import io

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from filexfer.storage import FileSource, IReadSource
from filexfer.tftp._window import RoundTrip, SourceBlocks, WindowSender


@implementer(IReadSource)
class LateSource:
    """A source whose reads fire when the test says (a remote store)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.position = 0
        self.pending: list[tuple[Deferred[bytes], int]] = []

    def read(self, length: int) -> Deferred[bytes]:
        waiting: Deferred[bytes] = Deferred()
        self.pending.append((waiting, length))
        return waiting

    def deliver(self) -> None:
        while self.pending:
            waiting, length = self.pending.pop(0)
            chunk = self.data[self.position : self.position + length]
            self.position += len(chunk)
            waiting.callback(chunk)

    def close(self) -> None:
        pass


class SourceBlocksTests(unittest.TestCase):
    def test_file_source_blocks_at_once(self) -> None:
        """A local file's blocks are there at once; the last one is short."""
        blocks = SourceBlocks(FileSource(io.BytesIO(b"a" * 1000), 1000), 512)
        self.assertEqual([len(blocks.next_block() or b"x") for _ in range(2)], [512, 488])

    def test_late_source_waits_then_wakes(self) -> None:
        """A remote source: None until bytes arrive, then on_ready, then the blocks in order."""
        source = LateSource(bytes(range(256)) * 4)
        woken: list[bool] = []
        blocks = SourceBlocks(source, 512, on_ready=lambda: woken.append(True))
        self.assertIsNone(blocks.next_block())
        source.deliver()
        self.assertEqual(woken, [True])
        got = b""
        for _ in range(10):
            block = blocks.next_block()
            if block is None:
                source.deliver()
                continue
            got += bytes(block)
            if len(block) < 512:
                break
        self.assertEqual(got, source.data)

    def test_window_sender_resumes_when_bytes_arrive(self) -> None:
        """WindowSender sends nothing while the source is late, and the window once it answers."""
        source = LateSource(b"z" * 1500)
        sent: list[bytes] = []
        blocks = SourceBlocks(source, 512)
        sender = WindowSender(
            clock=Clock(),
            send=sent.append,
            next_block=blocks.next_block,
            blksize=512,
            windowsize=4,
            rtt=RoundTrip(1.0, 0.1, 10.0),
            budget=10.0,
            on_done=lambda: None,
            on_timeout=lambda: None,
        )
        blocks.on_ready = sender.more
        sender.start()
        self.assertEqual(sent, [])
        source.deliver()
        source.deliver()
        self.assertEqual([len(d) for d in sent], [516, 516, 480])
