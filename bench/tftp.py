"""TFTP downloads (RRQ) over loopback: the C servers against filexfer, with the same clients.

1. curl at blksize 512 against tftpd-hpa, then against filexfer;
2. atftp at windowsize 16 / blksize 1428 against atftpd, then against filexfer;
3. the filexfer client against the filexfer server at their defaults, against
   (2)'s atftp + atftpd.

atftpd is unpacked from its Debian package (apt-get download + dpkg -x)
because it conflicts with tftpd-hpa as an installed package.  Every download
is checked byte for byte against the source.

    python bench/tftp.py                     # 64 MiB, 1 warm-up + 3 runs each
    python bench/tftp.py --size 16M --runs 5
    python bench/tftp.py --smoke             # CI: 1 MiB, one run
"""

from __future__ import annotations

import filecmp
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# bench/ goes last on sys.path: bench/concurrent.py must not shadow the stdlib's package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import _common as c  # noqa: E402

CURL_TARGET = 1.0
ATFTP_TARGET = 0.6
DEFAULTS_TARGET = 1.5
NAME = "bench.bin"


def tftpd_hpa_server(binary: str, root: Path, port: int) -> c.Server:
    user = os.environ.get("USER") or ("root" if os.geteuid() == 0 else str(os.geteuid()))
    argv = [binary, "-L", "-a", f"127.0.0.1:{port}", "-s", str(root), "-u", user]
    return c.Server(argv, port=port, udp=True)


def atftpd_server(binary: str, root: Path, port: int, log: Path) -> c.Server:
    user = "root.root" if os.geteuid() == 0 else f"{os.getuid()}.{os.getgid()}"
    argv = [
        binary, "--daemon", "--no-fork", "--port", str(port), "--bind-address", "127.0.0.1",
        "--logfile", str(log), "--user", user, "--maxthread", "100", str(root),
    ]  # fmt: skip
    return c.Server(argv, port=port, udp=True)


def filexfer_server(root: Path, port: int, work: Path) -> c.Server:
    argv = c.twistd_argv(
        "--listen", f"tcp:{c.free_port()}:interface=127.0.0.1", "--tftp-port", str(port),
        "--tftp-interface", "127.0.0.1", "--root", str(root),
    )  # fmt: skip
    return c.Server(argv, port=port, udp=True, env=c.fx_env(), cwd=work, log=work / "server.log")


def curl_get(curl: str, port: int, out: Path) -> list[str]:
    return [
        curl, "-sS", "--fail", "--tftp-blksize", "512", "-o", str(out),
        f"tftp://127.0.0.1:{port}/{NAME}",
    ]  # fmt: skip


def atftp_get(atftp: str, port: int, out: Path) -> list[str]:
    return [
        atftp, "--option", "blksize 1428", "--option", "windowsize 16",
        "-g", "-r", NAME, "-l", str(out), "127.0.0.1", str(port),
    ]  # fmt: skip


def filexfer_get(port: int, out: Path) -> list[str]:
    return c.filexfer_argv("get", "--no-progress", f"tftp://127.0.0.1:{port}/{NAME}", str(out))


def measure(
    label: str,
    server: c.Server,
    client: Callable[[Path], list[str]],
    source: Path,
    out: Path,
    env: dict[str, str] | None,
) -> Callable[[], tuple[float, dict[str, int]]]:
    """One download: the client's wall time from start to exit, checked byte for byte."""

    def once() -> tuple[float, dict[str, int]]:
        seconds, rss, _ = measured()
        return seconds, rss

    def measured() -> tuple[float, dict[str, int], dict[str, float]]:
        c.remove(out)
        server.reset_peak()
        server_cpu = c.cpu_seconds(server.pid)
        children = c.TreePeak(server.pid)  # tftpd-hpa forks per transfer (and ignores SIGCHLD)
        began = time.perf_counter()
        try:
            finished = c.check(c.run(client(out), timeout=600, env=env))
            seconds = time.perf_counter() - began
            if not server.alive():
                raise c.BenchError(f"the {label} server died")
            c.wait_childless(server.pid)
        finally:
            children.stop()
        if not filecmp.cmp(source, out, shallow=False):
            raise c.BenchError(f"{label}: the download differs from the source")
        rss = {"server": max(server.peak(), children.peak), "client": finished.peak_rss}
        spent = c.cpu_seconds(server.pid) - server_cpu + sum(children.cpu.values())
        cpu = {"server": spent, "client": finished.cpu}
        c.remove(out)
        return seconds, rss, cpu

    once.measured = measured  # type: ignore[attr-defined]
    return once


