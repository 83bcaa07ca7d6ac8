"""--metrics, --event-log and --on-stored in real processes: twistd, promtool, hooks, workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from .helpers import (
    LOOPBACK,
    ServerProcess,
    blake3_bytes,
    free_port,
    payload,
    run_filexfer,
    sha256_bytes,
    start_serve,
    start_twistd,
    wait_until,
    write_file,
)

pytestmark = pytest.mark.integration


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as reply:
        text: str = reply.read().decode()
        return text


def _value(text: str, name: str, **labels: str) -> float:
    """The sample C{name} with exactly C{labels}, parsed with prometheus_client's parser."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


def _send(testcase: unittest.TestCase, port: int, name: str, data: bytes, *options: str) -> None:
    """Upload C{data} as C{name} (C{filexfer send} puts the local file's name in DEST's folder)."""
    folder, _, base = name.rpartition("/")
    local = write_file(os.path.join(testcase.mktemp(), base), data)
    dest = f"{LOOPBACK}:{port}" + (f"/{folder}" if folder else "")
    sent = run_filexfer("send", *options, local, dest)
    assert sent.returncode == 0, sent.stderr


class MetricsProcessTests(unittest.TestCase):
    """/metrics of a real twistd: valid for promtool, counting the uploads."""

    def test_promtool_and_counts(self) -> None:
        """Two uploads and a refusal show up; promtool check metrics finds no problem."""
        promtool = shutil.which("promtool")
        if promtool is None:
            self.fail("promtool is missing: run scripts/install-test-tools")
        metrics_port = free_port()
        root = os.path.abspath(self.mktemp())
        server = start_twistd(
            self, root, "--metrics", f"tcp:{metrics_port}:interface={LOOPBACK}", "--max-size", "1K"
        )
        server.log.wait_for(rf"serving metrics on http://{LOOPBACK}:{metrics_port}/metrics")
        _send(self, server.port, "a.bin", payload(500))
        _send(self, server.port, "b.bin", payload(600, seed=1))
        local = write_file(os.path.join(self.mktemp(), "big"), payload(5000))
        self.assertNotEqual(
            run_filexfer("send", local, f"{LOOPBACK}:{server.port}/big").returncode, 0
        )
        text = _scrape(metrics_port)
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        stored = _value(
            text, "filexfer_transfers_total", protocol="fx/1", direction="upload", outcome="stored"
        )
        self.assertEqual(stored, 2)
        self.assertEqual(
            _value(text, "filexfer_bytes_total", protocol="fx/1", direction="upload"), 1100
        )
        self.assertEqual(_value(text, "filexfer_refusals_total", protocol="fx/1", code="413"), 1)
        self.assertEqual(_value(text, "filexfer_active_transfers", protocol="fx/1"), 0)
        self.assertNotIn("a.bin", text)
        self.assertNotIn(LOOPBACK, text)

    @pytest.mark.slow
    def test_workers_summed(self) -> None:
        """With --workers 2 the first process's /metrics counts both processes' uploads."""
        metrics_port = free_port()
        port = free_port()
        root = os.path.abspath(self.mktemp())
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        command = [
            sys.executable, "-m", "filexfer", "serve", "--port", str(port), "--no-tftp",
            "--workers", "2", "--root", root,
            "--metrics", f"tcp:{metrics_port}:interface={LOOPBACK}",
        ]  # fmt: skip
        server = ServerProcess(command, cwd=cwd)
        self.addCleanup(server.stop)
        server.log.wait_for(r"serving metrics on")
        server.log.wait_for(r"worker 1: .*listening for TCP")
        sent = 0
        # the kernel spreads connections: send until each process has stored one (bounded)
        while sent < 40 and not (
            server.log.count(r"^\S+ \[filexfer#info\] fx/1 .*stored as") and
            server.log.count(r"worker 1: .*fx/1 .*stored as")
        ):  # fmt: skip
            _send(self, port, f"f{sent}.bin", payload(100, seed=sent))
            sent += 1
        self.assertTrue(server.log.count(r"worker 1: .*fx/1 .*stored as"), server.log.text())
        wait_until(
            lambda: _value(
                _scrape(metrics_port), "filexfer_transfers_total",
                protocol="fx/1", direction="upload", outcome="stored",
            ) == sent,
            10, "the workers' uploads in /metrics",
        )  # fmt: skip
        text = _scrape(metrics_port)
        self.assertEqual(
            _value(text, "filexfer_bytes_total", protocol="fx/1", direction="upload"), 100 * sent
        )


