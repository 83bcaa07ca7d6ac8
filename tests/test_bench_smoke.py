"""Every benchmark script still runs: a tiny C{--smoke} pass of each (not a measurement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 120


def run_bench(script: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run C{bench/<script> --smoke EXTRA...} from the repository root, bounded in time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [ROOT, env.get("PYTHONPATH", "")] if p)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", script), "--smoke", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


class BenchSmokeTests(unittest.TestCase):
    def check(self, script: str, results: int) -> None:
        result = run_bench(script)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        self.assertGreaterEqual(len(lines), results, result.stdout + result.stderr)

    def test_tcp(self) -> None:
        """bench/tcp.py --smoke: socat and filexfer both move a small file; a result is printed."""
        self.check("tcp.py", 2)

    def test_concurrent(self) -> None:
        """bench/concurrent.py --smoke: parallel big and many small uploads print results."""
        self.check("concurrent.py", 2)

    def test_tftp(self) -> None:
        """bench/tftp.py --smoke: all five TFTP pairings download intact; results are printed."""
        self.check("tftp.py", 3)

    def test_lossy(self) -> None:
        """bench/lossy.py --smoke: curl, tftp-hpa and atftp through the lossy relay; a result."""
        self.check("lossy.py", 1)

    def test_peers(self) -> None:
        """bench/peers.py --smoke: filexfer, an rsync daemon, socat + sync and magic-wormhole
        (its own mailbox and relay on loopback) move one file, then 4 at once; every ratio
        the speed issue names is printed, and --json keeps them."""
        path = os.path.abspath(self.mktemp())
        result = run_bench("peers.py", "--json", path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        names = [
            line.partition(":")[0]
            for line in result.stdout.splitlines()
            if line.startswith("RESULT ")
        ]
        self.assertEqual(
            names,
            [
                "RESULT peers 4MiB vs rsync",
                "RESULT peers 4MiB vs socat+sync",
                "RESULT peers 4MiB vs wormhole",
                "RESULT peers 4MiB client cpu",
                "RESULT peers 4MiB rss MiB",
                "RESULT peers 4x4MiB vs 4 rsync",
            ],
        )
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
        self.assertEqual(
            [one["reference"]["label"] for one in report["comparisons"]],
            ["rsync", "socat+sync", "wormhole", "4x rsync"],
        )
        self.assertIn("cpu_seconds_per_gib", report["comparisons"][0]["ours"])

    def test_resume(self) -> None:
        """bench/resume.py --smoke: a 5-byte upload alone and during a resume; a result line."""
        self.check("resume.py", 1)

    def test_json(self) -> None:
        """--json FILE: the comparisons printed as RESULT lines, with machine and date, as JSON."""
        path = os.path.abspath(self.mktemp())
        result = run_bench("tcp.py", "--json", path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
        self.assertEqual((report["format"], report["benchmark"], report["smoke"]), (1, "tcp", True))
        self.assertTrue(report["machine"] and report["date"] and report["references"])
        (comparison,) = report["comparisons"]
        self.assertEqual(comparison["name"], "tcp 4MiB")
        self.assertEqual(
            (comparison["ours"]["label"], comparison["reference"]["label"]), ("filexfer", "socat")
        )
        self.assertEqual(comparison["ours"]["bytes"], 4 << 20)
        printed = [
            line for line in result.stdout.splitlines() if line.startswith("RESULT tcp 4MiB:")
        ]
        self.assertIn(f"ratio={comparison['ratio']:.2f}", printed[0])

    @pytest.mark.slow
    def test_s3(self) -> None:
        """bench/s3.py --smoke: disk, SeaweedFS, two nodes; two result lines (starts SeaweedFS)."""
        self.check("s3.py", 2)
