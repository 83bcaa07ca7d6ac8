"""The filexfer service: the TCP receiver and the TFTP server under one MultiService.

Used by the twistd plugin (C{twistd filexfer}) and by C{filexfer serve}.
"""

from __future__ import annotations

import os
import re
import resource
import socket
import sys
import tempfile
from typing import Any

from twisted.application import internet
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from filexfer._drain import DEFAULT_GRACE, GracefulService, TCPIntake, TFTPIntake
from filexfer._errors import TransferError
from filexfer._eventlog import EventLog, EventLogService
from filexfer._guard import AccessPolicy, ConnectionLimits, parse_networks
from filexfer._hashing import DEFAULT_DIGEST, DIGESTS, DigestName, digest_name
from filexfer._hooks import OnStored, OnStoredService, parse_command
from filexfer._log import describe_peer, log
from filexfer._ports import ListeningPort, StartupError
from filexfer._records import Observers
from filexfer._systemd import InheritedPort, parse_inherited
from filexfer._tls import keep_tls_libraries_out, needs_tls
from filexfer._types import IServiceReactor
from filexfer._workers import (
    ParentWatch,
    RecordsToParent,
    SharedDatagramPort,
    SharedStreamPort,
    WorkerProcesses,
)
from filexfer.storage import CONFLICT_POLICIES, DirectoryStorage, S3Storage
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


def _digest_list(text: str) -> tuple[DigestName, ...]:
    """C{"sha256,blake3"} -> the digests offered, SHA-256 first and always.

    SHA-256 is what a client that does not ask gets (docs/protocol.md,
    "Receipt digests"), so it cannot be withdrawn; the list only says
    which others a client may ask for.

    @raise usage.UsageError: a name that is not one of L{DIGESTS}, or an
        empty one (C{""}, C{"sha256,"}).
    """
    offered: list[DigestName] = [DEFAULT_DIGEST]
    for word in text.split(","):
        name = digest_name(word)
        if name is None:
            what = f"unknown digest {_shown(word.strip())}" if word.strip() else "an empty name"
            raise usage.UsageError(
                f"--digests: {what}; give names from {', '.join(DIGESTS)}, comma-separated"
            )
        if name not in offered:
            offered.append(name)
    return tuple(offered)


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


class _NamedParameter(usage.CoerceParameter):
    """A parameter whose mistakes name the option: C{--port: must be at most 65535, not 'x'}."""

    def dispatch(self, parameterName: str, value: str | None) -> None:
        if value is None:
            raise usage.UsageError(f"--{parameterName} needs a value")
        try:
            self.options.opts[parameterName] = self.coerce(value)
        except ValueError as error:
            raise usage.UsageError(f"--{parameterName}: {error}") from None