class EventLogProcessTests(unittest.TestCase):
    """--event-log of a real twistd, rotated as logrotate does it."""

    def test_rename_and_sighup(self) -> None:
        """After a rename and SIGHUP, the next line goes to a new file under the old name."""
        events = os.path.abspath(self.mktemp())
        root = os.path.abspath(self.mktemp())
        server = start_twistd(self, root, "--event-log", events)
        data = payload(1234)
        _send(self, server.port, "one.bin", data, "--digest", "sha256")
        wait_until(lambda: os.path.exists(events) and os.path.getsize(events) > 0, 10, "a line")
        os.rename(events, events + ".1")
        server.signal(signal.SIGHUP)
        server.log.wait_for(r"--event-log .*: reopened")
        _send(self, server.port, "two.bin", payload(10))
        wait_until(lambda: os.path.exists(events) and os.path.getsize(events) > 0, 10, "a new line")
        with open(events + ".1") as rotated:
            [first] = [json.loads(line) for line in rotated]
        with open(events) as fresh:
            [second] = [json.loads(line) for line in fresh]
        self.assertEqual(
            (
                first["path"],
                first["stored_path"],
                first["bytes"],
                first["sha256"],
                first["outcome"],
            ),
            ("one.bin", "one.bin", 1234, sha256_bytes(data), "stored"),
        )
        self.assertIsNone(first["blake3"])  # a client that asked for none gets SHA-256
        self.assertEqual((second["sha256"], second["blake3"]), (None, blake3_bytes(payload(10))))
        self.assertEqual(
            (first["protocol"], first["direction"], first["error_code"]), ("fx/1", "upload", None)
        )
        self.assertTrue(first["peer"].startswith(f"{LOOPBACK}:"))
        self.assertEqual(second["path"], "two.bin")
        self.assertIsNone(server.process.poll())  # SIGHUP did not end it

    def test_stdout(self) -> None:
        """filexfer serve --event-log - writes the JSON lines on stdout, the log on stderr."""
        root = os.path.abspath(self.mktemp())
        server = start_serve(self, root, "--event-log", "-")
        _send(self, server.port, "x.bin", payload(10))
        line = server.log.wait_for(r'^\{"time":')
        self.assertEqual(json.loads(line.string)["path"], "x.bin")


def _hook_script(testcase: unittest.TestCase, body: str) -> str:
    path = write_file(
        os.path.join(os.path.abspath(testcase.mktemp()), "hook.py"),
        f"#!{sys.executable}\n{body}".encode(),
    )
    os.chmod(path, 0o755)
    return path


