"""The filexfer service: the TCP receiver and the TFTP server under one MultiService.

Used by the twistd plugin (C{twistd filexfer}) and by C{filexfer serve}.
"""

from __future__ import annotations

import os
import re
import resource
import sys
from typing import Any

from twisted.application import internet
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from filexfer._guard import AccessPolicy, ConnectionLimits
from filexfer._log import log
from filexfer._tls import keep_tls_libraries_out, needs_tls
from filexfer._workers import ParentWatch, SharedDatagramPort, SharedStreamPort, WorkerProcesses
from filexfer.storage import CONFLICT_POLICIES, DirectoryStorage
from filexfer.tcp.receiver import ReceiverFactory

DEFAULT_PORT = 8000
DEFAULT_ROOT = "received"
LISTEN_BACKLOG = 1024
"""Pending connections the kernel queues for --port (Twisted's default is 50)."""


_SIZE = re.compile(r"(?P<whole>[0-9]{1,20})(?:\.(?P<fraction>[0-9]{1,9}))?(?P<unit>[KMGT]?)")
_WHOLE = re.compile(r"[0-9]{1,20}")
_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,9})?")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _shown(text: str) -> str:
    """A value from the command line, cut short enough to quote."""
    return repr(text) if len(text) <= 24 else f"{text[:20]!r}... ({len(text)} characters)"


def _size(text: str) -> int:
    """C{"10G"} -> bytes; plain digits are bytes.

    At most 20 digits before an optional point and 9 after it: the number
    is parsed exactly, without float (which made C{inf} and 400 digits an
    OverflowError).
    """
    match = _SIZE.fullmatch(text.strip().upper().removesuffix("B").removesuffix("I"))
    if match is None:
        raise ValueError(f"not a size: {_shown(text)} (use e.g. 500M, 10G)")
    scale = _UNITS[match["unit"]]
    fraction = int((match["fraction"] or "").ljust(9, "0"))
    return int(match["whole"]) * scale + fraction * scale // 10**9


def _positive(kind: type[int] | type[float], most: float | None = None) -> Any:
    """A coerce function: a whole (int) or decimal (float) number above zero.

    ASCII digits only, at most 20 before the point (no sign, exponent,
    C{inf} or C{nan}: a NaN timeout would never compare), and at most
    C{most}.
    """
    pattern = _WHOLE if kind is int else _DECIMAL

    def convert(text: str) -> Any:
        if not pattern.fullmatch(text.strip()):
            what = "a whole number" if kind is int else "a number of seconds"
            raise ValueError(f"must be {what}, not {_shown(text)}")
        value = kind(text)
        if value <= 0:
            raise ValueError(f"must be greater than zero, not {text}")
        if most is not None and value > most:
            raise ValueError(f"must be at most {most:g}, not {_shown(text)}")
        return value

    return convert


