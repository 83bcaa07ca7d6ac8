"""filexfer beside the tools an operator would pick instead, in one run, on one file.

Contenders, each moving the same file over loopback into a fresh name:

 - C{filexfer send FILE} to C{twistd -n filexfer} (FX/1; the client exits 0
   once the server answered C{done}: written, fsynced, renamed, and both
   ends' digests (BLAKE3 unless --client-option says otherwise) agree);
 - C{rsync --fsync FILE rsync://127.0.0.1:P/in/NAME} to an rsync daemon
   (it verifies with its whole-file checksum, xxh128 here, and fsyncs);
 - C{socat -u -b 262144} into a socat listener, then C{sync FILE} (no
   verification; the reference for what the disk and loopback allow);
 - magic-wormhole: C{wormhole send} / C{wormhole receive} through a mailbox
   server and a transit relay of its own on 127.0.0.1 (C{--no-listen} on
   both ends, so that no address but loopback is offered), installed with
   pip into a venv under the benchmark tools cache, not the dev venv.

Then N transfers at once (4 by default) of the same file under N names:
N C{filexfer send} processes to one server against N rsync clients to one
daemon; the figure is the aggregate MB/s until the last one ended.

Each single run is timed from the client's start to its exit (socat: to
the end of C{sync}; wormhole: to the receiver's exit).  CPU seconds are
user + system of each side (a forking server's children included), peak
RSS per side (a forking server: the largest of its children).  Rounds
rotate the order of the contenders; medians are reported.

    python bench/peers.py                      # 1 GiB, 1 warm-up + 3 runs, 4 at once
    python bench/peers.py --size 512M --runs 5 --no-wormhole
    python bench/peers.py --smoke              # CI: 4 MiB, one run of each
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# bench/ goes last on sys.path: bench/concurrent.py must not shadow the stdlib's package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import _common as c  # noqa: E402
import tcp  # noqa: E402

RSYNC_TARGET = 1.25
SOCAT_SYNC_TARGET = 0.65
CLIENT_CPU_TARGET = 1.0  # filexfer client CPU per GiB / rsync client's, at most
PARALLEL_TARGET = 1.0
RSS_LIMIT = 48 * c.MiB
WORMHOLE_CODE = "7-filexfer-bench"

Run = tuple[float, dict[str, int], dict[str, float]]


class RsyncDaemon:
    """An rsync daemon on 127.0.0.1 with one writable module C{in} at C{root}."""

    def __init__(self, rsync: str, work: Path) -> None:
        self.rsync = rsync
        self.root = work / "rsync-root"
        self.root.mkdir()
        self.port = c.free_port()
        config = work / "rsyncd.conf"
        config.write_text(
            f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
            f"max connections = 64\n[in]\n    path = {self.root}\n    read only = no\n"
        )
        self.server = c.Server(
            [
                rsync,
                "--daemon",
                "--no-detach",
                f"--config={config}",
                f"--port={self.port}",
                "--address=127.0.0.1",
                f"--log-file={work / 'rsyncd.log'}",
            ],
            port=self.port,
        )

    def __enter__(self) -> RsyncDaemon:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def url(self, name: str) -> str:
        return f"rsync://127.0.0.1:{self.port}/in/{name}"

    def client_argv(self, source: Path, name: str) -> list[str]:
        return [self.rsync, "--fsync", str(source), self.url(name)]


def rsync_once(daemon: RsyncDaemon, source: Path, timeout: float) -> Run:
    """One C{rsync --fsync} upload to the daemon; it checks the stored size."""
    c.drop_received(daemon.root)
    server_cpu = c.tree_cpu_seconds(daemon.server.pid)
    watcher = c.TreePeak(daemon.server.pid)
    try:
        client = c.check(c.run(daemon.client_argv(source, source.name), timeout=timeout))
        c.wait_childless(daemon.server.pid)
    finally:
        server_rss = watcher.stop()
    _check_size(daemon.root / source.name, source)
    cpu = {"server": c.tree_cpu_seconds(daemon.server.pid) - server_cpu, "client": client.cpu}
    c.drop_received(daemon.root)
    return client.seconds, {"server": server_rss, "client": client.peak_rss}, cpu


def socat_sync_once(socat: str, source: Path, dest: Path, timeout: float) -> Run:
    """socat into a listener, then C{sync DEST}: the time until the data is on disk."""
    seconds, rss, cpu = tcp.socat_once(socat, source, dest, timeout, keep=True)
    synced = c.check(c.run(["sync", str(dest)], timeout=timeout))
    c.remove(dest)
    cpu["server"] += synced.cpu
    return seconds + synced.seconds, rss, cpu


class Wormhole:
    """magic-wormhole's mailbox server and transit relay on 127.0.0.1, for one run."""

    def __init__(self, bin_dir: Path, work: Path) -> None:
        self.bin = bin_dir
        self.work = work / "wormhole"
        self.work.mkdir()
        self.mailbox_port = c.free_port()
        self.relay_port = c.free_port()
        twist = str(bin_dir / "twist")
        self.mailbox = c.Server(
            [
                twist,
                "wormhole-mailbox",
                f"--port=tcp:{self.mailbox_port}:interface=127.0.0.1",
                f"--channel-db={self.work / 'relay.sqlite'}",
            ],
            port=self.mailbox_port,
            cwd=self.work,
            log=self.work / "mailbox.log",
        )
        self.relay = c.Server(
            [twist, "transitrelay", f"--port=tcp:{self.relay_port}:interface=127.0.0.1"],
            port=self.relay_port,
            cwd=self.work,
            log=self.work / "relay.log",
        )

    def __enter__(self) -> Wormhole:
        self.mailbox.__enter__()
        try:
            self.relay.__enter__()
        except BaseException:
            self.mailbox.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.relay.__exit__(*exc)
        self.mailbox.__exit__(*exc)

    def argv(self, *command: str) -> list[str]:
        return [
            str(self.bin / "wormhole"),
            f"--relay-url=ws://127.0.0.1:{self.mailbox_port}/v1",
            f"--transit-helper=tcp:127.0.0.1:{self.relay_port}",
            *command,
        ]


