"""TFTP through a lossy link: stock clients against filexfer and tftpd-hpa, side by side.

Every transfer goes through its own seeded relay (filexfer.testing.LossyRelay,
run in a child process): 5 % of datagrams dropped, 5 % duplicated, 1 ms of
delay and 5 % held back 1-4 ms more (reordering).  curl (blksize 1428; it
asks for timeout 6), tftp-hpa (RFC 1350, no options; uploads with its
`rexmt 1` command) and atftp (blksize 1428, windowsize 16) download and
upload the same file from/to filexfer (twistd, defaults) and tftpd-hpa
(in.tftpd -c).  Printed per transfer: seconds, and the DATA datagrams the
relay saw sent more than once (the retransmissions of whoever sends).

    python bench/lossy.py                 # 300 KiB, 3 seeds per pairing
    python bench/lossy.py --runs 5 --size 1M
    python bench/lossy.py --smoke         # CI: 16 KiB, one seed, filexfer + one tftpd-hpa pairing
"""

from __future__ import annotations

import filecmp
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import _common as c  # noqa: E402

LOSS = 0.05
DUPLICATE = 0.05
NAME = "lossy.bin"
TRANSFER_TIMEOUT = 600.0


def run_relay(server_port: int, seed: int) -> int:
    """The child: relay to 127.0.0.1:server_port; print the port; on SIGTERM print counts."""
    from twisted.internet import reactor

    from filexfer.testing import LossyRelay

    relay = LossyRelay(
        reactor, ("127.0.0.1", server_port), seed=seed, loss=LOSS, duplicate=DUPLICATE
    )
    _, port = relay.start()
    print(port, flush=True)

    def stop(*_: object) -> None:
        counts = {
            "dropped": relay.dropped,
            "duplicated": relay.duplicated,
            "resent_to_client": relay.retransmitted("to-client"),
            "resent_to_server": relay.retransmitted("to-server"),
        }
        print(json.dumps(counts), flush=True)
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, stop)
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]
    return 0


class Relay:
    """A relay child process for one transfer, stopped by its PID."""

    def __init__(self, server_port: int, seed: int) -> None:
        argv = [sys.executable, __file__, "--relay", str(server_port), str(seed)]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, env=c.fx_env(), text=True, start_new_session=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the relay's port (bounded: it prints at once)
        if not line.strip().isdigit():
            c.stop(self.process)
            raise c.BenchError(f"the relay did not start: {line!r}")
        self.port = int(line)

    def counts(self) -> dict[str, int]:
        self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            c.stop(self.process)
            raise c.BenchError("the relay did not stop") from None
        return json.loads(out.strip().splitlines()[-1])


def clients(curl: str, tftp: str, atftp: str, work: Path) -> dict[str, Callable[[int], list[str]]]:
    """Each client and direction: argv for a relay on 127.0.0.1:port."""
    got = work / "got.bin"
    source = work / "source.bin"
    curl_opts = ["-sS", "--fail", "--tftp-blksize", "1428"]
    at_opts = ["--option", "blksize 1428", "--option", "windowsize 16"]
    put_script = f"mode binary\nrexmt 1\nput {source} up-tftp.bin\nquit\n"
    return {
        "curl get": lambda p: [curl, *curl_opts, "-o", str(got), f"tftp://127.0.0.1:{p}/{NAME}"],
        "curl put": lambda p: [
            curl,
            *curl_opts,
            "-T",
            str(source),
            f"tftp://127.0.0.1:{p}/up-curl.bin",
        ],
        "tftp-hpa get": lambda p: [
            tftp,
            "-m",
            "binary",
            "127.0.0.1",
            str(p),
            "-c",
            "get",
            NAME,
            str(got),
        ],
        "tftp-hpa put": lambda p: [
            "/bin/sh",
            "-c",
            f'printf "%s" "$0" | {tftp} 127.0.0.1 {p}',
            put_script,
        ],
        "atftp get": lambda p: [
            atftp,
            *at_opts,
            "-g",
            "-r",
            NAME,
            "-l",
            str(got),
            "127.0.0.1",
            str(p),
        ],
        "atftp put": lambda p: [
            atftp,
            *at_opts,
            "-p",
            "-l",
            str(source),
            "-r",
            "up-atftp.bin",
            "127.0.0.1",
            str(p),
        ],
    }


