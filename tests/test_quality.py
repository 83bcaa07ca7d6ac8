"""The code stays lint-clean and type-checked (ruff and mypy, run as in CI)."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


class QualityTests(unittest.TestCase):
    def test_ruff_check(self) -> None:
        """ruff finds no lint errors."""
        result = _run("ruff", "check", ".")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_ruff_format(self) -> None:
        """The code is formatted the way ruff formats it."""
        result = _run("ruff", "format", "--check", ".")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_mypy(self) -> None:
        """mypy (with mypy-zope) finds no type errors in the package."""
        result = _run("mypy")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
