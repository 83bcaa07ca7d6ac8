"""Shared helpers of the benchmark scripts: processes, peak RSS, medians, ports, tools.

Every process a benchmark starts is stopped by its own PID (never by name),
every wait has a deadline, and big files live in one temporary directory that
is removed at the end.  A reference tool that cannot be found or installed is
a loud failure (L{MissingTool}), never a silently skipped comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import signal
import socket  # noqa: F401 - re-exported for the scripts (c.socket)
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30
TOOLS_CACHE = Path(os.environ.get("FX_BENCH_TOOLS", Path.home() / ".cache" / "filexfer-bench"))


class MissingTool(RuntimeError):
    """A reference tool is neither installed nor installable."""


class BenchError(RuntimeError):
    """A run went wrong (a process failed, a file arrived damaged, a wait ran out)."""


# -- environment --------------------------------------------------------------


def fx_env(**extra: str) -> dict[str, str]:
    """The environment for twistd and the filexfer command: this checkout first on sys.path.

    twistd finds the plugin (twisted/plugins/filexfer_plugin.py) through
    sys.path, which an editable install does not provide.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def listen_options(port: int, server_options: Sequence[str], backlog: int = 1024) -> list[str]:
    """Where twistd listens: loopback only, or --port (all interfaces) with --workers,
    which shares only --port between its processes."""
    if any(option.startswith("--workers") for option in server_options):
        return ["--port", str(port)]
    return ["--listen", f"tcp:{port}:interface=127.0.0.1:backlog={backlog}"]


def twistd_argv(*options: str) -> list[str]:
    """C{twistd -n filexfer OPTIONS} with no pid file, run by this interpreter."""
    runner = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    return [sys.executable, "-c", runner, "-n", "--pidfile=", "filexfer", *options]


def filexfer_argv(*arguments: str) -> list[str]:
    """The C{filexfer} command, run by this interpreter from this checkout."""
    return [sys.executable, "-m", "filexfer", *arguments]


def raise_nofile() -> int:
    """Raise this process's open-files limit to its hard limit (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# -- ports --------------------------------------------------------------------


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that is free for both TCP and UDP right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
            with socket.socket(socket.AF_INET, other) as second:
                try:
                    second.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise BenchError("no free port found")


def _udp_bound(port: int) -> bool:
    wanted = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            next(handle, None)
            for line in handle:
                local = line.split()[1]
                if local.endswith(wanted):
                    return True
    return False


def _tcp_listening(port: int) -> bool:
    """True when a socket is in LISTEN on C{port} (read from /proc: no probe connection,
    which a one-shot server such as socat would take for its client)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if fields[1].endswith(wanted) and fields[3] == "0A":
                    return True
    return False