class Options(usage.Options):
    """Options of C{twistd filexfer} and C{filexfer serve}."""

    synopsis = "[options]"
    longdesc = (
        "Receive files over TCP (the classic 'name / ok / bytes' push and the "
        "verified, resumable FX/1 form) and serve TFTP on UDP, storing everything "
        "under --root. Examples:\n"
        "  twistd -n filexfer --port 8000 --root /srv/incoming\n"
        "  twistd -n filexfer --listen tcp6:8000 --listen "
        "ssl:8443:privateKey=key.pem:certKey=cert.pem --no-tftp"
    )

    optParameters: list[list[Any]] = [
        [
            "port",
            "p",
            None,
            f"TCP port on all interfaces (default {DEFAULT_PORT} "
            "unless --listen is given); TFTP uses the same number on UDP",
            _positive(int, 65535),
        ],
        ["root", "r", DEFAULT_ROOT, "directory to store into (created if missing)"],
        [
            "on-conflict",
            None,
            "rename",
            "when the name exists: rename (keep both, 'name (1).ext'), overwrite, refuse (409)",
        ],
        [
            "partial-max-age",
            None,
            2 * 86400,
            "seconds to keep the partial of an interrupted upload for resume",
            _positive(float),
        ],
        [
            "tftp-port",
            None,
            None,
            "UDP port for TFTP (default: the TCP port number)",
            _positive(int, 65535),
        ],
        ["tftp-interface", None, "", "address for TFTP to bind (default all IPv4; '::' for IPv6)"],
        [
            "tftp-max-blksize",
            None,
            65464,
            "largest TFTP blksize granted (8-65464)",
            _positive(int, 65464),
        ],
        [
            "tftp-max-windowsize",
            None,
            64,
            "largest TFTP windowsize granted (1-65535)",
            _positive(int, 65535),
        ],
        ["max-size", None, None, "largest file accepted, e.g. 10G (413)", _size],
        ["min-free", None, 0, "free space to keep on the disk, e.g. 1G (507)", _size],
        ["max-connections", None, 1000, "TCP connections at once (503 past that)", _positive(int)],
        [
            "max-per-ip",
            None,
            64,
            "TCP connections from one address still in their handshake (503 past that)",
            _positive(int),
        ],
        [
            "handshake-timeout",
            None,
            30.0,
            "seconds to complete a handshake (408)",
            _positive(float),
        ],
        ["idle-timeout", None, 300.0, "seconds a transfer may stall (408)", _positive(float)],
        ["token", None, None, "shared secret FX/1 clients must send (classic form refused)"],
        ["token-file", None, None, "read the shared secret from this file"],
        [
            "workers",
            None,
            1,
            "processes sharing --port and the TFTP port (SO_REUSEPORT)",
            _positive(int),
        ],
        [
            "worker-of",
            None,
            None,
            "(internal) run as a worker of this parent process",
            _positive(int),
        ],
    ]
    optFlags = [
        ["no-tftp", None, "do not serve TFTP"],
        ["tftp-read-only", None, "refuse TFTP uploads (WRQ)"],
        ["tftp-no-read", None, "refuse TFTP downloads (RRQ)"],
    ]
    compData = usage.Completions(
        optActions={"root": usage.CompleteDirs(), "token-file": usage.CompleteFiles()}
    )

    def __init__(self) -> None:
        super().__init__()
        self.argv: list[str] = []
        self["listen"] = []
        self["allow"] = []

    opt_h = usage.Options.opt_help

    def opt_listen(self, description: str) -> None:
        """Twisted endpoint to listen on (repeatable): tcp6:8000, unix:/run/fx.sock, ..."""
        self["listen"].append(description)

    def opt_allow(self, network: str) -> None:
        """Accept only peers in this network (repeatable): 10.0.0.0/8, ::1/128"""
        try:
            AccessPolicy([network])
        except ValueError as error:
            raise usage.UsageError(f"--allow: {error}") from None
        self["allow"].append(network)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse, keeping the arguments for worker processes to be started with."""
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        if self["on-conflict"] not in CONFLICT_POLICIES:
            raise usage.UsageError(f"--on-conflict must be one of {', '.join(CONFLICT_POLICIES)}")
        if not self["listen"] and self["port"] is None:
            self["port"] = DEFAULT_PORT
        if self["token-file"] is not None:
            try:
                with open(self["token-file"]) as handle:
                    self["token"] = handle.read().strip()
            except OSError as exc:
                raise usage.UsageError(f"cannot read --token-file: {exc.strerror}") from exc
        if self["token"] == "":
            raise usage.UsageError("the token must not be empty")
        if not 8 <= self["tftp-max-blksize"] <= 65464:
            raise usage.UsageError("--tftp-max-blksize must be between 8 and 65464")
        if self.shares_ports and self["listen"]:
            raise usage.UsageError(
                "--workers shares --port and the TFTP port; it cannot share --listen endpoints"
            )
        if not needs_tls(self.endpoints()):
            keep_tls_libraries_out()  # before the reactor loads: saves ~13 MiB per process
        from twisted.internet.endpoints import serverFromString

        for description in self["listen"]:
            try:
                serverFromString(None, description)
            except Exception as exc:  # any parser's complaint is a usage mistake here
                raise usage.UsageError(f"bad --listen {description!r}: {exc}") from exc

    @property
    def shares_ports(self) -> bool:
        """True when several processes serve the same ports (--workers)."""
        return bool(self["workers"] > 1 or self["worker-of"] is not None)

    def endpoints(self) -> list[str]:
        """The server endpoint descriptions for the TCP receiver."""
        listen = list(self["listen"])
        if self["port"] is not None:
            listen.insert(0, f"tcp:{self['port']}:backlog={LISTEN_BACKLOG}")
        return listen

    def tftp_port(self) -> int | None:
        """The UDP port for TFTP, or None when TFTP is off or has no port."""
        if self["no-tftp"]:
            return None
        port: int | None = self["tftp-port"] if self["tftp-port"] is not None else self["port"]
        return port


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def remove_stale_in(storage: DirectoryStorage, max_age: float) -> Deferred[Any]:
    """Run L{DirectoryStorage.remove_stale} through the storage's C{run_blocking}.

    It scans the state directories and unlinks (possibly large) files: with
    a thread pool that is done off the reactor thread.  A failure is logged,
    so that the hourly timer keeps running.
    """
    removing: Deferred[Any] = storage.run_blocking(lambda: storage.remove_stale(max_age))
    removing.addErrback(lambda failure: log.failure("removing stale partial files", failure))
    return removing


HASHING_THREADS = 2
"""Threads that hash bytes on disk to start uploads (resumes, stored-file checks)."""


class HashingPool(Service):
    """A thread pool of L{HASHING_THREADS} threads for long hashing jobs.

    It starts with its first job and stops with the service.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=HASHING_THREADS, name="filexfer-hashing")

    def run(self, work: Any) -> Any:
        """Run C{work} in the pool; a Deferred of its result."""
        if not self.pool.started:
            self.pool.start()
        return deferToThreadPool(self.reactor, self.pool, work)

    def stopService(self) -> Any:
        """Let running jobs end and stop the threads."""
        super().stopService()
        if self.pool.started:
            self.pool.stop()


