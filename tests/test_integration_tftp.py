"""`twistd filexfer` serves TFTP beside the TCP receiver: curl and `filexfer` against it."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial import unittest

from tests.helpers import (
    LOOPBACK,
    payload,
    run_filexfer,
    sha256_file,
    start_twistd_tftp,
    write_file,
)


class _TwistdTFTP(unittest.TestCase):
    """A twistd serving TFTP (and TCP) into C{self.root}, on UDP port C{self.udp}."""

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.root = os.path.join(base, "root")
        self.server, self.udp = start_twistd_tftp(self, self.root, base)
        self.url = f"tftp://{LOOPBACK}:{self.udp}"


class TwistdTFTPTests(_TwistdTFTP):
    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run curl (installed by scripts/install-test-tools), bounded in time."""
        curl = shutil.which("curl")
        self.assertIsNotNone(curl, "curl is missing: run scripts/install-test-tools")
        assert curl is not None
        return subprocess.run(
            [curl, "-sS", "--max-time", "30", *args], capture_output=True, text=True, timeout=60
        )

    def test_curl_and_filexfer_over_tftp(self) -> None:
        """curl uploads and downloads through twistd's TFTP port; `filexfer get` reads it too."""
        source = write_file(os.path.join(self.base, "boot.img"), payload(700_000, seed=3))
        url = f"tftp://{LOOPBACK}:{self.udp}/images/boot.img"
        result = self.curl("--tftp-blksize", "1428", "-T", source, url)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            sha256_file(os.path.join(self.root, "images", "boot.img")), sha256_file(source)
        )

        fetched = os.path.join(self.base, "curl-copy.img")
        result = self.curl("-o", fetched, url)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sha256_file(fetched), sha256_file(source))

        ours = os.path.join(self.base, "ours.img")
        got = run_filexfer("get", "--no-progress", url, ours)
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertEqual(sha256_file(ours), sha256_file(source))
        self.server.log.wait_for(r"tftp-wrq .*'images/boot.img' 700000 bytes")
        self.server.log.wait_for(r"tftp-rrq .*'images/boot.img' 700000 bytes")

    def tool(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a TFTP client binary (installed by scripts/install-test-tools), bounded."""
        binary = shutil.which(name)
        self.assertIsNotNone(binary, f"{name} is missing: run scripts/install-test-tools")
        assert binary is not None
        return subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=60, cwd=self.base
        )

    def test_tftp_hpa_and_atftp_through_twistd(self) -> None:
        """tftp-hpa (lock-step) and atftp (windowed) put and get intact files through twistd."""
        source = write_file(os.path.join(self.base, "fw.bin"), payload(300_000, seed=8))
        port = str(self.udp)
        put = self.tool("tftp", "-m", "binary", LOOPBACK, port, "-c", "put", source, "hpa.bin")
        self.assertEqual(put.returncode, 0, put.stdout + put.stderr)
        got = self.tool("tftp", "-m", "binary", LOOPBACK, port, "-c", "get", "hpa.bin", "hpa-copy")
        self.assertEqual(got.returncode, 0, got.stdout + got.stderr)

        windowed = ["--option", "windowsize 16", "--option", "blksize 1428"]
        put = self.tool("atftp", *windowed, "-p", "-l", source, "-r", "at.bin", LOOPBACK, port)
        self.assertEqual(put.returncode, 0, put.stdout + put.stderr)
        got = self.tool("atftp", *windowed, "-g", "-r", "at.bin", "-l", "at-copy", LOOPBACK, port)
        self.assertEqual(got.returncode, 0, got.stdout + got.stderr)

        expected = sha256_file(source)
        for stored in ("hpa.bin", "at.bin"):
            self.assertEqual(sha256_file(os.path.join(self.root, stored)), expected, stored)
        for copy in ("hpa-copy", "at-copy"):
            self.assertEqual(sha256_file(os.path.join(self.base, copy)), expected, copy)

    def test_missing_file_is_one_line(self) -> None:
        """`filexfer get` of a missing file: exit 1 and one line naming TFTP error 1."""
        result = run_filexfer("get", "--no-progress", f"tftp://{LOOPBACK}:{self.udp}/nope.bin")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("TFTP error 1", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_get_refuses_to_overwrite(self) -> None:
        """`filexfer get` keeps an existing LOCAL file unless --overwrite is given."""
        source = write_file(os.path.join(self.root, "new.bin"), b"new contents")
        local = write_file(os.path.join(self.base, "mine.bin"), b"precious")
        url = f"tftp://{LOOPBACK}:{self.udp}/new.bin"
        refused = run_filexfer("get", "--no-progress", url, local)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("exists; use --overwrite", refused.stderr)
        with open(local, "rb") as handle:
            self.assertEqual(handle.read(), b"precious")
        replaced = run_filexfer("get", "--no-progress", "--overwrite", url, local)
        self.assertEqual(replaced.returncode, 0, replaced.stderr)
        self.assertEqual(sha256_file(local), sha256_file(source))

    def test_one_log_line_per_transfer(self) -> None:
        """A TFTP upload and a download are one log line each: a transfer's own UDP
        port logs neither Twisted's "... starting on N" nor "(UDP Port N Closed)"."""
        source = write_file(os.path.join(self.base, "one.bin"), payload(50_000, seed=4))
        url = f"tftp://{LOOPBACK}:{self.udp}/one.bin"
        result = self.curl("-T", source, url)
        self.assertEqual(result.returncode, 0, result.stderr)
        result = self.curl("-o", os.path.join(self.base, "copy.bin"), url)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.server.log.wait_for(r"tftp-rrq .*'one.bin' 50000 bytes")
        self.server.stop()  # every line is in once the process has ended
        log = self.server.log
        self.assertEqual(log.count(r"'one\.bin'"), 2, log.text())
        self.assertEqual(log.count(r"tftp-wrq .*'one\.bin' 50000 bytes"), 1, log.text())
        self.assertEqual(log.count(r"tftp-rrq .*'one\.bin' 50000 bytes"), 1, log.text())
        # Only the service's own TFTP port (and the TCP port) may start and close.
        tcp = str(self.server.port)
        for line in log.lines:
            for word in ("starting on", "UDP Port"):
                if word in line:
                    self.assertTrue(
                        line.rstrip(")").endswith(
                            (f" {self.udp}", f" {tcp}", f" {self.udp} Closed")
                        ),
                        log.text(),
                    )


class DevicesAndStockClientsTests(_TwistdTFTP):
    """What devices and stock clients send (issue 10), through twistd's TFTP port."""

    def run_tool(
        self, name: str, *args: str, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a client binary (installed by scripts/install-test-tools), bounded in time."""
        binary = shutil.which(name)
        self.assertIsNotNone(binary, f"{name} is missing: run scripts/install-test-tools")
        assert binary is not None
        return subprocess.run(
            [binary, *args], capture_output=True, timeout=60, cwd=self.base, input=stdin
        )

    def test_leading_slash_names(self) -> None:
        """curl and tftp-hpa read /pxelinux.cfg/default and /boot.cfg, and store /up.cfg."""
        write_file(os.path.join(self.root, "pxelinux.cfg", "default"), b"DEFAULT linux\n")
        write_file(os.path.join(self.root, "boot.cfg"), b"boot\n")
        got = self.run_tool("curl", "-sS", "--max-time", "30", f"{self.url}//boot.cfg")
        self.assertEqual((got.returncode, got.stdout), (0, b"boot\n"), got.stderr)
        port = str(self.udp)
        got = self.run_tool("tftp", LOOPBACK, port, "-c", "get", "/pxelinux.cfg/default", "default")
        self.assertEqual(got.returncode, 0, got.stdout + got.stderr)
        self.assertEqual(
            sha256_file(os.path.join(self.base, "default")),
            sha256_file(os.path.join(self.root, "pxelinux.cfg", "default")),
        )
        source = write_file(os.path.join(self.base, "up.cfg"), b"uploaded\n")
        put = self.run_tool("tftp", LOOPBACK, port, "-c", "put", source, "/up.cfg")
        self.assertEqual(put.returncode, 0, put.stdout + put.stderr)
        self.assertEqual(sha256_file(os.path.join(self.root, "up.cfg")), sha256_file(source))

    def test_curl_upload_from_stdin(self) -> None:
        """`cat f | curl -T - tftp://...` (tsize 0: size unknown) is stored whole."""
        data = payload(300_001, seed=11)
        result = self.run_tool(
            "curl", "-sS", "--max-time", "30", "-T", "-", f"{self.url}/x.bin", stdin=data
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(os.path.join(self.root, "x.bin"), "rb") as handle:
            self.assertEqual(handle.read(), data)

    def test_existing_name_is_refused_not_renamed(self) -> None:
        """A second upload of fw.bin (default policy) fails with ERROR 6; no 'fw (1).bin'."""
        first = write_file(os.path.join(self.base, "one"), b"first")
        second = write_file(os.path.join(self.base, "two"), b"second")
        ok = self.run_tool("curl", "-sS", "--max-time", "30", "-T", first, f"{self.url}/fw.bin")
        self.assertEqual(ok.returncode, 0, ok.stderr)
        refused = self.run_tool(
            "curl", "-sS", "--max-time", "30", "-T", second, f"{self.url}/fw.bin"
        )
        self.assertEqual(refused.returncode, 73, refused.stderr)  # CURLE_REMOTE_FILE_EXISTS
        ours = run_filexfer("send", "--no-progress", second, f"{self.url}/fw.bin")
        self.assertEqual(ours.returncode, 1, ours.stderr)
        self.assertIn("TFTP error 6", ours.stderr)
        self.assertEqual(sorted(os.listdir(self.root)), [".filexfer", "fw.bin"])
        self.assertEqual(sha256_file(os.path.join(self.root, "fw.bin")), sha256_file(first))

    def test_url_percent_and_mode(self) -> None:
        """`filexfer get` decodes %20 and reads ;mode=netascii; printed URLs are encoded."""
        write_file(os.path.join(self.root, "my file.txt"), b"spaced\n")
        write_file(os.path.join(self.root, "mode.txt"), b"a\nb\n")
        got = run_filexfer("get", "--no-progress", f"{self.url}/my%20file.txt", cwd=self.base)
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertIn(f"{self.url}/my%20file.txt -> my file.txt: 7 bytes", got.stdout)
        got = run_filexfer(
            "get", "--no-progress", f"{self.url}/mode.txt;mode=netascii", cwd=self.base
        )
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertIn(f"{self.url}/mode.txt;mode=netascii -> mode.txt: 4 bytes", got.stdout)
        # netascii on the wire: each LF went as CR LF, 6 bytes for the 4 of the file.
        self.server.log.wait_for(r"tftp-rrq .*'mode\.txt' 6 bytes")
        self.server.log.wait_for(r"tftp-rrq .*'my file\.txt' 7 bytes")

    def test_send_mode_netascii(self) -> None:
        """`filexfer send --mode netascii` uploads as netascii (CR LF on the wire)."""
        source = write_file(os.path.join(self.base, "text.txt"), b"one\ntwo\n")
        sent = run_filexfer(
            "send", "--no-progress", "--mode", "netascii", source, f"{self.url}/t%20x.txt"
        )
        self.assertEqual(sent.returncode, 0, sent.stderr)
        self.assertIn(f"{self.url}/t%20x.txt;mode=netascii", sent.stdout)
        self.server.log.wait_for(r"tftp-wrq .*'t x\.txt' 10 bytes")
        self.assertEqual(sha256_file(os.path.join(self.root, "t x.txt")), sha256_file(source))
