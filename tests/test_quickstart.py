"""The quick start works as written, from a fresh copy of the checkout.

docs/quickstart.md's blocks marked for this test run in order, as a
newcomer would: the install-and-serve command (a new virtual environment,
C{pip install .} from PyPI, twistd in the foreground), then the first TCP
transfer and the first TFTP download in a second shell. The one change is
the literal port 8000 -> a free port (8000 may be taken on a CI machine).
The first two commands are the README's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from twisted.trial import unittest

from tests.helpers import ROOT, LineLog, child_env, free_port
from tests.test_docs_examples import examples

QUICKSTART = os.path.join(ROOT, "docs", "quickstart.md")
INSTALL_TIMEOUT = 900
STEP_TIMEOUT = 120


def quickstart_blocks() -> list[str]:
    """The sh blocks of the quick start that this test runs, in order."""
    with open(QUICKSTART, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    blocks = []
    for line, language, code, marked in examples(QUICKSTART):
        if language == "sh" and marked and "test_quickstart.py" in lines[line - 2]:
            blocks.append(code)
    return blocks


def readme_commands() -> list[str]:
    return [
        code
        for _, language, code, _ in examples(os.path.join(ROOT, "README.md"))
        if language == "sh"
    ][:2]


def checkout_copy(target: str) -> None:
    """The files of this checkout (tracked, or new and not ignored) copied to C{target}."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        )
        .stdout.decode()
        .split("\0")
    )
    for relative in filter(None, listed):
        source = os.path.join(ROOT, relative)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
            shutil.copy2(source, os.path.join(target, relative))


class QuickStartTests(unittest.TestCase):
    def test_blocks_are_the_readmes(self) -> None:
        """The quick start's install-and-serve and test commands are the README's two commands."""
        blocks = quickstart_blocks()
        self.assertEqual(len(blocks), 3)
        ours = [code for _, language, code, _ in examples(QUICKSTART) if language == "sh"]
        self.assertEqual(readme_commands(), [ours[0], ours[-1]])

    @pytest.mark.integration
    @pytest.mark.slow
    def test_quickstart_as_written(self) -> None:
        """Install and serve, send over TCP, get over TFTP: each block exits 0, bytes match."""
        if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
            raise unittest.SkipTest("needs a git checkout to copy")
        work = os.path.abspath(self.mktemp())
        checkout_copy(work)
        port = str(free_port())
        serve, send, get = (re.sub(r"\b8000\b", port, code) for code in quickstart_blocks())
        env = child_env()
        env.pop("PYTHONPATH", None)  # the new virtual environment, nothing of ours
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = os.pathsep.join(
            p
            for p in env.get("PATH", "").split(os.pathsep)
            if not p.startswith(os.path.dirname(sys.executable))
        )
        server = subprocess.Popen(
            ["bash", "-e", "-c", serve],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.addCleanup(self._stop, server)
        log = LineLog(server.stdout)
        log.wait_for(r"listening for TFTP on UDP", INSTALL_TIMEOUT)
        for step in (send, get):
            result = subprocess.run(
                ["bash", "-e", "-c", step],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            self.assertEqual(result.returncode, 0, step + result.stdout + result.stderr)
        with open(os.path.join(work, "received", "hello.txt"), encoding="utf-8") as handle:
            self.assertEqual(handle.read(), "hello, filexfer\n")
        self.assertIn("the same bytes came back", result.stdout)

    @staticmethod
    def _stop(server: subprocess.Popen[str]) -> None:
        """SIGTERM to the process group this test started (bash and the twistd it runs)."""
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(30)
        if server.stdout is not None:
            server.stdout.close()