class Options(usage.Options):
    """Options of C{twistd filexfer} and C{filexfer serve}."""

    synopsis = "[options]"
    longdesc = ""  # Twisted re-wraps longdesc into one paragraph: see getUsage
    description = (
        "Receive files over TCP (the classic 'name / ok / bytes' push and the\n"
        "verified, resumable FX/1 form) and serve TFTP on UDP, storing everything\n"
        "under --root. --port listens on IPv4 and IPv6.\n"
        "\n"
        "Examples:\n"
        "  twistd -n --pidfile= filexfer --port 8000 --root /srv/incoming\n"
        "  twistd -n --pidfile= filexfer --port 8000 --token-file /etc/filexfer.token\n"
        "  twistd -n --pidfile= filexfer --no-tftp \\\n"
        "      --listen ssl:8443:privateKey=key.pem:certKey=cert.pem\n"
        "  twistd -n --pidfile= filexfer --no-tftp \\\n"
        "      --listen haproxy:tcp:8000 --trusted-proxy 10.0.0.5/32   (behind HAProxy)\n"
        "  filexfer serve --port 8000 --workers 4 --root /srv/incoming\n"
    )
    """Shown after the options by --help, its lines kept as they are."""

    optParameters: list[list[Any]] = [
        [
            "port",
            "p",
            None,
            f"TCP port on all interfaces, IPv4 and IPv6 (default {DEFAULT_PORT} "
            "unless --listen is given); TFTP uses the same number on UDP",
            _positive(int, 65535),
        ],
        ["root", "r", DEFAULT_ROOT, "directory to store into (created if missing)"],
        [
            "storage",
            None,
            None,
            "s3://BUCKET[/PREFIX]: store in an S3-API object store instead of --root "
            "(pip install 'filexfer[s3]'; credentials from the AWS chain: environment, "
            "~/.aws/credentials)",
        ],
        ["s3-endpoint", None, None, "URL of the S3 API (SeaweedFS, MinIO, Ceph RGW); default AWS"],
        ["s3-region", None, None, "region of the bucket (default: the AWS chain's)"],
        [
            "s3-lease",
            None,
            30.0,
            "seconds an upload's lease holds unrenewed (a node killed mid-upload "
            "blocks a resume of that file on another node this long)",
            _positive(float),
        ],
        [
            "s3-threads",
            None,
            16,
            "threads that talk to the object store (bounded pool)",
            _positive(int, 256),
        ],
        [
            "on-conflict",
            None,
            "rename",
            "when the name exists: rename (keep both, 'name (1).ext'), overwrite, refuse (409)",
        ],
        [
            "digests",
            None,
            ",".join(DIGESTS),
            "receipt digests FX/1 clients may ask for, comma-separated; sha256 is always "
            "offered (--digests sha256 keeps FILEXFER_SHA256 set for every --on-stored hook)",
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
        [
            "tftp-interface",
            None,
            "",
            "address for TFTP to bind (default all addresses, IPv4 and IPv6)",
        ],
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
        [
            "tftp-port-range",
            None,
            None,
            "LOW:HIGH: the ports TFTP transfers answer from (for a firewall; tftpd-hpa -R)",
        ],
        [
            "tftp-remap",
            None,
            None,
            "FILE of tftpd-hpa remap rules (in.tftpd -m) applied to requested names",
        ],
        [
            "tftp-remap-test",
            None,
            None,
            "NAME: print what --tftp-remap makes of NAME (a read by --client) and exit",
        ],
        ["client", None, "192.0.2.1", "with --tftp-remap-test: the client address to test with"],
        ["tftp-quirks-file", None, None, "FILE of --tftp-quirks rules, one a line"],
        [
            "tftp-per-client-root",
            None,
            None,
            "ip|mac: serve ROOT/<client address or MAC>/NAME when it exists, else ROOT/NAME",
        ],
        [
            "tftp-http",
            None,
            None,
            "URL: serve files missing under --root from this base URL (cached locally)",
        ],
        [
            "tftp-http-cache-size",
            None,
            256 * 1024 * 1024,
            "bytes the --tftp-http cache may hold, e.g. 1G",
            _size,
        ],
        [
            "tftp-source-timeout",
            None,
            10.0,
            "seconds a TFTP read source may take to answer (ERROR 0 past that)",
            _positive(float),
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
            "grace",
            None,
            DEFAULT_GRACE,
            "on SIGTERM, seconds transfers in progress have to finish before they are cut "
            "(new ones are refused at once; a second SIGTERM cuts at once)",
            _positive(float),
        ],
        [
            "tftp-listen",
            None,
            None,
            "serve TFTP on a UDP socket passed by systemd: systemd:index=N or "
            "systemd:name=NAME (its FileDescriptorName=)",
        ],
        [
            "worker-of",
            None,
            None,
            "(internal) run as a worker of this parent process",
            _positive(int),
        ],
        # -- observing transfers: metrics, event log, hook (docs/deploy.md)
        [
            "metrics",
            None,
            None,
            "serve Prometheus metrics at /metrics on this Twisted endpoint, "
            "e.g. tcp:9100:interface=127.0.0.1",
        ],
        [
            "event-log",
            None,
            None,
            "append one JSON object per line per transfer to this file "
            "('-': standard output); reopened on SIGHUP",
        ],
        [
            "on-stored",
            None,
            None,
            "run this command (split like a shell's words, no shell) after each "
            "stored upload, with FILEXFER_PATH, FILEXFER_SIZE, FILEXFER_SHA256, ... set",
        ],
        [
            "on-stored-timeout",
            None,
            60.0,
            "seconds an --on-stored command may run before it is stopped",
            _positive(float),
        ],
        [
            "on-stored-concurrency",
            None,
            4,
            "--on-stored commands running at once (more wait their turn)",
            _positive(int),
        ],
    ]
    optFlags = [
        ["no-tftp", None, "do not serve TFTP"],
        ["tftp-read-only", None, "refuse TFTP uploads (WRQ)"],
        [
            "tftp-allow-write-without-token",
            None,
            "with --token, accept TFTP uploads anyway (TFTP cannot carry the token)",
        ],
        ["tftp-no-read", None, "refuse TFTP downloads (RRQ)"],
        [
            "tftp-single-port",
            None,
            "answer every TFTP transfer from the TFTP port itself (through NAT, containers)",
        ],
    ]
    compData = usage.Completions(
        optActions={"root": usage.CompleteDirs(), "token-file": usage.CompleteFiles()}
    )

    def __init__(self) -> None:
        super().__init__()
        for name, handler in list(self._dispatch.items()):
            if isinstance(handler, usage.CoerceParameter):
                self._dispatch[name] = _NamedParameter(self, handler.coerce)
        self.argv: list[str] = []
        self["listen"] = []
        self["allow"] = []
        self["trusted-proxy"] = []
        self["tftp-quirks"] = []
        self["tftp-source"] = []

    opt_h = usage.Options.opt_help

    def getUsage(self, width: int | None = None) -> str:
        """Twisted's usage text, then L{description} with its line breaks kept."""
        return str(super().getUsage(width)).rstrip("\n") + "\n\n" + self.description

    def opt_listen(self, description: str) -> None:
        """Twisted endpoint to listen on (repeatable): tcp6:8000, unix:/run/fx.sock, ..."""
        self["listen"].append(description)

    def opt_allow(self, network: str) -> None:
        """Accept only peers in this network (repeatable): 10.0.0.0/8, ::1/128"""
        self._add_network("allow", network)

    def opt_trusted_proxy(self, network: str) -> None:
        """Network of the proxies (HAProxy) whose PROXY header a --listen
        haproxy:tcp:PORT believes; no other peer may connect to it (repeatable):
        10.0.0.5/32"""
        self._add_network("trusted-proxy", network)

    def _add_network(self, option: str, network: str) -> None:
        try:
            parse_networks([network])
        except ValueError as error:
            raise usage.UsageError(f"--{option}: {error}") from None
        self[option].append(network)

    def opt_tftp_quirks(self, rule: str) -> None:
        """NETWORK KEY=VALUE... (repeatable): refuse=OPT[,OPT] blksize=N mtu=N windowsize=N"""
        self["tftp-quirks"].append(rule)

    def opt_tftp_source(self, spec: str) -> None:
        """PYTHON.PATH:FACTORY[=ARG] (repeatable): a TFTP read source asked before the root"""
        self["tftp-source"].append(spec)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse, keeping the arguments for worker processes to be started with."""
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        if self["on-conflict"] not in CONFLICT_POLICIES:
            raise usage.UsageError(
                f"--on-conflict: must be one of {', '.join(CONFLICT_POLICIES)}, "
                f"not {_shown(self['on-conflict'])}"
            )
        self["digests"] = _digest_list(self["digests"])
        if self["storage"] is not None:
            from filexfer.storage.s3 import parse_s3_url

            try:
                self["s3"] = parse_s3_url(self["storage"])
            except ValueError as error:
                raise usage.UsageError(f"--storage: {error}") from None
            try:
                import boto3  # noqa: F401
            except ImportError:
                raise usage.UsageError(
                    "--storage s3://... needs boto3: pip install 'filexfer[s3]'"
                ) from None
        if not self["listen"] and self["port"] is None:
            self["port"] = DEFAULT_PORT
        if self["token-file"] is not None:
            try:
                with open(self["token-file"]) as handle:
                    self["token"] = handle.read().strip()
            except OSError as exc:
                raise usage.UsageError(f"--token-file: cannot read it: {exc.strerror}") from None
        if self["token"] == "":
            given = "--token-file" if self["token-file"] is not None else "--token"
            raise usage.UsageError(f"{given}: the token must not be empty")
        if not 8 <= self["tftp-max-blksize"] <= 65464:
            raise usage.UsageError("--tftp-max-blksize: must be between 8 and 65464")
        from filexfer.tftp._setup import check_fleet_options

        check_fleet_options(self)
        if self.shares_ports and self["listen"]:
            raise usage.UsageError(
                "--workers shares --port and the TFTP port; it cannot share --listen endpoints"
            )
        if self["tftp-listen"] is not None:
            self._check_tftp_listen()
        if not needs_tls(self.endpoints()):
            keep_tls_libraries_out()  # before the reactor loads: saves ~13 MiB per process
        from twisted.internet.endpoints import serverFromString

        self._check_proxies()
        for description in self["listen"]:
            try:
                serverFromString(None, description)
            except Exception as exc:  # any parser's complaint is a usage mistake here
                raise usage.UsageError(f"--listen {description!r}: {exc}") from None
        self._check_observing()

    def _check_observing(self) -> None:
        """--metrics must be an endpoint; --on-stored a program on $PATH."""
        from twisted.internet.endpoints import serverFromString

        if self["metrics"] is not None:
            kind = self["metrics"].split(":", 1)[0].lower()
            if kind not in ("tcp", "tcp6", "ssl"):
                raise usage.UsageError(
                    f"--metrics {self['metrics']!r}: Prometheus scrapes over TCP: "
                    "give tcp:PORT (e.g. tcp:9100:interface=127.0.0.1), tcp6: or ssl:"
                )
            try:
                serverFromString(None, self["metrics"])
            except Exception as exc:
                raise usage.UsageError(f"--metrics {self['metrics']!r}: {exc}") from None
        self["on-stored-argv"] = None
        if self["on-stored"] is not None:
            try:
                self["on-stored-argv"] = parse_command(self["on-stored"])
            except StartupError as error:
                raise usage.UsageError(str(error)) from None

    @property
    def observes(self) -> bool:
        """Does anything watch the transfers (--metrics, --event-log, --on-stored)?"""
        return any(self[name] is not None for name in ("metrics", "event-log", "on-stored"))

    def _check_proxies(self) -> None:
        """A haproxy: endpoint needs --trusted-proxy (but over a UNIX socket); nothing else does."""
        proxied = [d for d in self["listen"] if behind_proxy(d) is not None]
        for description in proxied:
            if behind_proxy(description) not in PROXIED_TYPES:
                raise usage.UsageError(
                    f"--listen {description!r}: HAProxy sends its PROXY header before any "
                    f"TLS, so haproxy: works over {', '.join(PROXIED_TYPES)} only "
                    "(terminate TLS at HAProxy)"
                )
        if not self["trusted-proxy"] and any(behind_proxy(d) != "unix" for d in proxied):
            raise usage.UsageError(
                "--listen haproxy:...: give --trusted-proxy with your proxies' addresses "
                "(a PROXY header is believed only from them)"
            )
        if self["trusted-proxy"] and not proxied:
            raise usage.UsageError(
                "--trusted-proxy: only a --listen haproxy:... endpoint reads PROXY headers"
            )

    def _check_tftp_listen(self) -> None:
        try:
            parse_inherited(self["tftp-listen"])
        except ValueError as error:
            raise usage.UsageError(f"--tftp-listen: {error}") from None
        clash = [
            option
            for option, given in (
                ("--tftp-port", self["tftp-port"] is not None),
                ("--no-tftp", self["no-tftp"]),
                ("--workers", self.shares_ports),
            )
            if given
        ]
        if clash:
            raise usage.UsageError(f"--tftp-listen cannot be given with {clash[0]}")

    @property
    def shares_ports(self) -> bool:
        """True when several processes serve the same ports (--workers)."""
        return bool(self["workers"] > 1 or self["worker-of"] is not None)

    def endpoints(self) -> list[str]:
        """The --listen endpoint descriptions, with --port's backlog where they take one.

        (--port itself is not an endpoint: it is bound dual-stack by
        L{filexfer._ports.ListeningPort}.)
        """
        return [_with_backlog(description) for description in self["listen"]]

    def tftp_port(self) -> int | None:
        """The UDP port for TFTP, or None when TFTP is off or has no port."""
        if self["no-tftp"] or self["tftp-listen"] is not None:
            return None
        port: int | None = self["tftp-port"] if self["tftp-port"] is not None else self["port"]
        return port


_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")
PROXY_PREFIX = "haproxy:"
PROXIED_TYPES = ("tcp", "tcp6", "unix")
"""The endpoint types a C{haproxy:} endpoint may wrap: the header comes before TLS."""
"""An endpoint description starting so reads a PROXY header first (Twisted's syntax)."""


def behind_proxy(description: str) -> str | None:
    """The endpoint type behind C{haproxy:} (C{"tcp"} for C{haproxy:tcp:8000}), or None."""
    if not description.lower().startswith(PROXY_PREFIX):
        return None
    return description[len(PROXY_PREFIX) :].split(":", 1)[0].lower()


def _with_backlog(description: str) -> str:
    """C{description} with C{backlog=LISTEN_BACKLOG} added, for the types that take one."""
    kind = description.split(":", 1)[0].lower()
    if kind in _BACKLOG_TYPES and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


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


def remove_stale_in(storage: DirectoryStorage | S3Storage, max_age: float) -> Deferred[Any]:
    """Run L{DirectoryStorage.remove_stale} through the storage's C{run_blocking}.

    It scans the state directories and unlinks (possibly large) files: with
    a thread pool that is done off the reactor thread.  A failure is logged,
    so that the hourly timer keeps running.
    """
    removing: Deferred[Any] = storage.run_blocking(lambda: storage.remove_stale(max_age))

    def failed(failure: Failure) -> None:
        if failure.check(TransferError):  # the store said why (e.g. S3 credentials): one line
            log.warn("removing stale partial files: {why}", why=failure.value)
        else:
            log.failure("removing stale partial files", failure)

    removing.addErrback(failed)
    return removing


class _EndpointListener(internet.StreamServerEndpointService):
    """A --listen endpoint: failing to listen is a L{StartupError} naming it; the port is logged."""

    option = "--listen"
    """The option that named the endpoint, for the error message."""

    def __init__(self, endpoint: Any, factory: Any, description: str) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self._raiseSynchronously = True  # fail at start-up when the port is taken
        self._stopping = False

    def bind(self) -> None:
        """Listen now (idempotent), for the twistd plugin to report failures before daemonising."""
        if self._waitingForPort is None:
            try:
                super().privilegedStartService()
            except Exception as error:
                self._waitingForPort = None
                reason = getattr(error, "socketError", None) or error
                reason = getattr(reason, "strerror", None) or reason
                raise StartupError(
                    f"{self.option} {self.description}: cannot listen: {reason}"
                ) from None
            waiting: Deferred[Any] = self._waitingForPort  # type: ignore[assignment]
            waiting.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        where = describe_peer(port.getHost())
        trusted_networks = getattr(self.factory, "trusted", None)  # a TrustedProxyFactory
        if trusted_networks is not None:
            trusted = ", ".join(map(str, trusted_networks)) or "UNIX socket peers"
            log.info(
                "listening for TCP on {where} with a PROXY header first, believed only from "
                "{trusted}",
                where=where,
                trusted=trusted,
            )
        else:
            log.info("listening for TCP on {where}", where=where)
        return port

    def privilegedStartService(self) -> None:
        self.bind()

    def startService(self) -> None:
        self.bind()
        Service.startService(self)

    def stopService(self) -> Deferred[Any]:
        """Stop listening, once: the drain stops the port first, the service's stop again."""
        if self._stopping:
            return succeed(None)
        self._stopping = True
        stopping: Deferred[Any] = super().stopService()
        return stopping


class _MetricsListener(_EndpointListener):
    """The --metrics web server's port."""

    option = "--metrics"

    def _listening(self, port: Any) -> Any:
        log.info("serving metrics on http://{where}/metrics", where=describe_peer(port.getHost()))
        return port


def _observe(
    options: Options, reactor: IServiceReactor, root: str, observers: Observers, top: MultiService
) -> None:
    """Add what --metrics, --event-log and --on-stored ask for to C{observers} and C{top}."""
    if options["metrics"] is not None:
        from twisted.internet.endpoints import serverFromString

        from filexfer._metrics import Metrics, metrics_site

        metrics = Metrics()
        observers.add(metrics)
        endpoint = serverFromString(reactor, options["metrics"])
        _MetricsListener(endpoint, metrics_site(metrics), options["metrics"]).setServiceParent(top)
    if options["event-log"] is not None:
        event_log = EventLog(options["event-log"])
        observers.add(event_log)
        EventLogService(event_log, reactor).setServiceParent(top)
    if options["on-stored-argv"] is not None:
        hooks = OnStored(
            reactor,
            options["on-stored-argv"],
            root,
            concurrency=options["on-stored-concurrency"],
            timeout=options["on-stored-timeout"],
        )
        observers.add(hooks)
        OnStoredService(hooks).setServiceParent(top)


def bind_ports(top: MultiService) -> None:
    """Bind every port of the service built by L{make_service} now.

    @raise StartupError: one cannot be bound; the message names the option.
    """
    for child in top:
        bind = getattr(child, "bind", None)
        if bind is not None:
            bind()


def _same_as_port(description: str, port: int | None) -> bool:
    """Is C{description} a tcp/tcp6 endpoint on all addresses that --port already serves?"""
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString

    endpoint = serverFromString(None, description)
    return (
        isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint)
        and endpoint._port == port
        and endpoint._interface in ("", "::", "0.0.0.0")
    )


HASHING_THREADS = 2
"""Threads that hash bytes on disk to start uploads (resumes, stored-file checks)."""


class BlockingPool(Service):
    """A bounded thread pool of its own, started with its first job, stopped with the service.

    @param threads: at most this many jobs run at once; the others wait.
    """

    def __init__(self, reactor: IReactorFromThreads, threads: int, name: str) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)

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


