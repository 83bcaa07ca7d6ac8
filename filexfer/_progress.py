"""The progress callback every transfer takes: TCP sends, TFTP uploads and downloads."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int | None], object]
"""C{progress(done_bytes, total_bytes_or_None)}: how far a transfer has come.

The total is None while it is not known (a TFTP download without C{tsize}).
"""