def wormhole_once(hole: Wormhole, source: Path, timeout: float) -> Run:
    """C{wormhole send} and C{wormhole receive} at once; the time until the receiver exits."""
    out = hole.work / "received.bin"
    c.remove(out)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    began = time.perf_counter()
    sender = c.start(
        hole.argv("send", "--no-listen", "--hide-progress", "--code", WORMHOLE_CODE, str(source)),
        env=env,
        cwd=hole.work,
    )
    try:
        receiver = c.run(
            hole.argv(
                "receive",
                "--no-listen",
                "--hide-progress",
                "--accept-file",
                "--output-file",
                str(out),
                WORMHOLE_CODE,
            ),
            timeout=timeout,
            env=env,
            cwd=hole.work,
        )
        seconds = time.perf_counter() - began
        status, sender_rss, sender_cpu = c.reap_with_cpu(sender, timeout)
    finally:
        c.stop(sender)
    c.check(receiver)
    if status != 0:
        raise c.BenchError(f"wormhole send exited {status}")
    _check_size(out, source)
    c.remove(out)
    rss = {"server": receiver.peak_rss, "client": sender_rss}
    return seconds, rss, {"server": receiver.cpu, "client": sender_cpu}


def _check_size(stored: Path, source: Path) -> None:
    size = stored.stat().st_size
    if size != source.stat().st_size:
        raise c.BenchError(f"{stored} has {size} bytes of {source.stat().st_size}")


