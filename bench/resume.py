"""Latency of a 5-byte FX/1 upload alone, and while a large resume handshake starts.

A resume of a partial upload makes the server hash the bytes it holds
before it can answer C{ok <offset> <prefix>}; that hashing must not hold
up other connections.  There is no outside reference here: the small
upload alone is the baseline.

The partial is made as a client would leave it (an FX/1 upload with Size,
Mtime and a SHA-256 trailer, reset after its handshake), then extended on
disk with truncate to C{--size} (sparse: quick to make, but hashing its
zeros costs about what hashing cached data does).  Each run opens the
resume handshake, at once times a 5-byte upload on a second connection,
then waits for the resume's C{ok}.

    python bench/resume.py                   # a 1 GiB partial, 5 runs
    python bench/resume.py --size 2G --runs 9
    python bench/resume.py --smoke           # CI: a 64 MiB partial, one run
"""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import sys
import time
from pathlib import Path

# bench/ goes last on sys.path: bench/concurrent.py must not shadow the stdlib's package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import _common as c  # noqa: E402

sys.path.insert(0, str(c.REPO))  # this checkout's filexfer, as twistd gets (fx_env)
from filexfer.tcp import _wire  # noqa: E402

MTIME_NS = 1_650_000_000_000_000_000
SMALL = b"hello"
TIMEOUT = 120.0


def put(name: str, size: int) -> bytes:
    """The handshake C{filexfer send} makes: Size, Mtime and a SHA-256 trailer."""
    return _wire.encode_put(_wire.PutRequest(name, size, None, MTIME_NS, trailer=True))


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise c.BenchError(f"the server closed the connection after {line!r}")
        line += chunk
    return line


def small_upload(port: int, name: str) -> float:
    """One 5-byte FX/1 upload, from connect to C{done}; its seconds."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(put(name, len(SMALL)))
        ok = read_line(sock)
        if not ok.startswith(b"ok 0 "):
            raise c.BenchError(f"small upload: {ok!r}")
        sock.sendall(SMALL + _wire.encode_trailer(hashlib.sha256(SMALL).hexdigest()))
        done = read_line(sock)
    seconds = time.perf_counter() - began
    if not done.startswith(b"done 5 "):
        raise c.BenchError(f"small upload: {done!r}")
    return seconds


def answered_yet(sock: socket.socket) -> bool:
    """True when the server's reply is waiting on C{sock} already (peeked, not read)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(timeout)


def wait_for_log(server: c.Server, text: str, count: int) -> None:
    """Wait (bounded) until C{text} is in C{count} lines of the server's log."""
    assert server.log_path is not None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with open(server.log_path, "rb") as handle:
            if sum(text.encode() in line for line in handle) >= count:
                return
        time.sleep(0.01)
    raise c.BenchError(f"no {count} log lines with {text!r}:\n{server.log_tail()}")


def make_partial(server: c.Server, root: Path, announced: int, size: int) -> None:
    """An interrupted upload of big.bin, its partial extended to C{size} bytes on disk."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(put("big.bin", announced))
        read_line(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_for_log(server, "'big.bin'", 1)  # the server has closed (and unlocked) the partial
    (partial,) = (root / ".filexfer" / "partial").iterdir()
    os.truncate(partial, size)


def ms(seconds: list[float]) -> str:
    return (
        f"median {statistics.median(seconds) * 1e3:.1f} ms (runs "
        + " ".join(f"{s * 1e3:.1f}" for s in seconds)
        + ")"
    )


def main() -> int:
    parser = c.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="bytes held by the partial (default 1G)")
    args = parser.parse_args()
    size = 64 * c.MiB if args.smoke else c.parse_size(args.size)
    runs, warmup = (1, 0) if args.smoke else (args.runs, args.warmup)
    print(f"machine: {c.machine()}")
    with c.workdir() as work:
        root = work / "received"
        root.mkdir()
        port = c.free_port()
        argv = c.twistd_argv(
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--root", str(root), "--no-tftp"
        )
        with c.Server(argv, port=port, env=c.fx_env(), cwd=work, log=work / "server.log") as server:
            try:
                make_partial(server, root, size + c.MiB, size)
                alone = []
                for index in range(warmup + runs):
                    seconds = small_upload(port, f"alone-{index}.txt")
                    if index >= warmup:
                        alone.append(seconds)
                during, resume_ok, first = [], [], 0
                for index in range(warmup + runs):
                    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as big:
                        began = time.perf_counter()
                        big.sendall(put("big.bin", size + c.MiB))
                        seconds = small_upload(port, f"during-{index}.txt")
                        small_first = not answered_yet(big)
                        ok = read_line(big)
                        answered = time.perf_counter()
                    if not ok.startswith(b"ok %d " % size):
                        raise c.BenchError(f"resume: {ok!r}")
                    wait_for_log(server, "'big.bin'", index + 2)  # the partial is free again
                    if index >= warmup:
                        during.append(seconds)
                        resume_ok.append(answered - began)
                        first += small_first
            except c.BenchError:
                print(server.log_tail(), file=sys.stderr)
                raise
    label = c.size_text(size)
    print(f"5-byte upload alone:                       {ms(alone)}")
    print(f"5-byte upload while a {label} resume starts: {ms(during)}")
    print(f"the {label} resume's ok after:              {ms(resume_ok)}")
    verdict = "PASS" if first == len(during) else "MISS"
    print(
        f"RESULT resume {label}: 5-byte upload {statistics.median(during) * 1e3:.1f} ms while "
        f"resuming vs {statistics.median(alone) * 1e3:.1f} ms alone; resume ok after "
        f"{statistics.median(resume_ok) * 1e3:.0f} ms; small upload done first in "
        f"{first}/{len(during)} runs {verdict}"
    )
    report = c.Report("resume", args.smoke)
    report.add(
        f"resume {label}",
        small_alone_ms=[s * 1e3 for s in alone],
        small_during_resume_ms=[s * 1e3 for s in during],
        resume_ok_ms=[s * 1e3 for s in resume_ok],
        small_done_first=first,
        runs=len(during),
        verdict=verdict,
    )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