class HashingPool(BlockingPool):
    """A pool of L{HASHING_THREADS} threads for long hashing jobs.

    Hashing bytes already on disk to start an upload (a large partial, a
    stored file without a cached digest) can take minutes: a small pool of
    its own keeps the reactor's pool free for every other upload.
    """

    def __init__(self, reactor: IReactorFromThreads) -> None:
        super().__init__(reactor, HASHING_THREADS, "filexfer-hashing")


def _open_storage(
    options: Options, reactor: IReactorThreads, hashing: HashingPool
) -> DirectoryStorage:
    """The storage under --root, or a L{StartupError} saying why not."""
    pool = reactor.getThreadPool()

    def in_thread(work: Any) -> Any:
        return deferToThreadPool(reactor, pool, work)

    root = os.path.abspath(options["root"])
    if os.path.exists(root) and not os.path.isdir(root):
        raise StartupError(f"--root {root}: not a directory")
    try:
        storage = DirectoryStorage(
            root,
            options["on-conflict"],
            run_blocking=in_thread,
            run_writes=in_thread,
            run_hashing=hashing.run,
            min_free=options["min-free"],
            max_size=options["max-size"],
        )
        probe = tempfile.TemporaryFile(dir=os.path.join(root, ".filexfer"))
        probe.close()
    except OSError as error:
        why = error.strerror or str(error)
        if isinstance(error, FileExistsError | NotADirectoryError):
            why = "a part of the path is not a directory"
        raise StartupError(f"--root {root}: cannot store there: {why}") from None
    return storage