def parallel(argvs: list[list[str]], timeout: float, env: dict[str, str] | None = None) -> Run:
    """Start every C{argv} at once; the time until the last exits, CPU summed, peak RSS max."""
    began = time.perf_counter()
    processes = [c.start(argv, env=env) for argv in argvs]
    cpu = 0.0
    peak = 0
    try:
        for process in processes:
            status, rss, spent = c.reap_with_cpu(process, timeout)
            if status != 0:
                raise c.BenchError(f"{' '.join(map(str, process.args))} exited {status}")
            cpu += spent
            peak = max(peak, rss)
    finally:
        for process in processes:
            c.stop(process)
    return time.perf_counter() - began, {"client": peak}, {"client": cpu}


def filexfer_parallel(server: c.Server, root: Path, source: Path, n: int, timeout: float) -> Run:
    c.drop_received(root)
    server.reset_peak()
    before = c.cpu_seconds(server.pid)
    argvs = [
        c.filexfer_argv("send", "--no-progress", str(source), f"127.0.0.1:{server.port}/p{index}")
        for index in range(n)
    ]
    seconds, rss, cpu = parallel(argvs, timeout, env=c.fx_env())
    for index in range(n):
        _check_size(root / f"p{index}" / source.name, source)
    rss["server"] = server.peak()
    cpu["server"] = c.cpu_seconds(server.pid) - before
    c.drop_received(root)
    return seconds, rss, cpu


def rsync_parallel(daemon: RsyncDaemon, source: Path, n: int, timeout: float) -> Run:
    c.drop_received(daemon.root)
    before = c.tree_cpu_seconds(daemon.server.pid)
    watcher = c.TreePeak(daemon.server.pid)
    try:
        argvs = [daemon.client_argv(source, f"p{index}.bin") for index in range(n)]
        seconds, rss, cpu = parallel(argvs, timeout)
        c.wait_childless(daemon.server.pid)
    finally:
        rss["server"] = watcher.stop()
    for index in range(n):
        _check_size(daemon.root / f"p{index}.bin", source)
    cpu["server"] = c.tree_cpu_seconds(daemon.server.pid) - before
    c.drop_received(daemon.root)
    return seconds, rss, cpu


def measure(
    contenders: dict[str, Callable[[], Run]], series: dict[str, c.Series], runs: int, warmup: int
) -> None:
    """Rounds of every contender, the order rotated each round; warm-ups not recorded."""
    names = list(contenders)
    for index in range(warmup + runs):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            seconds, rss, cpu = contenders[name]()
            if index >= warmup:
                series[name].add(seconds, cpu, **rss)
                print(f"  {name}: {series[name].nbytes / 1e6 / seconds:.0f} MB/s", flush=True)


def cpu_line(report: c.Report, name: str, ours: c.Series, theirs: c.Series) -> str:
    """The client CPU per GiB comparison (lower is better: the target is a ceiling)."""
    mine, other = ours.cpu_per_gib("client"), theirs.cpu_per_gib("client")
    ratio = mine / other if other else float("inf")
    verdict = "PASS" if ratio <= CLIENT_CPU_TARGET else "MISS"
    report.add(
        name,
        ours=mine,
        reference=other,
        ratio=ratio,
        target=CLIENT_CPU_TARGET,
        verdict=verdict,
        unit="CPU seconds per GiB",
    )
    return (
        f"RESULT {name}: filexfer {mine:.2f} s/GiB vs rsync {other:.2f} s/GiB "
        f"ratio={ratio:.2f} target<={CLIENT_CPU_TARGET:g} {verdict}"
    )