def alternate(
    pairs: dict[str, Callable[[], tuple[float, dict[str, int], dict[str, float]]]],
    size: int,
    runs: int,
    warmup: int,
) -> dict[str, c.Series]:
    """Runs of each pair in turn (A B A B ...), so that a busy moment of the shared
    machine falls on both; CPU seconds per side recorded with the times."""
    series = {key: c.Series(key, size) for key in pairs}
    for index in range(warmup + runs):
        for key, measured in pairs.items():
            seconds, rss, cpu = measured()
            if index >= warmup:
                series[key].add(seconds, cpu, **rss)
                print(f"  {key}: {size / 1e6 / seconds:.1f} MB/s", flush=True)
    return series


def per_block(series: c.Series, role: str, blksize: int = 512) -> float:
    """Median CPU microseconds of C{role} per block of C{blksize} bytes."""
    blocks = -(-series.nbytes // blksize)
    return series.cpu_per_gib(role) * (series.nbytes / c.GiB) / blocks * 1e6


def main() -> int:
    parser = c.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="64M", help="file size (default 64M)")
    args = parser.parse_args()
    size = c.MiB if args.smoke else c.parse_size(args.size)
    runs, warmup = (1, 0) if args.smoke else (args.runs, args.warmup)
    curl, atftp, tftpd, atftpd = c.curl(), c.atftp(), c.tftpd_hpa(), c.atftpd()
    print(f"machine: {c.machine()}")
    references = [
        c.tool_version([tftpd, "-V"], "tftpd-hpa"),
        c.tool_version([atftpd, "--version"], "atftpd"),
        c.tool_version([curl, "--version"], "curl"),
        c.tool_version([atftp, "--version"], "atftp"),
    ]
    report = c.Report("tftp", args.smoke, references)
    print("references: " + ", ".join(references))
    print(f"{c.size_text(size)} downloads: {warmup} warm-up + {runs} runs each")
    fx_env = c.fx_env()
    with c.workdir() as work:
        root = work / "root"
        root.mkdir()
        source = root / NAME
        c.make_file(source, size)
        os.chmod(source, 0o644)
        os.chmod(root, 0o755)
        out = work / "download.bin"
        series: dict[str, c.Series] = {}

        def bench(key: str, server: c.Server, client: Callable[[Path], list[str]], env=None):
            once = measure(key, server, client, source, out, env)
            series[key] = c.repeat(key, size, once, runs=runs, warmup=warmup)

        hpa_port = c.free_port(c.socket.SOCK_DGRAM)
        fx_port = c.free_port(c.socket.SOCK_DGRAM)
        with (
            tftpd_hpa_server(tftpd, root, hpa_port) as hpa,
            filexfer_server(root, fx_port, work) as fx,
        ):
            lock_step = {
                "curl512+tftpd-hpa": measure(
                    "curl512+tftpd-hpa",
                    hpa,
                    lambda o: curl_get(curl, hpa_port, o),
                    source,
                    out,
                    None,
                ).measured,  # type: ignore[attr-defined]
                "curl512+filexfer": measure(
                    "curl512+filexfer", fx, lambda o: curl_get(curl, fx_port, o), source, out, None
                ).measured,  # type: ignore[attr-defined]
            }
            series.update(alternate(lock_step, size, runs, warmup))
        for key in lock_step:
            print(
                f"  {key}: server {per_block(series[key], 'server'):.1f} µs CPU per block, "
                f"curl {per_block(series[key], 'client'):.1f} µs"
            )
        port = c.free_port(c.socket.SOCK_DGRAM)
        with atftpd_server(atftpd, root, port, work / "atftpd.log") as server:
            bench("atftp-w16+atftpd", server, lambda o: atftp_get(atftp, port, o))
        port = c.free_port(c.socket.SOCK_DGRAM)
        with filexfer_server(root, port, work) as server:
            bench("atftp-w16+filexfer", server, lambda o: atftp_get(atftp, port, o))
            bench("filexfer+filexfer", server, lambda o: filexfer_get(port, o), env=fx_env)
        for item in series.values():
            print(" ", item.describe())
        comparisons = [
            ("tftp curl blksize 512", "curl512+filexfer", "curl512+tftpd-hpa", CURL_TARGET),
            ("tftp atftp windowed", "atftp-w16+filexfer", "atftp-w16+atftpd", ATFTP_TARGET),
            ("tftp defaults", "filexfer+filexfer", "atftp-w16+atftpd", DEFAULTS_TARGET),
        ]
        for name, ours, reference, target in comparisons:
            print(report.compare(name, series[ours], series[reference], target))
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
