"""The atheris fuzz targets run (a few seconds each) and find no crash."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fuzz(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "fuzz", script), "-max_total_time=4", "-seed=1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=120,
    )


class FuzzSmokeTests(unittest.TestCase):
    def test_handshake_fuzzer(self) -> None:
        """Four seconds of coverage-guided inputs to the TCP handshake parsers crash nothing."""
        result = _fuzz("fuzz_handshake.py")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("Done", result.stderr)

    def test_tftp_fuzzer(self) -> None:
        """Four seconds of coverage-guided datagrams to the TFTP decoder crash nothing."""
        result = _fuzz("fuzz_tftp.py")
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("Done", result.stderr)