def wait_listening(
    port: int, *, udp: bool = False, timeout: float = 30.0, process: Any = None
) -> None:
    """Poll until something listens on 127.0.0.1:C{port} (TCP accepts / UDP is bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BenchError(f"{process.args[0]} exited ({process.returncode}) before listening")
        if udp:
            if _udp_bound(port):
                return
        elif _tcp_listening(port):
            return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on port {port} after {timeout:g} s")


# -- processes ----------------------------------------------------------------


@dataclass
class Finished:
    """A child that ran to its end: status, wall time, peak RSS."""

    argv: list[str]
    status: int
    seconds: float
    peak_rss: int  # bytes
    output: str = ""
    cpu: float = 0.0  # user + system seconds


def _status_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def start(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.STDOUT,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (so that stopping it stops its children)."""
    return subprocess.Popen(
        list(argv),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def reap(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, int]:
    """Wait (with a deadline) for C{process}; return (exit code, peak RSS in bytes)."""
    code, peak, _ = reap_with_cpu(process, timeout)
    return code, peak


def reap_with_cpu(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, int, float]:
    """Wait (with a deadline) for C{process}; return (exit code, peak RSS, CPU seconds).

    The CPU seconds (user + system, from C{wait4}) show what a transfer
    costs whatever else the machine is doing.

    The peak is the child's own VmHWM, polled every few milliseconds while
    it runs.  (C{wait4}'s C{ru_maxrss} would not do: Linux carries the
    forking parent's peak over the C{exec}, so every child of this Python
    process would seem to use at least as much memory as it does.)
    """
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        try:
            peak = max(peak, peak_rss(process.pid))
        except (OSError, BenchError):
            pass  # exiting: VmHWM is gone with its memory
        try:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        except ChildProcessError:
            return (process.returncode if process.returncode is not None else -1), peak, 0.0
        if pid == process.pid:
            code = _status_code(status)
            process.returncode = code
            return code, peak, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            stop(process)
            raise BenchError(f"{' '.join(map(str, process.args))} ran past {timeout:g} s")
        time.sleep(0.005)


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """Stop C{process} (and its process group) by PID: SIGTERM, then SIGKILL after C{grace}."""
    if process.returncode is not None:
        return process.returncode
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return process.wait(timeout=grace)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    capture: bool = True,
) -> Finished:
    """Run a child to its end; time it from fork to exit, and measure its peak RSS."""
    with tempfile.TemporaryFile() as out:
        began = time.perf_counter()
        process = start(argv, env=env, cwd=cwd, stdout=out if capture else subprocess.DEVNULL)
        try:
            status, rss, cpu = reap_with_cpu(process, timeout)
        finally:
            stop(process)
        seconds = time.perf_counter() - began
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return Finished(list(argv), status, seconds, rss, text, cpu)


