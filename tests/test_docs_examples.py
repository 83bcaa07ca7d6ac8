"""Every ```python and ```sh example in README.md and docs/*.md runs as written.

A block preceded (on the line just before its fence) by
C{<!-- not run: REASON -->} is skipped, for the reason given: it serves
until interrupted, installs packages, or needs a remote host or a tool.
Every other block must succeed, or this test fails:

* the test starts C{filexfer serve --port P --root ...} on a free port P
  and, if that example does, connects to 127.0.0.1:8000 / [::1]:8000: the
  one rewrite made is the literal port C{8000} -> P in python blocks
  (port 8000 itself may be taken on a CI machine);
* each block runs in a fresh directory holding the files the examples
  name (build.tar.gz, backup.tar, firmware.bin);
* sh blocks run with C{bash -e} and the virtual environment's bin first on
  PATH (as after C{. .venv/bin/activate}), python blocks with this Python.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

from twisted.trial import unittest

from tests.helpers import PROCESS_TIMEOUT, ROOT, ServerProcess, child_env, free_port, write_file

FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: .+ -->$")
FIXTURES = ("build.tar.gz", "backup.tar", "firmware.bin", "notes.txt", "image.bin")


def examples(path: str) -> list[tuple[int, str, str, bool]]:
    """(line, language, code, marked not-run) for each fenced block of C{path}."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    found = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index
        index += 1
        body = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        marked = start > 0 and NOT_RUN.match(lines[start - 1].strip()) is not None
        found.append((start + 1, opening.group(1), "\n".join(body) + "\n", marked))
    return found


def documents() -> list[str]:
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


class DocsExamplesTests(unittest.TestCase):
    def test_examples_run(self) -> None:
        """Unmarked python and sh blocks succeed; every marker gives a reason."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        port = free_port()
        server = ServerProcess(
            [sys.executable, "-m", "filexfer", "serve", "--port", str(port),
             "--root", os.path.join(base, "received")],
            cwd=base,
        )  # fmt: skip
        self.addCleanup(server.stop)
        server.log.wait_for(r"listening for TFTP on UDP")
        env = child_env()
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        ran = 0
        failures = []
        for document in documents():
            for line, language, code, marked in examples(document):
                if language not in ("python", "sh") or marked:
                    continue
                where = f"{os.path.relpath(document, ROOT)}:{line}"
                cwd = os.path.join(base, f"run{ran}")
                for name in FIXTURES:
                    write_file(os.path.join(cwd, name), os.urandom(3000))
                if language == "python":
                    command = [sys.executable, "-c", re.sub(r"\b8000\b", str(port), code)]
                else:
                    command = ["bash", "-e", "-c", code]
                try:
                    result = subprocess.run(
                        command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
                        env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                    )  # fmt: skip
                except subprocess.TimeoutExpired:
                    failures.append(f"{where}: still running after {PROCESS_TIMEOUT} s")
                    continue
                ran += 1
                if result.returncode != 0:
                    failures.append(f"{where}: exit {result.returncode}\n{result.stderr[-2000:]}")
        self.assertEqual(failures, [], "\n\n".join(failures))
        self.assertGreaterEqual(ran, 5)

    def test_marker_must_be_right_before_a_fence(self) -> None:
        """The extraction honours a marker only on the line before the fence."""
        path = os.path.abspath(self.mktemp())
        write_file(
            path,
            b"<!-- not run: remote -->\n```sh\nfalse\n```\n\n"
            b"<!-- not run: x -->\n\n```sh\ntrue\n```\n",
        )
        self.assertEqual(
            [(language, marked) for _, language, _, marked in examples(path)],
            [("sh", True), ("sh", False)],
        )