def make_service(options: Options, reactor: Any) -> MultiService:
    """Build the service tree for C{options}, on C{reactor}."""
    raise_open_files_limit()
    pool = reactor.getThreadPool()

    def in_thread(work: Any) -> Any:
        return deferToThreadPool(reactor, pool, work)

    # Hashing bytes already on disk to start an upload (a large partial, a
    # stored file without a cached digest) can take minutes: a small pool of
    # its own keeps the shared pool free for every other upload's writes.
    hashing_pool = HashingPool(reactor)  # a child of the top service, below

    storage = DirectoryStorage(
        os.path.abspath(options["root"]),
        options["on-conflict"],
        run_blocking=in_thread,
        run_writes=in_thread,
        run_hashing=hashing_pool.run,
        min_free=options["min-free"],
        max_size=options["max-size"],
    )
    access = AccessPolicy(options["allow"])
    top = MultiService()
    hashing_pool.setServiceParent(top)
    factory = ReceiverFactory(
        storage,
        clock=reactor,
        token=options["token"],
        handshake_timeout=options["handshake-timeout"],
        idle_timeout=options["idle-timeout"],
        limits=ConnectionLimits(options["max-connections"], options["max-per-ip"]),
        access=access,
    )
    if options.shares_ports:
        SharedStreamPort(reactor, options["port"], factory, LISTEN_BACKLOG).setServiceParent(top)
    else:
        from twisted.internet.endpoints import serverFromString

        for description in options.endpoints():
            endpoint = serverFromString(reactor, description)
            listening = internet.StreamServerEndpointService(endpoint, factory)
            listening._raiseSynchronously = True  # fail at start-up when the port is taken
            listening.setServiceParent(top)
    tftp_port = options.tftp_port()
    if tftp_port is None and not options["no-tftp"]:
        log.warn("TFTP is off: with only --listen, give --tftp-port to serve TFTP")
    if tftp_port is not None:
        from filexfer.tftp.server import TFTPServerProtocol

        tftp = TFTPServerProtocol(
            storage=storage,
            reactor=reactor,
            allow_read=not options["tftp-no-read"],
            allow_write=not options["tftp-read-only"],
            max_blksize=options["tftp-max-blksize"],
            max_windowsize=options["tftp-max-windowsize"],
            access=access,
        )
        udp: Service
        if options.shares_ports:
            udp = SharedDatagramPort(reactor, tftp_port, tftp, options["tftp-interface"])
        else:
            udp = internet.UDPServer(
                tftp_port, tftp, interface=options["tftp-interface"], reactor=reactor
            )
        udp.setServiceParent(top)
    if options["worker-of"] is not None:
        ParentWatch(reactor, options["worker-of"]).setServiceParent(top)
        return top  # the first process does the housekeeping
    if options["workers"] > 1:
        WorkerProcesses(reactor, options["workers"] - 1, options.argv).setServiceParent(top)
    cleanup = internet.TimerService(3600, remove_stale_in, storage, options["partial-max-age"])
    cleanup.clock = reactor
    cleanup.setServiceParent(top)
    return top
