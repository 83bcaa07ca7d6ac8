"""Real iPXE firmware, booted under qemu, fetches and runs scripts from our TFTP server."""

from __future__ import annotations

import os

import pytest
from twisted.trial import unittest

from tests.helpers import boot_ipxe, have_ipxe_qemu, start_twistd_tftp, write_file

BOOT_TIMEOUT = 120.0
"""Seconds iPXE may take to boot and fetch under software emulation (about 10 here)."""

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class IPXETests(unittest.TestCase):
    """iPXE (Debian's ipxe.lkrn) over qemu user networking, the server on 127.0.0.1."""

    def setUp(self) -> None:
        if not have_ipxe_qemu():
            raise AssertionError(
                "qemu-system-x86 and ipxe are missing: run scripts/install-test-tools"
            )
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        self.cwd = cwd

    def test_chain_a_script(self) -> None:
        """iPXE gets boot.ipxe over TFTP, runs it, and chains a second script from us."""
        server, port = start_twistd_tftp(self, self.root, self.cwd)
        write_file(
            os.path.join(self.root, "boot.ipxe"),
            b"#!ipxe\necho first script, I am ${net0/ip}\n"
            + f"chain tftp://10.0.2.2:{port}/next/second.ipxe\n".encode(),
        )
        write_file(
            os.path.join(self.root, "next", "second.ipxe"),
            b"#!ipxe\necho FILEXFER-CHAINED-OK\nshell\n",
        )
        machine = boot_ipxe(self, f"tftp://10.0.2.2:{port}/boot.ipxe")
        machine.log.wait_for(r"FILEXFER-CHAINED-OK", BOOT_TIMEOUT)
        self.assertIn("first script, I am 10.0.2.15", machine.log.text())
        server.log.wait_for(r"tftp-rrq \S+ 'next/second.ipxe' 38 bytes .*: ok")

    def test_script_made_per_client(self) -> None:
        """A --tftp-source template renders boot.ipxe for the asking client (through qemu's
        NAT, in single-port mode); iPXE runs what it got."""
        template = write_file(
            os.path.join(self.cwd, "boot.ipxe.in"),
            b"#!ipxe\necho FILEXFER-HELLO {client} asked {server}:{server_port}\nshell\n",
        )
        source = f"filexfer.tftp.sources:template_source=boot.ipxe:{template}"
        server, port = start_twistd_tftp(
            self, self.root, self.cwd, "--tftp-source", source, "--tftp-single-port"
        )
        machine = boot_ipxe(self, f"tftp://10.0.2.2:{port}/boot.ipxe")
        machine.log.wait_for(
            rf"FILEXFER-HELLO 127\.0\.0\.1 asked 127\.0\.0\.1:{port}", BOOT_TIMEOUT
        )
        server.log.wait_for(r"tftp-rrq \S+ 'boot.ipxe' \d+ bytes .*: ok")
