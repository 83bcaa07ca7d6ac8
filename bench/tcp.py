"""TCP: one big file over loopback, socat against filexfer (FX/1, verified), side by side.

Reference: C{socat -u -b 262144} from the file to a socat listener writing a
new file (no hashing, no fsync).  Ours: C{filexfer send FILE 127.0.0.1:P/name}
to C{twistd -n filexfer}; the client exits 0 only once the server answered
C{done} (file fsynced, linked into place) and both SHA-256s agree.

Each run is timed from the client's start to the reference server's exit
(socat) or to the client's exit (filexfer), so process start-up counts on
both sides.  Runs alternate socat / filexfer after one warm-up of each.

    python bench/tcp.py                      # 512 MiB and 1 GiB, 3 runs each
    python bench/tcp.py --sizes 1G --runs 5
    python bench/tcp.py --smoke              # CI: 4 MiB, one run
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# bench/ goes last on sys.path: bench/concurrent.py must not shadow the stdlib's package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import _common as c  # noqa: E402

TCP_TARGET = 0.8
RSS_LIMIT = 48 * c.MiB


def socat_once(
    socat: str, source: Path, dest: Path, timeout: float, keep: bool = False
) -> tuple[float, dict[str, int], dict[str, float]]:
    """One socat transfer: listener writes C{dest} (left there with C{keep}), client reads
    C{source}."""
    c.remove(dest)
    port = c.free_port()
    listener = c.start(
        [
            socat,
            "-u",
            "-b",
            "262144",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
            f"OPEN:{dest},creat,trunc",
        ]
    )
    watcher = c.TreePeak(listener.pid, itself=True)  # it may exit before we reap it
    try:
        c.wait_listening(port, process=listener)
        began = time.perf_counter()
        client = c.check(
            c.run(
                [socat, "-u", "-b", "262144", f"OPEN:{source}", f"TCP:127.0.0.1:{port}"],
                timeout=timeout,
            )
        )
        status, server_rss, server_cpu = c.reap_with_cpu(listener, timeout)
        server_rss = max(server_rss, watcher.stop())
        seconds = time.perf_counter() - began
    finally:
        watcher.stop()
        c.stop(listener)
    if status != 0:
        raise c.BenchError(f"socat listener exited {status}")
    size = dest.stat().st_size
    if size != source.stat().st_size:
        raise c.BenchError(f"socat wrote {size} bytes of {source.stat().st_size}")
    if not keep:
        c.remove(dest)
    cpu = {"server": server_cpu, "client": client.cpu}
    return seconds, {"server": server_rss, "client": client.peak_rss}, cpu


def filexfer_once(
    server: c.Server,
    root: Path,
    source: Path,
    digest: str,
    timeout: float,
    verify: bool,
    client_options: list[str] | None = None,
) -> tuple[float, dict[str, int], dict[str, float]]:
    """One FX/1 upload with the filexfer command; the client verifies the receipt."""
    c.drop_received(root)
    server.reset_peak()
    server_cpu = c.cpu_seconds(server.pid)
    client = c.check(
        c.run(
            c.filexfer_argv(
                "send",
                "--no-progress",
                *(client_options or []),
                str(source),
                f"127.0.0.1:{server.port}",
            ),
            timeout=timeout,
            env=c.fx_env(),
        )
    )
    if "stored and verified" not in client.output and "--plain" not in (client_options or []):
        raise c.BenchError(f"filexfer send did not verify: {client.output}")
    stored = root / source.name
    if stored.stat().st_size != source.stat().st_size:
        raise c.BenchError("the stored file has the wrong size")
    if verify and c.sha256_file(stored) != digest:
        raise c.BenchError("the stored file differs from the source")
    rss = {"server": server.peak(), "client": client.peak_rss}
    cpu = {"server": c.cpu_seconds(server.pid) - server_cpu, "client": client.cpu}
    c.drop_received(root)
    return client.seconds, rss, cpu


def main() -> int:
    parser = c.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="512M,1G", help="comma-separated file sizes (default 512M,1G)"
    )
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        help="extra option for 'twistd filexfer' (repeatable), e.g. --server-option=--workers=2",
    )
    c.add_client_option(parser)
    args = parser.parse_args()
    sizes = [4 * c.MiB] if args.smoke else [c.parse_size(s) for s in args.sizes.split(",")]
    runs, warmup = (1, 0) if args.smoke else (args.runs, args.warmup)
    socat = c.socat()
    print(f"machine: {c.machine()}")
    report = c.Report("tcp", args.smoke, [c.tool_version([socat, "-V"], "socat")])
    print(f"reference: {report.references[0]}")
    failures = 0
    with c.workdir() as work:
        root = work / "received"
        root.mkdir()
        port = c.free_port()
        server_argv = c.twistd_argv(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--root",
            str(root),
            "--no-tftp",
            *args.server_option,
        )
        with c.Server(
            server_argv, port=port, env=c.fx_env(), cwd=work, log=work / "server.log"
        ) as server:
            for size in sizes:
                source = work / f"source-{c.size_text(size)}.bin"
                digest = c.make_file(source, size)
                timeout = 60 + size / (20 * c.MiB)
                reference = c.Series("socat", size)
                ours = c.Series("filexfer", size)
                print(f"{c.size_text(size)}: {warmup} warm-up + {runs} runs each, alternating")
                try:
                    for index in range(warmup + runs):
                        measured = index >= warmup
                        seconds, rss, cpu = socat_once(socat, source, work / "socat.out", timeout)
                        if measured:
                            reference.add(seconds, cpu, **rss)
                        seconds, rss, cpu = filexfer_once(
                            server, root, source, digest, timeout, args.smoke, args.client_option
                        )
                        if measured:
                            ours.add(seconds, cpu, **rss)
                except c.BenchError:
                    print(server.log_tail(), file=sys.stderr)
                    raise
                finally:
                    c.remove(source, work / "socat.out")
                print(" ", reference.describe())
                print(" ", ours.describe())
                print(report.compare(f"tcp {c.size_text(size)}", ours, reference, TCP_TARGET))
                over = [role for role, value in ours.rss.items() if value > RSS_LIMIT]
                print(
                    f"RESULT tcp {c.size_text(size)} rss: filexfer server "
                    f"{ours.rss['server'] / c.MiB:.1f} MiB, client "
                    f"{ours.rss['client'] / c.MiB:.1f} MiB (limit {RSS_LIMIT // c.MiB} MiB each)"
                    + (" MISS" if over else " PASS")
                )
                if ours.mbps < TCP_TARGET * reference.mbps or over:
                    failures += 1
    if failures and not args.smoke:
        print(f"{failures} target(s) missed")
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
