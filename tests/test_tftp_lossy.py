"""TFTP through a seeded, lossy UDP relay on loopback (L{filexfer.testing.LossyRelay}).

Our client and server: the relay drops 10 % of datagrams, duplicates 5 %,
delays every datagram by 1 ms and holds back 5 % of them 1-4 ms longer, so
that later datagrams overtake them.  Transfers in both directions must
finish intact, and the DATA packets sent more than once must stay near
what the losses force: no retransmission storm.

Stock clients (curl, tftp-hpa, atftp) against our server with its
defaults, through 5 % loss and 5 % duplication (issue 10 item 4): each
download and upload finishes within a bound in time, whatever C{timeout}
the client asks for (curl asks for 6 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from filexfer import DirectoryStorage
from filexfer.testing import LossyRelay
from filexfer.tftp import TFTPServerProtocol, download, upload
from tests import test_tftp_interop as interop
from tests.helpers import LOOPBACK, payload, sha256_bytes, sha256_file

LOSS = 0.10
DUPLICATE = 0.05
DELAY = 0.001
REORDER = 0.05
REORDER_DELAY = (0.001, 0.004)
TIMEOUT = 0.05  # retransmission timeout for both ends: keeps the test short
RETRIES = 30


def _share(relay: LossyRelay, direction: str) -> float:
    """DATA packets sent more than once, as a share of the distinct blocks."""
    return relay.retransmitted(direction) / len(relay.blocks_seen[direction])


class LossyRelayTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.server = TFTPServerProtocol(
            storage=DirectoryStorage(self.root), reactor=reactor, timeout=TIMEOUT, retries=RETRIES
        )
        port = reactor.listenUDP(0, self.server, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        self.server_address = (LOOPBACK, port.getHost().port)

    @defer.inlineCallbacks
    def round_trip(self, seed: int, size: int, **options: Any) -> Any:
        """Upload then download C{size} bytes through a fresh relay; return the relays."""
        data = payload(size, seed=seed)
        local = os.path.abspath(self.mktemp())
        os.makedirs(local)
        source = os.path.join(local, "source.bin")
        with open(source, "wb") as handle:
            handle.write(data)
        relays = []
        for direction in ("up", "down"):
            relay = LossyRelay(
                reactor,
                self.server_address,
                seed=seed * 10 + len(relays),
                loss=LOSS,
                duplicate=DUPLICATE,
                delay=DELAY,
                reorder=REORDER,
                reorder_delay=REORDER_DELAY,
            )
            host, port = relay.start()
            self.addCleanup(relay.stop)
            relays.append(relay)
            common = {"timeout": TIMEOUT, "retries": RETRIES, **options}
            if direction == "up":
                sent = yield upload(reactor, host, port, source, "f.bin", **common)
                self.assertEqual(sent, size)
                self.assertEqual(sha256_file(os.path.join(self.root, "f.bin")), sha256_bytes(data))
            else:
                copy = os.path.join(local, "copy.bin")
                got = yield download(reactor, host, port, "f.bin", copy, **common)
                self.assertEqual(got, size)
                self.assertEqual(sha256_file(copy), sha256_bytes(data))
        return relays

    @defer.inlineCallbacks
    def test_lockstep_through_loss(self) -> Any:
        """Lock-step (blksize 512): intact both ways; resends stay near the loss rate."""
        up, down = yield self.round_trip(seed=1, size=128 * 1024, blksize=512, windowsize=1)
        # A block is resent when its DATA or its ACK is lost: about 1/0.9^2 - 1 = 23 %.
        self.assertGreater(up.dropped, 0)
        self.assertLess(_share(up, "to-server"), 0.45)
        self.assertLess(_share(down, "to-client"), 0.45)

    @defer.inlineCallbacks
    def test_windowed_through_loss(self) -> Any:
        """Windowed (blksize 1428, window 8): intact both ways; no retransmission storm."""
        up, down = yield self.round_trip(seed=2, size=1024 * 1024, blksize=1428, windowsize=8)
        # A loss costs at most the rest of its window (go-back-N): bounded by the window.
        self.assertLess(_share(up, "to-server"), 8 * LOSS * 2)
        self.assertLess(_share(down, "to-client"), 8 * LOSS * 2)


STOCK_LOSS = 0.05
STOCK_DUPLICATE = 0.05
STOCK_SIZE = 300 * 1024
STOCK_BOUND = 30.0  # seconds per transfer; before issue 10 a curl download took ~150 s


@pytest.mark.integration
@pytest.mark.slow
class StockClientsThroughLossTests(interop._Tools):
    """curl, tftp-hpa and atftp download and upload 300 KB through 5 % loss, 5 % duplication.

    The server runs with its defaults (timeout 1 s, retries 5); curl asks
    for C{timeout 6}.  Each transfer must end intact within STOCK_BOUND
    seconds (it takes a few); the relay's counts are printed.
    """

    timeout = 300

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.server = TFTPServerProtocol(
            storage=DirectoryStorage(self.root, "overwrite"), reactor=reactor
        )
        port = reactor.listenUDP(0, self.server, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.server.stop_transfers)
        self.server_address = (LOOPBACK, port.getHost().port)
        self.data = payload(STOCK_SIZE, seed=11)
        self.source = os.path.join(self.work, "source.bin")
        with open(self.source, "wb") as handle:
            handle.write(self.data)

    @defer.inlineCallbacks
    def through_relay(
        self,
        seed: int,
        argv: Any,
        result: str,
        data: bytes | None = None,
    ) -> Generator[Any, Any, LossyRelay]:
        """Run C{argv(host, port)} through a fresh relay; check C{result} holds the data."""
        relay = LossyRelay(
            reactor, self.server_address, seed=seed, loss=STOCK_LOSS, duplicate=STOCK_DUPLICATE
        )
        host, port = relay.start()
        self.addCleanup(relay.stop)
        began = time.monotonic()
        yield self.run_tool(argv(host, str(port)), cwd=self.work)
        seconds = time.monotonic() - began
        print(
            f"\n{os.path.basename(argv(host, str(port))[0])} {seconds:.2f} s, "
            f"{relay.dropped} dropped, {relay.duplicated} duplicated, DATA resent "
            f"{relay.retransmitted('to-client')} to the client / "
            f"{relay.retransmitted('to-server')} to the server"
        )
        self.assertLess(seconds, STOCK_BOUND)
        self.assertEqual(sha256_file(result), sha256_bytes(self.data if data is None else data))
        return relay

    def stored(self, name: str) -> str:
        return os.path.join(self.root, name)

    @defer.inlineCallbacks
    def test_curl(self) -> Generator[Any, Any, None]:
        """curl (timeout 6, blksize 1428) downloads and uploads through the loss in seconds."""
        curl = self.tool("curl")
        with open(os.path.join(self.root, "c.bin"), "wb") as handle:
            handle.write(self.data)
        out = os.path.join(self.work, "c.out")
        options = ["-sS", "--tftp-blksize", "1428"]
        yield self.through_relay(
            1, lambda h, p: [curl, *options, "-o", out, f"tftp://{h}:{p}/c.bin"], out
        )
        yield self.through_relay(
            2,
            lambda h, p: [curl, *options, "-T", self.source, f"tftp://{h}:{p}/up-c.bin"],
            self.stored("up-c.bin"),
        )

    @defer.inlineCallbacks
    def test_curl_uploads_many_seeds(self) -> Generator[Any, Any, None]:
        """Fresh-eyes finding: 1 curl upload in 4 timed out (about 36 s) through this
        loss, when the server's ACK and both its quick repeats were lost (curl resends
        DATA only on a repeated ACK).  Ten seeds: no upload hangs, each ends within
        the bound, and whatever is stored is intact.

        Under duplication curl 7.88 sometimes sends a stream one block short of
        its file (its own bug: the blocks arrive numbered in order, the content
        is short); the announced tsize makes the server refuse it (ERROR, nothing
        stored), so curl fails fast there instead of storing a wrong file.
        """
        curl = self.tool("curl")
        options = ["-sS", "--tftp-blksize", "1428"]
        stored = failed = 0
        for seed in range(100, 110):
            name = f"up-{seed}.bin"
            relay = LossyRelay(
                reactor, self.server_address, seed=seed, loss=STOCK_LOSS, duplicate=STOCK_DUPLICATE
            )
            host, port = relay.start()
            self.addCleanup(relay.stop)
            argv = [curl, *options, "-T", self.source, f"tftp://{host}:{port}/{name}"]
            began = time.monotonic()
            transport, collect = self.spawn(argv, self.work)
            killer = reactor.callLater(STOCK_BOUND, transport.signalProcess, "KILL")
            _, _, code = yield collect.ended
            self.assertTrue(killer.active(), f"seed {seed}: curl hung past {STOCK_BOUND} s")
            killer.cancel()
            print(f"\nseed {seed}: curl exit {code} in {time.monotonic() - began:.2f} s")
            if code == 0:
                stored += 1
                self.assertEqual(sha256_file(self.stored(name)), sha256_bytes(self.data))
            else:
                failed += 1
                self.assertFalse(os.path.exists(self.stored(name)), name)
        self.assertGreaterEqual(stored, 8, f"{failed} of 10 curl uploads failed")

    @defer.inlineCallbacks
    def test_tftp_hpa(self) -> Generator[Any, Any, None]:
        """The tftp-hpa client (RFC 1350, 512-byte blocks) gets and puts through the loss."""
        tftp = self.tool("tftp")
        with open(os.path.join(self.root, "h.bin"), "wb") as handle:
            handle.write(self.data)
        out = os.path.join(self.work, "h.out")
        yield self.through_relay(
            3, lambda h, p: [tftp, "-m", "binary", h, p, "-c", "get", "h.bin", out], out
        )
        # Uploading, tftp-hpa resends a lost DATA only on its own timer (5 s
        # unless told otherwise), which it re-arms on every packet it
        # receives (it ignores a repeated ACK: no Sorcerer's Apprentice), so
        # no server can make it recover sooner.  With its `rexmt 1` command
        # a loss costs it about 1 s; a smaller file keeps that to a few.
        small = self.data[: 32 * 1024]
        source = os.path.join(self.work, "small.bin")
        with open(source, "wb") as handle:
            handle.write(small)
        script = f"mode binary\nrexmt 1\nput {source} up-h.bin\nquit\n"
        yield self.through_relay(
            4,
            lambda h, p: ["/bin/sh", "-c", f'printf "%s" "$0" | {tftp} {h} {p}', script],
            self.stored("up-h.bin"),
            small,
        )

    @defer.inlineCallbacks
    def test_atftp(self) -> Generator[Any, Any, None]:
        """atftp (blksize 1428, windowsize 16) gets and puts through the loss."""
        atftp = self.tool("atftp")
        options = ["--option", "blksize 1428", "--option", "windowsize 16"]
        with open(os.path.join(self.root, "a.bin"), "wb") as handle:
            handle.write(self.data)
        out = os.path.join(self.work, "a.out")
        yield self.through_relay(
            5, lambda h, p: [atftp, *options, "-g", "-r", "a.bin", "-l", out, h, p], out
        )
        yield self.through_relay(
            6,
            lambda h, p: [atftp, *options, "-p", "-l", self.source, "-r", "up-a.bin", h, p],
            self.stored("up-a.bin"),
        )
