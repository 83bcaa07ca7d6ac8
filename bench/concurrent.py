"""Many transfers at once: 4 big uploads side by side with 4 socat pairs, and 1,000 small ones.

Part 1: four C{filexfer send} processes upload four big files at once to
one C{twistd filexfer} (FX/1, verified), against four C{socat -b 262144}
pairs started at once; the figure is the aggregate MB/s (all bytes over the
time until the last transfer ended).

Part 2: one client process starts 1,000 FX/1 uploads of 64 KiB at once
(L{filexfer.send_file}, one connection each) against one server; every
stored file is checked against its source.  Reported: wall time, server
peak RSS.

    python bench/concurrent.py                   # 4 x 1 GiB and 1,000 x 64 KiB
    python bench/concurrent.py --big 512M --small-count 2000
    python bench/concurrent.py --smoke           # CI: 4 x 4 MiB, 50 x 64 KiB
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# bench/ goes last on sys.path: bench/concurrent.py must not shadow the stdlib's package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import _common as c  # noqa: E402

PARALLEL = 4
BIG_TARGET = 0.6
SMALL_RSS_LIMIT = 128 * c.MiB


def socat_parallel(
    socat: str, sources: list[Path], out: Path, timeout: float
) -> tuple[float, dict[str, int]]:
    """Four socat pairs at once; the time until the last listener exits."""
    listeners = []
    try:
        ports = []
        for index, _ in enumerate(sources):
            port = c.free_port()
            dest = out / f"socat-{index}.out"
            c.remove(dest)
            listeners.append(
                c.start(
                    [
                        socat,
                        "-u",
                        "-b",
                        "262144",
                        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                        f"OPEN:{dest},creat,trunc",
                    ]
                )
            )
            ports.append(port)
        for port, listener in zip(ports, listeners, strict=True):
            c.wait_listening(port, process=listener)
        began = time.perf_counter()
        clients = [
            c.start([socat, "-u", "-b", "262144", f"OPEN:{src}", f"TCP:127.0.0.1:{port}"])
            for src, port in zip(sources, ports, strict=True)
        ]
        try:
            client_rss = max(c.reap(p, timeout)[1] for p in clients)
            server_rss = 0
            for listener in listeners:
                status, rss = c.reap(listener, timeout)
                if status != 0:
                    raise c.BenchError(f"a socat listener exited {status}")
                server_rss = max(server_rss, rss)
            seconds = time.perf_counter() - began
        finally:
            for client in clients:
                c.stop(client)
    finally:
        for listener in listeners:
            c.stop(listener)
    for index, src in enumerate(sources):
        dest = out / f"socat-{index}.out"
        if dest.stat().st_size != src.stat().st_size:
            raise c.BenchError("a socat transfer arrived short")
        c.remove(dest)
    return seconds, {"server": server_rss, "client": client_rss}


def filexfer_parallel(
    server: c.Server, root: Path, sources: list[Path], timeout: float
) -> tuple[float, dict]:
    """Four C{filexfer send} processes at once into one server."""
    c.drop_received(root)
    server.reset_peak()
    began = time.perf_counter()
    clients = [
        c.start(
            c.filexfer_argv("send", "--no-progress", str(src), f"127.0.0.1:{server.port}"),
            env=c.fx_env(),
        )
        for src in sources
    ]
    try:
        client_rss = 0
        for client in clients:
            status, rss = c.reap(client, timeout)
            if status != 0:
                raise c.BenchError(f"filexfer send exited {status}\n{server.log_tail()}")
            client_rss = max(client_rss, rss)
        seconds = time.perf_counter() - began
    finally:
        for client in clients:
            c.stop(client)
    for src in sources:
        if (root / src.name).stat().st_size != src.stat().st_size:
            raise c.BenchError("a filexfer upload was stored short")
    rss = {"server": server.peak(), "client": client_rss}
    c.drop_received(root)
    return seconds, rss


def big(report: c.Report, args, socat: str, work: Path) -> None:
    size = 4 * c.MiB if args.smoke else c.parse_size(args.big)
    runs, warmup = (1, 0) if args.smoke else (args.runs, args.warmup)
    root = work / "received"
    root.mkdir(exist_ok=True)
    sources = []
    try:
        for index in range(PARALLEL):
            source = work / f"big-{index}.bin"
            c.make_file(source, size, seed=index)
            sources.append(source)
        port = c.free_port()
        argv = c.twistd_argv(
            *c.listen_options(port, args.server_option), "--root", str(root), "--no-tftp",
            *args.server_option,
        )  # fmt: skip
        total = PARALLEL * size
        reference = c.Series(f"{PARALLEL}xsocat", total)
        ours = c.Series(f"{PARALLEL}xfilexfer", total)
        timeout = 60 + total / (10 * c.MiB)
        print(f"{PARALLEL} x {c.size_text(size)} at once: {warmup} warm-up + {runs} runs each")
        with c.Server(argv, port=port, env=c.fx_env(), cwd=work, log=work / "big.log") as server:
            for index in range(warmup + runs):
                seconds, rss = socat_parallel(socat, sources, work, timeout)
                if index >= warmup:
                    reference.add(seconds, **rss)
                seconds, rss = filexfer_parallel(server, root, sources, timeout)
                if index >= warmup:
                    ours.add(seconds, **rss)
        print(" ", reference.describe())
        print(" ", ours.describe())
        print(
            report.compare(
                f"concurrent {PARALLEL}x{c.size_text(size)} aggregate", ours, reference, BIG_TARGET
            )
        )
    finally:
        c.remove(*sources)
        c.drop_received(root)


def small(summary: c.Report, args, work: Path) -> None:
    count = 50 if args.smoke else args.small_count
    size = 64 * 1024
    sources = work / "small"
    sources.mkdir()
    digests = {}
    for index in range(count):
        name = f"f{index:05d}.bin"
        digests[name] = c.make_file(sources / name, size, seed=index)
    root = work / "received-small"
    port = c.free_port()
    argv = c.twistd_argv(
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096", "--root", str(root),
        "--no-tftp", "--max-connections", str(count + 100), "--max-per-ip", str(count + 100),
        *args.server_option,
    )  # fmt: skip
    print(f"{count} x 64 KiB at once (one connection each)")
    with c.Server(argv, port=port, env=c.fx_env(), cwd=work, log=work / "small.log") as server:
        server.reset_peak()
        client = c.run(
            [sys.executable, __file__, "--many-client", str(port), str(sources)],
            timeout=300,
            env=c.fx_env(),
        )
        server_rss = server.peak()
        if client.status != 0:
            raise c.BenchError(f"the many-uploads client failed:\n{client.output[-3000:]}")
    report = json.loads(client.output.strip().splitlines()[-1])
    intact = sum(
        1
        for name, digest in digests.items()
        if (root / "small" / name).is_file() and c.sha256_file(root / "small" / name) == digest
    )
    verdict = (
        "PASS" if intact == count and report["ok"] == count and server_rss <= SMALL_RSS_LIMIT
        else "MISS"
    )  # fmt: skip
    print(
        f"RESULT concurrent {count}x64KiB: {intact}/{count} intact "
        f"({report['ok']} verified receipts, {report['failed']} failed), "
        f"wall {report['seconds']:.2f} s ({count / report['seconds']:.0f} uploads/s), "
        f"server_rss_MiB={server_rss / c.MiB:.1f} (limit {SMALL_RSS_LIMIT // c.MiB}) "
        f"client_rss_MiB={client.peak_rss / c.MiB:.1f} {verdict}"
    )
    summary.add(
        f"concurrent {count}x64KiB",
        uploads=count,
        intact=intact,
        verified=report["ok"],
        failed=report["failed"],
        seconds=report["seconds"],
        uploads_per_second=count / report["seconds"],
        server_rss_bytes=server_rss,
        client_rss_bytes=client.peak_rss,
        verdict=verdict,
    )
    if report["errors"]:
        print("  first errors:", "; ".join(report["errors"][:5]))


def many_client(port: int, folder: Path) -> int:
    """Child mode: upload every file in C{folder} at once, print one JSON line."""
    from twisted.internet import defer, endpoints, task

    from filexfer import send_file

    c.raise_nofile()
    names = sorted(os.listdir(folder))

    async def main(reactor) -> None:
        began = time.perf_counter()
        results = await defer.DeferredList(
            [
                send_file(
                    reactor,
                    endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=60),
                    folder / name,
                    name=f"small/{name}",
                )
                for name in names
            ],
            consumeErrors=True,
        )
        seconds = time.perf_counter() - began
        errors = [str(value.value) for ok, value in results if not ok]
        report = {
            "ok": sum(1 for ok, _ in results if ok),
            "failed": len(errors),
            "seconds": seconds,
            "errors": errors[:20],
        }
        print(json.dumps(report), flush=True)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--many-client"]:
        return many_client(int(sys.argv[2]), Path(sys.argv[3]))
    parser = c.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--big", default="1G", help="size of each big file (default 1G)")
    parser.add_argument("--small-count", type=int, default=1000, help="small uploads (1000)")
    parser.add_argument("--only", choices=["big", "small"], help="run one part only")
    parser.add_argument(
        "--server-option", action="append", default=[], help="extra 'twistd filexfer' option"
    )
    args = parser.parse_args()
    c.raise_nofile()
    socat = c.socat()
    print(f"machine: {c.machine()}")
    report = c.Report("concurrent", args.smoke, [c.tool_version([socat, "-V"], "socat")])
    print(f"reference: {report.references[0]}")
    with c.workdir() as work:
        if args.only in (None, "big"):
            big(report, args, socat, work)
        if args.only in (None, "small"):
            small(report, args, work)
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