def check(finished: Finished) -> Finished:
    """Raise L{BenchError} unless the child exited 0."""
    if finished.status != 0:
        raise BenchError(
            f"{' '.join(finished.argv)} exited {finished.status}:\n{finished.output[-2000:]}"
        )
    return finished


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    """The peak RSS (VmHWM) of a live process, in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for {pid}")


def current_rss(pid: int) -> int:
    """The current RSS (VmRSS) of a live process, in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def reset_peak_rss(pid: int) -> bool:
    """Reset a live process's VmHWM to its current RSS (Linux C{clear_refs} 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def children(pid: int) -> list[int]:
    """The live children of C{pid} (Linux C{/proc/PID/task/*/children})."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as h:
                found.extend(int(child) for child in h.read().split())
    return found


def descendants(pid: int) -> list[int]:
    """C{pid}'s children, theirs, and so on (bounded: a process tree, not a loop)."""
    found, todo = [], [pid]
    while todo and len(found) < 10_000:
        todo = [child for parent in todo for child in children(parent)]
        found.extend(todo)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a live process and of its children it has reaped (cutime, cstime)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class TreePeak:
    """Polls the peak RSS (VmHWM) and CPU seconds of every descendant of C{pid}, in a
    thread, until stopped.

    For servers that fork a process per connection (rsync's daemon,
    tftpd-hpa): their children's peaks, which no C{wait4} of ours sees, and
    their CPU, which a parent that ignores SIGCHLD (tftpd-hpa) never adds to
    its own (the last poll interval of each child, 10 ms at most, is missed).
    """

    def __init__(self, pid: int, *, itself: bool = False) -> None:
        import threading

        self.pid = pid
        self.itself = itself
        """Poll C{pid}'s own peak too (a child that may exit before it is reaped)."""
        self.peak = 0
        self.cpu: dict[int, float] = {}
        """CPU seconds last seen per descendant."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            for child in [self.pid] * self.itself + descendants(self.pid):
                with contextlib.suppress(OSError, BenchError):
                    self.peak = max(self.peak, peak_rss(child))
                    self.cpu[child] = cpu_seconds(child)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def wait_childless(pid: int, timeout: float = 30.0) -> None:
    """Poll until C{pid} has no children left (a forking server's connection ended)."""
    deadline = time.monotonic() + timeout
    while children(pid):
        if time.monotonic() > deadline:
            raise BenchError(f"process {pid} still has children after {timeout:g} s")
        time.sleep(0.005)


class Server:
    """A long-running child (twistd, tftpd): started, polled for its port, stopped by PID."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        udp: bool = False,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.udp = udp
        self.env = env
        self.cwd = cwd
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[Any] | None = None

    def __enter__(self) -> Server:
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.process = start(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log if self._log else subprocess.DEVNULL,
        )
        try:
            wait_listening(self.port, udp=self.udp, process=self.process)
        except BaseException:
            self.__exit__(None, None, None)
            print(self.log_tail(), file=sys.stderr)
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reset_peak(self) -> None:
        reset_peak_rss(self.pid)

    def peak(self) -> int:
        return peak_rss(self.pid)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop(self.process)
        if self._log is not None:
            self._log.close()

    def log_tail(self, size: int = 3000) -> str:
        if not self.log_path:
            return ""
        with contextlib.suppress(OSError), open(self.log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace")
        return ""


# -- files --------------------------------------------------------------------


@contextlib.contextmanager
def workdir(prefix: str = "fxbench-") -> Iterator[Path]:
    """A temporary directory (on the same disk as /tmp), removed afterwards."""
    base = os.environ.get("FX_BENCH_DIR") or None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_file(path: Path, size: int, seed: int = 0) -> str:
    """Write C{size} pseudo-random bytes to C{path}; return their SHA-256.

    Incompressible, cheap to make (a 1 MiB random block, varied per MiB).
    """
    block = bytearray(os.urandom(MiB))
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        written = 0
        index = 0
        while written < size:
            block[:8] = (index ^ (seed << 40)).to_bytes(8, "little")
            piece = memoryview(block)[: min(MiB, size - written)]
            handle.write(piece)
            digest.update(piece)
            written += len(piece)
            index += 1
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def drop_received(root: Path) -> None:
    """Empty a receive root between runs (keeps the directory and its state dir)."""
    if not root.exists():
        return
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            remove(entry)


# -- reference tools -----------------------------------------------------------


def _apt_install(package: str) -> None:
    as_root = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(
        [*as_root, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        env=env,
        check=False,
        capture_output=True,
        timeout=600,
    )


def locate(name: str, package: str, candidates: Sequence[str] = ()) -> str:
    """The path of tool C{name}, installing Debian C{package} with apt-get when missing."""
    for found in (*candidates, shutil.which(name)):
        if found and os.access(found, os.X_OK):
            return found
    _apt_install(package)
    for found in (*candidates, shutil.which(name)):
        if found and os.access(found, os.X_OK):
            return found
    raise MissingTool(
        f"{name} not found and 'apt-get install {package}' did not provide it; "
        f"install it (scripts/install-test-tools) and run again"
    )


def socat() -> str:
    return locate("socat", "socat")


def rsync() -> str:
    return locate("rsync", "rsync")


WORMHOLE_PACKAGES = (
    "magic-wormhole",
    "magic-wormhole-mailbox-server",
    "magic-wormhole-transit-relay",
)


def wormhole_venv() -> Path:
    """A virtualenv of its own (under L{TOOLS_CACHE}) with magic-wormhole, its mailbox
    server and its transit relay, made with pip on first use.

    A separate venv keeps the dozen packages they pull in out of the
    development environment and the C{test} extra.
    """
    venv = TOOLS_CACHE / "wormhole-venv"
    bin_dir = venv / "bin"
    if all((bin_dir / tool).exists() for tool in ("wormhole", "twist")):
        return bin_dir
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300
        )
        subprocess.run(
            [str(bin_dir / "pip"), "install", "-q", *WORMHOLE_PACKAGES],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise _not_provided(f"install {', '.join(WORMHOLE_PACKAGES)} into {venv}", exc) from exc
    return bin_dir


def _not_provided(what: str, exc: Exception) -> MissingTool:
    """The L{MissingTool} for a failed C{what}, with the end of the command's stderr."""
    detail = getattr(exc, "stderr", b"") or b""
    return MissingTool(f"cannot {what}: {exc} {detail.decode(errors='replace')[-500:]}")


def tftpd_hpa() -> str:
    return locate("in.tftpd", "tftpd-hpa", ["/usr/sbin/in.tftpd"])


def curl() -> str:
    return locate("curl", "curl")


def atftp() -> str:
    return locate("atftp", "atftp")


def atftpd() -> str:
    """atftpd, unpacked from its Debian package (it conflicts with tftpd-hpa as a package)."""
    for found in (shutil.which("atftpd"), "/usr/sbin/atftpd"):
        if found and os.access(found, os.X_OK):
            return found
    target = TOOLS_CACHE / "atftpd"
    binary = target / "usr" / "sbin" / "atftpd"
    if binary.exists():
        return str(binary)
    target.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["apt-get", "download", "atftpd"],
            cwd=target,
            check=True,
            capture_output=True,
            timeout=300,
        )
        debs = sorted(target.glob("atftpd_*.deb"))
        if not debs:
            raise MissingTool("apt-get download atftpd produced no .deb")
        subprocess.run(
            ["dpkg", "-x", str(debs[-1]), str(target)], check=True, capture_output=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError) as exc:
        what = f"unpack atftpd with apt-get download + dpkg -x into {target}"
        raise _not_provided(what, exc) from exc
    if not binary.exists():
        raise MissingTool(f"the atftpd package held no {binary}")
    return str(binary)


def tool_version(argv: Sequence[str], package: str | None = None) -> str:
    """A one-line version of a tool, from dpkg when it is a Debian package."""
    if package:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        )
        if result.returncode == 0 and result.stdout.strip():
            return f"{package} {result.stdout.strip()}"
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine() -> str:
    """One line describing where the figures come from."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores, {model}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


# -- measuring and reporting ------------------------------------------------------


@dataclass
class Series:
    """Timings of repeated runs of one contender."""

    label: str
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)  # role -> peak bytes
    cpu: dict[str, list[float]] = field(default_factory=dict)  # role -> CPU seconds per run

    def add(self, seconds: float, cpu: dict[str, float] | None = None, **rss: int) -> None:
        self.seconds.append(seconds)
        for role, value in rss.items():
            self.rss[role] = max(self.rss.get(role, 0), value)
        for role, spent in (cpu or {}).items():
            self.cpu.setdefault(role, []).append(spent)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mbps(self) -> float:
        return self.nbytes / 1e6 / self.median

    def cpu_per_gib(self, role: str) -> float:
        """Median CPU seconds (user + system) of C{role} per GiB moved."""
        return statistics.median(self.cpu[role]) / (self.nbytes / GiB)

    def describe(self) -> str:
        runs = " ".join(f"{self.nbytes / 1e6 / s:.0f}" for s in self.seconds)
        rss = " ".join(f"{role}_rss={value / MiB:.1f}MiB" for role, value in self.rss.items())
        cpu = "".join(
            f" {role}_cpu={statistics.median(spent):.2f}s"
            f" ({self.cpu_per_gib(role):.2f} s/GiB, runs {' '.join(f'{x:.2f}' for x in spent)})"
            for role, spent in self.cpu.items()
        )
        return (
            f"{self.label}: median {self.mbps:.1f} MB/s ({self.median:.3f} s) runs=[{runs}] "
            f"{rss}{cpu}"
        )


def repeat(
    label: str,
    nbytes: int,
    once: Callable[[], tuple[float, dict[str, int]]],
    *,
    runs: int,
    warmup: int,
) -> Series:
    """Run C{once} C{warmup} times unmeasured, then C{runs} times."""
    series = Series(label, nbytes)
    for _ in range(warmup):
        once()
    for _ in range(runs):
        seconds, rss = once()
        series.add(seconds, **rss)
        print(f"  {label}: {nbytes / 1e6 / seconds:.1f} MB/s", flush=True)
    return series


def result_line(name: str, ours: Series, reference: Series, target: float | None) -> str:
    """The line a benchmark prints per comparison (the smoke test looks for C{RESULT})."""
    ratio = ours.mbps / reference.mbps
    verdict = "" if target is None else (" PASS" if ratio >= target else " MISS")
    rss = " ".join(f"{ours.label}_{role}_rss_MiB={v / MiB:.1f}" for role, v in ours.rss.items())
    ref_rss = " ".join(
        f"{reference.label}_{role}_rss_MiB={v / MiB:.1f}" for role, v in reference.rss.items()
    )
    wanted = "" if target is None else f" target>={target:g}"
    return (
        f"RESULT {name}: {ours.label} {ours.mbps:.1f} MB/s vs {reference.label} "
        f"{reference.mbps:.1f} MB/s ratio={ratio:.2f}{wanted}{verdict} {rss} {ref_rss}"
    )


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    return int(float(number) * scale)


def size_text(size: int) -> str:
    if size % GiB == 0:
        return f"{size // GiB}GiB"
    if size % MiB == 0:
        return f"{size // MiB}MiB"
    return f"{size // 1024}KiB" if size % 1024 == 0 else f"{size}B"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one run, no warm-up: checks the script still works (CI)",
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    parser.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        help="also write the results to FILE as JSON (what docs/_data/ holds and the docs chart)",
    )
    return parser


def add_client_option(parser: argparse.ArgumentParser) -> None:
    """C{--client-option OPTION} (repeatable): extra options for C{filexfer send}."""
    parser.add_argument(
        "--client-option",
        action="append",
        default=[],
        help="extra option for 'filexfer send' (repeatable), e.g. --client-option=--digest=sha256",
    )


@dataclass
class Report:
    """What one benchmark run measured, for C{--json FILE}.

    The shape (format 1)::

        {"format": 1, "benchmark": "tcp", "date": ISO 8601 UTC, "machine": str,
         "smoke": bool, "references": [tool version, ...], "note": str,
         "comparisons": [{"name", "target", "ratio", "verdict",
                          "ours": SERIES, "reference": SERIES}],
         "results": [{"name", ...figures of a result that is no comparison}]}

    where SERIES is C{{"label", "bytes", "seconds": [per run], "median_seconds",
    "mbps" (MB/s, 10**6 bytes), "rss_bytes": {role: peak}, "cpu_seconds":
    {role: median}}}.
    """

    benchmark: str
    smoke: bool
    references: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    note: str = os.environ.get("FX_BENCH_NOTE", "")

    def compare(self, name: str, ours: Series, reference: Series, target: float | None) -> str:
        """Record one comparison and return its C{RESULT} line (L{result_line})."""
        ratio = ours.mbps / reference.mbps
        self.comparisons.append(
            {
                "name": name,
                "target": target,
                "ratio": ratio,
                "verdict": None if target is None else ("PASS" if ratio >= target else "MISS"),
                "ours": series_json(ours),
                "reference": series_json(reference),
            }
        )
        return result_line(name, ours, reference, target)

    def add(self, name: str, **figures: Any) -> None:
        """Record a result that is not a comparison of two series (counts, milliseconds)."""
        self.results.append({"name": name, **figures})

    def write(self, path: Path | None) -> None:
        """Write the report as JSON to C{path} (nothing when C{None}), atomically."""
        if path is None:
            return
        document = {
            "format": 1,
            "benchmark": self.benchmark,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "smoke": self.smoke,
            "references": self.references,
            "note": self.note,
            "comparisons": self.comparisons,
            "results": self.results,
        }
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, path)


def series_json(series: Series) -> dict[str, Any]:
    """One L{Series} as the JSON object L{Report} describes."""
    return {
        "label": series.label,
        "bytes": series.nbytes,
        "seconds": series.seconds,
        "median_seconds": series.median,
        "mbps": series.mbps,
        "rss_bytes": series.rss,
        "cpu_seconds": {role: statistics.median(spent) for role, spent in series.cpu.items()},
        "cpu_seconds_per_gib": {role: series.cpu_per_gib(role) for role in series.cpu},
    }


def is_enospc(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