def _open_s3(options: Options, pool: BlockingPool, reactor: IServiceReactor) -> S3Storage:
    """The S3 storage of --storage; the bucket is checked in the background.

    A store that does not answer now may answer later: the node serves, and
    each upload meanwhile gets a 503 saying why (logged here once too).
    The boto3 client is made on first use, in each --workers process.
    """
    from filexfer.storage.s3 import default_client_factory

    bucket, prefix = options["s3"]
    storage = S3Storage(
        bucket,
        prefix,
        options["on-conflict"],
        client_factory=default_client_factory(options["s3-endpoint"], options["s3-region"]),
        run_blocking=pool.run,
        max_size=options["max-size"],
        lease_seconds=options["s3-lease"],
        clock=reactor,
    )
    checking = storage.check_bucket()
    checking.addErrback(
        lambda failure: log.warn(
            "{root}: {reason}", root=storage.root, reason=failure.getErrorMessage()
        )
    )
    return storage


def make_service(options: Options, reactor: IServiceReactor) -> GracefulService:
    """Build the service tree for C{options}, on C{reactor}.

    The ports are bound when the service starts, or earlier by L{bind_ports}.

    @raise StartupError: the --root cannot be used.
    """
    raise_open_files_limit()
    pool: BlockingPool
    storage: DirectoryStorage | S3Storage
    if options["storage"] is not None:
        pool = BlockingPool(reactor, options["s3-threads"], "filexfer-s3")
        storage = _open_s3(options, pool, reactor)
    else:
        pool = HashingPool(reactor)
        storage = _open_storage(options, reactor, pool)
    storage.digests = tuple(name for name in storage.digests if name in options["digests"])
    log.info("storing into {root}", root=storage.root)
    access = AccessPolicy(options["allow"])
    top = GracefulService(reactor, options["grace"], relayed=options["worker-of"] is not None)
    observers = Observers()
    if options["worker-of"] is not None and options.observes:
        # the first child, so stopped last: it forwards the records of cut uploads too
        forward = RecordsToParent(reactor)
        observers.add(forward)
        forward.setServiceParent(top)
    pool.setServiceParent(top)
    factory = ReceiverFactory(
        storage,
        clock=reactor,
        token=options["token"],
        handshake_timeout=options["handshake-timeout"],
        idle_timeout=options["idle-timeout"],
        limits=ConnectionLimits(options["max-connections"], options["max-per-ip"]),
        access=access,
        observer=observers,
    )
    factory.noisy = False  # no "Starting factory <...ReceiverFactory object at 0x...>"
    port = options["port"]
    if options.shares_ports:
        SharedStreamPort(reactor, port, factory, LISTEN_BACKLOG).setServiceParent(top)
    else:
        from twisted.internet.endpoints import serverFromString

        if port is not None:
            ListeningPort(
                reactor,
                socket.SOCK_STREAM,
                port,
                factory,
                option=f"--port {port}",
                backlog=LISTEN_BACKLOG,
            ).setServiceParent(top)
        for description in options["listen"]:
            if port is not None and _same_as_port(description, port):
                log.info(
                    "--listen {description}: already served by --port {port} (IPv4 and IPv6)",
                    description=description,
                    port=port,
                )
                continue
            listening: Any = factory
            inner = description
            if behind_proxy(description) is not None:
                # imported here: Twisted's haproxy package loads the TLS libraries
                from filexfer.tcp._proxy import TrustedProxyFactory

                listening = TrustedProxyFactory(
                    factory,
                    options["trusted-proxy"],
                    clock=reactor,
                    timeout=options["handshake-timeout"],
                )
                inner = description[len(PROXY_PREFIX) :]
            endpoint = serverFromString(reactor, _with_backlog(inner))
            _EndpointListener(endpoint, listening, description).setServiceParent(top)
    before_ports = {pool, *(observers.observers)}  # the records' forwarder
    tcp_ports = [child for child in top if child not in before_ports]
    intakes: list[Any] = [TCPIntake(factory, tcp_ports)]
    tftp_port = options.tftp_port()
    inherited = options["tftp-listen"]
    if tftp_port is None and inherited is None and not options["no-tftp"]:
        log.warn(
            "TFTP is off: with only --listen, give --tftp-port (or --tftp-listen) to serve TFTP"
        )
    if tftp_port is not None or inherited is not None:
        from filexfer.tftp._setup import fleet_settings
        from filexfer.tftp.server import TFTPServerProtocol

        allow_write = not options["tftp-read-only"]
        udp_port = f"UDP port {tftp_port}" if tftp_port is not None else f"the socket {inherited}"
        if options["token"] is not None and allow_write:
            if options["tftp-allow-write-without-token"]:
                log.warn(
                    "--token is set but TFTP cannot carry it: with "
                    "--tftp-allow-write-without-token anyone who reaches {port} "
                    "may upload",
                    port=udp_port,
                )
            else:
                allow_write = False
                log.warn(
                    "--token is set and TFTP cannot carry it: TFTP uploads are refused "
                    "(--tftp-allow-write-without-token accepts them anyway)"
                )
        if options["token"] is not None and not options["tftp-no-read"]:
            log.warn(
                "--token is set but TFTP downloads need none: anyone who reaches {port} "
                "may read the files under --root (--tftp-no-read or --no-tftp to stop it)",
                port=udp_port,
            )
        tftp = TFTPServerProtocol(
            storage=storage,
            reactor=reactor,
            allow_read=not options["tftp-no-read"],
            allow_write=allow_write,
            max_blksize=options["tftp-max-blksize"],
            max_windowsize=options["tftp-max-windowsize"],
            access=access,
            observer=observers,
            **fleet_settings(options, reactor, storage),
        )
        tftp.noisy = False
        intakes.append(TFTPIntake(tftp))
        udp: Service
        if inherited is not None:
            udp = InheritedPort(
                reactor,
                socket.SOCK_DGRAM,
                parse_inherited(inherited),
                tftp,
                option=f"--tftp-listen {inherited}",
            )
        elif options.shares_ports:
            assert tftp_port is not None
            udp = SharedDatagramPort(reactor, tftp_port, tftp, options["tftp-interface"])
        else:
            assert tftp_port is not None
            option = f"--tftp-port {tftp_port}" if options["tftp-port"] else f"--port {tftp_port}"
            udp = ListeningPort(
                reactor,
                socket.SOCK_DGRAM,
                tftp_port,
                tftp,
                option=option,
                interface=options["tftp-interface"],
            )
        udp.setServiceParent(top)
    top.drain_with(intakes)
    if options["worker-of"] is not None:
        ParentWatch(reactor, options["worker-of"]).setServiceParent(top)
        return top  # the first process does the housekeeping
    _observe(options, reactor, storage.root, observers, top)
    if options["workers"] > 1:
        workers_observer = observers if options.observes else None
        workers = WorkerProcesses(reactor, options["workers"] - 1, options.argv, workers_observer)
        workers.setServiceParent(top)
        top.drain_with(intakes, helpers=[workers])
    cleanup = internet.TimerService(3600, remove_stale_in, storage, options["partial-max-age"])
    cleanup.clock = reactor
    cleanup.setServiceParent(top)
    return top
