"""Shared test utilities: file fixtures, sockets, bounded processes.

Nothing here sleeps to synchronise: processes are awaited with timeouts and
their logs are read line by line by a thread that wakes waiters on a
condition variable.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

# The in-memory doubles are public in filexfer.testing; re-exported for the tests
# that import them from here.
from filexfer.testing import HalfCloseFakeTransport as HalfCloseFakeTransport
from filexfer.testing import ManualRunner as ManualRunner
from filexfer.testing import connect_in_memory as connect_in_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository root (where the twisted/plugins directory lives)."""

LOOPBACK = "127.0.0.1"
PROCESS_TIMEOUT = 30.0


# -- files -----------------------------------------------------------------------


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def write_file(path: str, data: bytes) -> str:
    """Write C{data} to C{path} (creating parents) and return the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def sha256_bytes(data: bytes) -> str:
    """The hex SHA-256 of C{data}."""
    return hashlib.sha256(data).hexdigest()


def blake3_bytes(data: bytes) -> str:
    """The hex BLAKE3 of C{data} (the reference implementation, not ours)."""
    import blake3

    return blake3.blake3(data).hexdigest()


def sha256_file(path: str) -> str:
    """The hex SHA-256 of the file at C{path}."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def visible_files(root: str) -> list[str]:
    """Relative paths of all files under C{root}, the state directory excluded."""
    found = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != ".filexfer")
        for name in names:
            found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def state_files(root: str, sub: str) -> list[str]:
    """Names in the storage's state sub-directory (C{tmp}, C{partial}, C{digests})."""
    return sorted(os.listdir(os.path.join(root, ".filexfer", sub)))


# -- sockets -----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on the loopback address that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def free_udp_port() -> int:
    """A UDP port on the loopback address that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll C{condition} (files on disk: nothing to wait on); fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def read_line(sock: socket.socket) -> bytes:
    """One reply line (up to and including C{\\n}), or what came before the peer closed."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def mount_tmpfs(testcase: Any, folder: str, options: str) -> str | None:
    """Mount a tmpfs (C{mount -o OPTIONS}) at C{folder}, made if needed, unmounted at cleanup.

    @return: None once mounted, or why it could not be (a machine that may
        not mount): each test decides whether to skip or fall back.
    """
    os.makedirs(folder, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        return mounted.stderr.strip() or f"mount exited {mounted.returncode}"
    testcase.addCleanup(subprocess.run, ["umount", "-l", folder], timeout=30)
    return None


def upload_holding(root: str, port: int, request: Any, held: int) -> socket.socket:
    """An FX/1 upload of C{request} (a C{_wire.PutRequest}) to a server storing into C{root}
    whose first C{held} bytes (As) are on the server's disk; the caller sends the rest."""
    from filexfer.tcp import _wire

    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    sock.sendall(_wire.encode_put(request))
    line = read_line(sock)
    if not line.startswith(b"ok 0"):
        raise AssertionError(f"the server answered {line!r}")
    sock.sendall(b"A" * held)

    def partial_holds_them() -> bool:
        names = state_files(root, "partial")
        partial = os.path.join(root, ".filexfer", "partial", names[0]) if names else ""
        return bool(names) and os.path.getsize(partial) == held

    wait_until(partial_holds_them, 30, f"{held} bytes in the partial")
    return sock


def reset_socket(sock: socket.socket) -> None:
    """Close C{sock} with an RST instead of a FIN (SO_LINGER 1, 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    """Read exactly C{count} bytes (or fewer if the peer closes)."""
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    """Read until the peer closes."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


# -- processes -------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for child Pythons: the repository first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("FILEXFER_TOKEN", None)
    return env


def run_filexfer(
    *args: str, timeout: float = PROCESS_TIMEOUT, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run C{python -m filexfer ARGS} to completion, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "filexfer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=cwd or ROOT,
        stdin=subprocess.DEVNULL,
    )


class LineLog:
    """Collects a stream's lines in a thread; lets tests wait for a line."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._condition:
                self.lines.append(line.rstrip("\n"))
                self._condition.notify_all()
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def wait_for(
        self, pattern: str, timeout: float = PROCESS_TIMEOUT, start: int = 0
    ) -> re.Match[str]:
        """The first match of C{pattern} in a line at index C{start} or later.

        @raise AssertionError: when no such line appears within C{timeout}.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._condition:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return match
                    index += 1
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} in:\n" + "\n".join(self.lines)
                    )
                self._condition.wait(remaining)

    def count(self, pattern: str) -> int:
        """How many lines so far match C{pattern}."""
        regex = re.compile(pattern)
        with self._condition:
            return sum(1 for line in self.lines if regex.search(line))

    def join(self, timeout: float) -> None:
        """Wait (bounded) for the stream to end."""
        self._thread.join(timeout)

    def text(self) -> str:
        """Everything read so far."""
        with self._condition:
            return "\n".join(self.lines)