class HookProcessTests(unittest.TestCase):
    """--on-stored runs real processes with the facts in the environment, bounded."""

    def test_facts_in_environment(self) -> None:
        """The hook gets FILEXFER_PATH, _SIZE, _SHA256, _PEER, _PROTOCOL; its argv as given."""
        out = os.path.abspath(self.mktemp())
        script = _hook_script(
            self,
            "import json, os, sys\n"
            "facts = {k: v for k, v in os.environ.items() if k.startswith('FILEXFER_')}\n"
            "facts['argv'] = sys.argv[1:]\n"
            f"open({out!r}, 'w').write(json.dumps(facts))\n",
        )
        root = os.path.abspath(self.mktemp())
        server = start_twistd(self, root, "--on-stored", f"{script} 'two words' $HOME")
        data = payload(777)
        _send(self, server.port, "dir/a;rm -rf x $(id).bin", data, "--digest", "sha256")
        wait_until(
            lambda: os.path.exists(out) and os.path.getsize(out) > 0, 15, "the hook's output"
        )
        with open(out) as handle:
            facts = json.load(handle)
        stored = os.path.join(root, "dir", "a;rm -rf x $(id).bin")
        self.assertEqual(facts["FILEXFER_PATH"], stored)
        self.assertEqual(facts["FILEXFER_NAME"], "dir/a;rm -rf x $(id).bin")
        self.assertEqual(
            (facts["FILEXFER_SIZE"], facts["FILEXFER_SHA256"], facts["FILEXFER_BLAKE3"]),
            ("777", sha256_bytes(data), ""),
        )
        self.assertEqual(facts["FILEXFER_PROTOCOL"], "fx/1")
        self.assertTrue(facts["FILEXFER_PEER"].startswith(f"{LOOPBACK}:"))
        self.assertEqual(facts["argv"], ["two words", "$HOME"])  # no shell expanded anything

    def test_server_declines_blake3_for_its_hooks(self) -> None:
        """Fresh-eyes finding on issue 16: a hook that checks FILEXFER_SHA256 got an
        empty value once clients asked for BLAKE3; with --digests sha256 the server
        declines, the default client verifies SHA-256 and says so, the hook gets it."""
        out = os.path.abspath(self.mktemp())
        script = _hook_script(
            self,
            "import json, os\n"
            "facts = {k: v for k, v in os.environ.items() if k.startswith('FILEXFER_')}\n"
            f"open({out!r}, 'w').write(json.dumps(facts))\n",
        )
        root = os.path.abspath(self.mktemp())
        server = start_twistd(self, root, "--on-stored", script, "--digests", "sha256")
        data = payload(4321)
        local = write_file(os.path.join(self.mktemp(), "d.bin"), data)
        sent = run_filexfer("send", local, f"{LOOPBACK}:{server.port}")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        self.assertIn("verified with SHA-256", sent.stdout)
        wait_until(
            lambda: os.path.exists(out) and os.path.getsize(out) > 0, 15, "the hook's output"
        )
        with open(out) as handle:
            facts = json.load(handle)
        self.assertEqual(
            (facts["FILEXFER_SHA256"], facts["FILEXFER_BLAKE3"]), (sha256_bytes(data), "")
        )

    def test_failing_and_hanging_hooks(self) -> None:
        """A failing hook is logged; a hanging one is stopped at the timeout; uploads go on."""
        script = _hook_script(
            self,
            "import os, sys, time\n"
            "if os.environ['FILEXFER_NAME'] == 'fail.bin':\n"
            "    print('about to fail'); sys.exit(3)\n"
            "time.sleep(60)\n",
        )
        root = os.path.abspath(self.mktemp())
        server = start_twistd(
            self, root, "--on-stored", script, "--on-stored-timeout", "1",
            "--on-stored-concurrency", "1",
        )  # fmt: skip
        _send(self, server.port, "fail.bin", payload(10))
        server.log.wait_for(r"--on-stored 'fail.bin': about to fail")
        server.log.wait_for(r"--on-stored 'fail.bin': failed with exit status 3")
        _send(self, server.port, "hang.bin", payload(10))
        # the one slot is taken by a hanging hook: uploads are stored all the same
        _send(self, server.port, "next.bin", payload(10, seed=2))
        self.assertTrue(os.path.exists(os.path.join(root, "next.bin")))
        server.log.wait_for(r"--on-stored 'hang.bin': still running after 1s: stopping it")
        server.log.wait_for(r"--on-stored 'hang.bin': timed out and stopped")
        server.log.wait_for(r"--on-stored 'next.bin': still running after 1s")

    def test_no_such_program(self) -> None:
        """A command that is not on $PATH is one line at start-up, exit status 2."""
        root = os.path.abspath(self.mktemp())
        result = run_filexfer("serve", "--root", root, "--on-stored", "no-such-hook-program --x")
        self.assertEqual(result.returncode, 2)
        self.assertIn(
            "--on-stored: no-such-hook-program: no such executable program", result.stderr
        )
