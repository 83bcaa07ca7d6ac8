"""The documentation site builds with C{sphinx-build -W --keep-going}, pictures included.

The build fails on any warning: a broken reference to the public API
(nitpicky), a public name without a docstring, a page left out of the
table of contents, a picture that cannot be drawn. Each picture is drawn
from the code or from docs/_data/ during the build, so the site cannot show
a machine, a module map or a figure the code no longer has.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from twisted.trial import unittest

import filexfer
import filexfer.testing
from tests.helpers import ROOT, child_env

DOCS = os.path.join(ROOT, "docs")
BUILD_TIMEOUT = 600
PICTURES = (
    "tcp-states.svg",
    "receiver-machine.svg",
    "sender-machine.svg",
    "fx1-resume.svg",
    "tftp-window.svg",
    "module-map.svg",
    "bench-tcp.svg",
    "bench-tftp.svg",
    "bench-concurrent.svg",
    "bench-resume.svg",
    "bench-peers.svg",
)


def _help(*command: str) -> str:
    env = child_env()
    env["COLUMNS"] = "80"
    result = subprocess.run(
        [sys.executable, "-m", "filexfer", *command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return result.stdout


class DocsSiteTests(unittest.TestCase):
    built: str = ""

    def build(self) -> str:
        """Build the site once for this test case; return the output directory."""
        if not DocsSiteTests.built:
            out = os.path.abspath(self.mktemp())
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sphinx",
                    "-W",
                    "--keep-going",
                    "-q",
                    "-b",
                    "html",
                    "-d",
                    out + ".doctrees",
                    DOCS,
                    out,
                ],
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=BUILD_TIMEOUT,
                cwd=ROOT,
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            DocsSiteTests.built = out
        return DocsSiteTests.built

    def page(self, name: str) -> str:
        with open(os.path.join(self.build(), name), encoding="utf-8") as handle:
            return handle.read()

    def test_builds_with_every_picture(self) -> None:
        """-W passes, and every picture was drawn and is shown on a page."""
        images = os.listdir(os.path.join(self.build(), "_images"))
        for picture in PICTURES:
            self.assertIn(picture, images)
            with open(os.path.join(self.build(), "_images", picture), encoding="utf-8") as handle:
                self.assertIn("<svg", handle.read(2000))

    def test_pages(self) -> None:
        """Each page the site promises exists."""
        for page in (
            "index",
            "quickstart",
            "usage",
            "cli",
            "twistd",
            "connection",
            "protocol",
            "tftp",
            "architecture",
            "performance",
            "security",
            "api",
            "changelog",
        ):
            self.assertTrue(os.path.exists(os.path.join(self.build(), f"{page}.html")), page)

    def test_every_public_name_documented(self) -> None:
        """Each name of filexfer.__all__ and filexfer.testing.__all__ has an API entry."""
        api = self.page("api.html")
        for name in filexfer.__all__:
            if name != "__version__":
                self.assertIn(f'id="filexfer.{name}"', api)
        for name in filexfer.testing.__all__:
            self.assertIn(f'id="filexfer.testing.{name}"', api)

    def test_command_reference_is_the_help(self) -> None:
        """The command reference shows exactly what --help prints, examples last."""
        reference = _unescape(self.page("cli.html"))
        for command in ((), ("send",), ("get",), ("serve",)):
            text = _help(*command)
            self.assertIn(text.rstrip("\n"), reference, command)
            last = text.rstrip("\n").split("\n\n")[-1]
            self.assertRegex(last, r"(?i)^examples?:", command)

    def test_twistd_options_table(self) -> None:
        """The plugin's page lists every option of filexfer.service.Options."""
        from filexfer.service import Options

        page = self.page("twistd.html")
        for name, *_ in Options.optParameters + Options.optFlags:
            self.assertIn(f"--{name}<", page)
        self.assertIn("--listen<", page)
        self.assertIn("--allow<", page)

    def test_sequences_recorded_from_the_code(self) -> None:
        """The resume shows the receiver's real replies; the TFTP picture real datagrams."""
        sys.path.insert(0, os.path.join(DOCS, "_ext"))
        self.addCleanup(sys.path.remove, os.path.join(DOCS, "_ext"))
        import fxsequences

        upload = [(step.kind, step.text) for step in fxsequences.record_resumed_upload()]
        replies = [text for kind, text in upload if kind == "left"]
        self.assertTrue(replies[0].startswith("ok 0 "), replies)
        self.assertTrue(replies[1].startswith(f"ok {384 * 1024} "), replies)
        self.assertTrue(replies[2].startswith("done 1048576 "), replies)
        window = [(step.kind, step.text) for step in fxsequences.record_lost_block()]
        self.assertIn(("lost-left", "DATA 3 (512 bytes)"), window)
        lost_at = window.index(("lost-left", "DATA 3 (512 bytes)"))
        self.assertIn(("right", "ACK 2"), window[lost_at:])
        self.assertEqual(window[-1], ("right", "ACK 10"))

    def test_committed_benchmark_data(self) -> None:
        """docs/_data/ holds one real (not smoke) run of each benchmark, with machine and date."""
        for name in ("tcp", "tftp", "concurrent", "resume"):
            with open(os.path.join(DOCS, "_data", f"{name}.json"), encoding="utf-8") as handle:
                report = json.load(handle)
            self.assertEqual(
                (report["format"], report["benchmark"], report["smoke"]), (1, name, False)
            )
            self.assertTrue(report["machine"] and report["date"])


def _unescape(html: str) -> str:
    """The text of an HTML page as a reader sees it in a literal block."""
    text = re.sub(r"<[^>]+>", "", html)
    for entity, char in (
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", '"'),
        ("&#39;", "'"),
        ("&amp;", "&"),
    ):
        text = text.replace(entity, char)
    return text