class ServerProcess:
    """A server child process whose output is one merged log."""

    def __init__(self, command: Sequence[str], cwd: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**child_env(), **(env or {})},
            cwd=cwd,
        )
        self.log = LineLog(self.process.stdout)
        self.port = 0

    def wait_listening(self, timeout: float = PROCESS_TIMEOUT) -> int:
        """Wait for the service's "listening for TCP on HOST:PORT" log line; return the port."""
        match = self.log.wait_for(r"listening for TCP on \S+:(\d+)", timeout)
        self.port = int(match.group(1))
        return self.port

    def signal(self, signum: int) -> None:
        """Send C{signum} to the process, if it still runs."""
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait (bounded) for the process to exit; return its status."""
        status = self.process.wait(timeout)
        self.log.join(timeout)
        return status

    def stop(self) -> None:
        """SIGTERM (a drain), a second SIGTERM (cut) if it lasts, then SIGKILL; always reap."""
        for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            self.process.send_signal(signum)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                continue
        self.log.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def twistd_command(*args: str) -> list[str]:
    """C{twistd -n --pidfile= ARGS} run by this Python."""
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        *args,
    ]


def start_twistd(testcase: Any, root: str, *extra: str) -> ServerProcess:
    """C{twistd filexfer} on an ephemeral loopback port, storing into C{root}."""
    cwd = os.path.abspath(testcase.mktemp())
    os.makedirs(cwd)
    command = twistd_command(
        "filexfer", "--listen", f"tcp:0:interface={LOOPBACK}", "--no-tftp", "--root", root, *extra
    )
    server = ServerProcess(command, cwd=cwd)
    testcase.addCleanup(server.stop)
    server.wait_listening()
    return server


def start_twistd_tftp(testcase: Any, root: str, cwd: str, *extra: str) -> tuple[ServerProcess, int]:
    """C{twistd filexfer} with TCP and TFTP on loopback; (the server, its UDP port)."""
    udp = free_udp_port()
    command = twistd_command(
        "filexfer", "--listen", f"tcp:0:interface={LOOPBACK}",
        "--tftp-port", str(udp), "--tftp-interface", LOOPBACK, "--root", root, *extra,
    )  # fmt: skip
    server = ServerProcess(command, cwd=cwd)
    testcase.addCleanup(server.stop)
    server.wait_listening()
    server.log.wait_for(rf"listening for TFTP on UDP on \S+:{udp}\b")
    return server, udp


def start_serve(testcase: Any, root: str, *extra: str) -> ServerProcess:
    """C{filexfer serve} on an ephemeral loopback port, storing into C{root}."""
    cwd = os.path.abspath(testcase.mktemp())
    os.makedirs(cwd)
    command = [
        sys.executable,
        "-m",
        "filexfer",
        "serve",
        "--listen",
        f"tcp:0:interface={LOOPBACK}",
        "--no-tftp",
        "--root",
        root,
        *extra,
    ]
    server = ServerProcess(command, cwd=cwd)
    testcase.addCleanup(server.stop)
    server.wait_listening()
    return server


# -- iPXE in qemu ------------------------------------------------------------------

IPXE_KERNEL = "/usr/lib/ipxe/ipxe.lkrn"
"""Debian's ipxe package: iPXE as a Linux kernel image qemu can boot directly."""
QEMU = "qemu-system-x86_64"


class IPXEMachine:
    """iPXE firmware booted under qemu (software emulation), its console on our pipe.

    qemu's user networking gives the guest 10.0.2.15 by DHCP, with the DHCP
    boot file C{bootfile} (an URL such as C{tftp://10.0.2.2:PORT/boot.ipxe});
    the guest reaches the host's loopback as 10.0.2.2, so a server on
    127.0.0.1 serves it and no traffic leaves the machine.  SeaBIOS copies
    the console to the serial port when qemu runs without graphics, and the
    serial port is qemu's standard output: L{log} holds iPXE's lines.
    """

    def __init__(self, bootfile: str) -> None:
        command = [
            QEMU, "-accel", "tcg", "-machine", "graphics=off", "-m", "128",
            "-display", "none", "-vga", "none", "-monitor", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", IPXE_KERNEL,
            "-netdev", f"user,id=n0,bootfile={bootfile}",
            "-device", "virtio-net-pci,netdev=n0",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            encoding="latin-1",
        )
        self.log = LineLog(self.process.stdout)

    def stop(self) -> None:
        """Kill qemu (nothing in the guest needs a clean end) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.log.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def boot_ipxe(testcase: Any, bootfile: str) -> IPXEMachine:
    """Boot iPXE with DHCP boot file C{bootfile}; stopped at the test's cleanup."""
    machine = IPXEMachine(bootfile)
    testcase.addCleanup(machine.stop)
    return machine


def have_ipxe_qemu() -> bool:
    """Whether qemu and Debian's iPXE kernel image are installed (scripts/install-test-tools)."""
    import shutil

    return shutil.which(QEMU) is not None and os.path.exists(IPXE_KERNEL)


T = TypeVar("T")


def all_at_once(work: Callable[[int], T], count: int, timeout: float = 60.0) -> list[T]:
    """Run C{work(0)} ... C{work(count - 1)} in threads at once; their results (any order).

    Each thread is joined for at most C{timeout} seconds; a result missing
    from the list is a thread that did not finish.
    """
    results: list[T] = []
    lock = threading.Lock()

    def run(number: int) -> None:
        result = work(number)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results