def main() -> int:
    parser = c.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="file size (default 1G)")
    parser.add_argument(
        "--parallel", type=int, default=4, help="transfers at once in the second part (default 4)"
    )
    parser.add_argument("--no-wormhole", action="store_true", help="leave magic-wormhole out")
    c.add_client_option(parser)
    args = parser.parse_args()
    size = 4 * c.MiB if args.smoke else c.parse_size(args.size)
    runs, warmup = (1, 0) if args.smoke else (args.runs, args.warmup)
    socat, rsync = c.socat(), c.rsync()
    wormhole_bin = None if args.no_wormhole else c.wormhole_venv()
    print(f"machine: {c.machine()}")
    references = [
        c.tool_version([rsync, "--version"], "rsync"),
        c.tool_version([socat, "-V"], "socat"),
    ]
    if wormhole_bin is not None:
        references.append(c.tool_version([str(wormhole_bin / "wormhole"), "--version"]))
    report = c.Report("peers", args.smoke, references)
    print("references: " + "; ".join(references))
    timeout = 120 + size / (10 * c.MiB)
    text = c.size_text(size)
    with c.workdir() as work:
        root = work / "received"
        root.mkdir()
        source = work / f"source-{text}.bin"
        digest = c.make_file(source, size)
        port = c.free_port()
        server_argv = c.twistd_argv(
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--root", str(root), "--no-tftp"
        )
        with (
            c.Server(
                server_argv, port=port, env=c.fx_env(), cwd=work, log=work / "server.log"
            ) as server,
            RsyncDaemon(rsync, work) as daemon,
            Wormhole(wormhole_bin, work) if wormhole_bin else _nothing() as hole,
        ):
            contenders: dict[str, Callable[[], Run]] = {
                "filexfer": lambda: tcp.filexfer_once(
                    server, root, source, digest, timeout, args.smoke, args.client_option
                ),
                "rsync": lambda: rsync_once(daemon, source, timeout),
                "socat+sync": lambda: socat_sync_once(socat, source, work / "socat.out", timeout),
            }
            if hole is not None:
                contenders["wormhole"] = lambda: wormhole_once(hole, source, timeout)
            series = {name: c.Series(name, size) for name in contenders}
            print(f"{text}: {warmup} warm-up + {runs} runs of each, order rotated")
            try:
                measure(contenders, series, runs, warmup)
            except c.BenchError:
                print(server.log_tail(), file=sys.stderr)
                raise
            for one in series.values():
                print(" ", one.describe())
            ours = series["filexfer"]
            print(report.compare(f"peers {text} vs rsync", ours, series["rsync"], RSYNC_TARGET))
            print(
                report.compare(
                    f"peers {text} vs socat+sync", ours, series["socat+sync"], SOCAT_SYNC_TARGET
                )
            )
            if "wormhole" in series:
                print(report.compare(f"peers {text} vs wormhole", ours, series["wormhole"], None))
            print(cpu_line(report, f"peers {text} client cpu", ours, series["rsync"]))
            rss_words = " ".join(
                f"{name} server {one.rss['server'] / c.MiB:.1f} client "
                f"{one.rss['client'] / c.MiB:.1f};"
                for name, one in series.items()
            )
            over = [role for role, value in ours.rss.items() if value > RSS_LIMIT]
            print(
                f"RESULT peers {text} rss MiB: {rss_words} (filexfer limit "
                f"{RSS_LIMIT // c.MiB} each)" + (" MISS" if over else " PASS")
            )
            report.add(
                f"peers {text} rss",
                rss_bytes={name: one.rss for name, one in series.items()},
                limit=RSS_LIMIT,
                verdict="MISS" if over else "PASS",
            )

            n = args.parallel
            many = {
                "filexfer": lambda: filexfer_parallel(server, root, source, n, timeout * n),
                "rsync": lambda: rsync_parallel(daemon, source, n, timeout * n),
            }
            together = {name: c.Series(f"{n}x {name}", n * size) for name in many}
            print(f"{n} x {text} at once: {warmup} warm-up + {runs} runs of each, order rotated")
            measure(many, together, runs, warmup)
            for one in together.values():
                print(" ", one.describe())
            print(
                report.compare(
                    f"peers {n}x{text} vs {n} rsync",
                    together["filexfer"],
                    together["rsync"],
                    PARALLEL_TARGET,
                )
            )
        c.remove(source)
    report.write(args.json)
    return 0


class _nothing:
    """A context manager standing for a contender left out."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