def once(
    label: str,
    server_port: int,
    seed: int,
    argv: Callable[[int], list[str]],
    check: Path,
    source: Path,
) -> tuple[float, dict[str, int]]:
    """One transfer through a fresh relay: (seconds, relay counts); the result checked."""
    c.remove(check)
    relay = Relay(server_port, seed)
    try:
        began = time.perf_counter()
        c.check(c.run(argv(relay.port), timeout=TRANSFER_TIMEOUT))
        seconds = time.perf_counter() - began
    finally:
        counts = relay.counts()
    if not check.exists() or not filecmp.cmp(source, check, shallow=False):
        raise c.BenchError(f"{label}: the transferred file differs from the source")
    return seconds, counts


def _resent(counts: dict[str, int]) -> int:
    return counts["resent_to_client"] + counts["resent_to_server"]


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--relay":
        return run_relay(int(sys.argv[2]), int(sys.argv[3]))
    parser = c.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="300K", help="file size (default 300K)")
    args = parser.parse_args()
    size = 16 * 1024 if args.smoke else c.parse_size(args.size)
    runs = 1 if args.smoke else args.runs
    curl, tftp, atftp, tftpd = c.curl(), c.locate("tftp", "tftp-hpa"), c.atftp(), c.tftpd_hpa()
    print(f"machine: {c.machine()}")
    print(
        "references: "
        + ", ".join(
            [
                c.tool_version([tftpd, "-V"], "tftpd-hpa"),
                c.tool_version([curl, "--version"], "curl"),
                c.tool_version([tftp, "-V"], "tftp-hpa"),
                c.tool_version([atftp, "--version"], "atftp"),
            ]
        )
    )
    print(
        f"{c.size_text(size)} per transfer, {runs} seed(s) each; relay: {LOSS:.0%} drop, "
        f"{DUPLICATE:.0%} duplication, 1 ms delay, 5 % reordered by 1-4 ms"
    )
    with c.workdir() as work:
        root = work / "root"
        root.mkdir()
        os.chmod(root, 0o777)
        source = work / "source.bin"
        c.make_file(source, size)
        (root / NAME).write_bytes(source.read_bytes())
        os.chmod(root / NAME, 0o644)
        pairings = clients(curl, tftp, atftp, work)
        results: dict[tuple[str, str], list[tuple[float, dict[str, int]]]] = {}

        def bench(server: str, port: int, names: list[str]) -> None:
            for name in names:
                uploaded = root / f"up-{name.split()[0].replace('-hpa', '')}.bin"
                check = work / "got.bin" if name.endswith("get") else uploaded
                for seed in range(runs):
                    result = once(
                        f"{name} vs {server}", port, 1000 + seed, pairings[name], check, source
                    )
                    results.setdefault((server, name), []).append(result)
                    seconds, counts = result
                    print(
                        f"  {name:13} {server:9} seed {seed}: {seconds:6.2f} s  "
                        f"DATA resent {counts['resent_to_client']} to client, "
                        f"{counts['resent_to_server']} to server "
                        f"(dropped {counts['dropped']}, duplicated {counts['duplicated']})",
                        flush=True,
                    )

        everything = list(pairings)
        port = c.free_port(c.socket.SOCK_DGRAM)
        argv = c.twistd_argv(
            "--listen", f"tcp:{c.free_port()}:interface=127.0.0.1", "--tftp-port", str(port),
            "--tftp-interface", "127.0.0.1", "--root", str(root), "--on-conflict", "overwrite",
        )  # fmt: skip
        with c.Server(argv, port=port, udp=True, env=c.fx_env(), cwd=work, log=work / "fx.log"):
            bench("filexfer", port, everything)
        port = c.free_port(c.socket.SOCK_DGRAM)
        user = os.environ.get("USER") or ("root" if os.geteuid() == 0 else str(os.geteuid()))
        hpa = [tftpd, "-L", "-c", "-a", f"127.0.0.1:{port}", "-s", str(root), "-u", user]
        with c.Server(hpa, port=port, udp=True):
            bench("tftpd-hpa", port, ["curl get"] if args.smoke else everything)
        for name in everything:
            ours = results.get(("filexfer", name))
            ref = results.get(("tftpd-hpa", name))
            if not ours or not ref:
                continue
            mine = statistics.median(s for s, _ in ours)
            theirs = statistics.median(s for s, _ in ref)
            resent = statistics.median(_resent(n) for _, n in ours)
            ref_resent = statistics.median(_resent(n) for _, n in ref)
            print(
                f"RESULT tftp lossy {name}: filexfer {mine:.2f} s ({resent:g} DATA resent) vs "
                f"tftpd-hpa {theirs:.2f} s ({ref_resent:g} DATA resent) speedup={theirs / mine:.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
