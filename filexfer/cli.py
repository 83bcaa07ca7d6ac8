"""The C{filexfer} command: send, get, serve.

Exit codes: 0 when everything asked for was done and verified, 1 when a
transfer failed, 2 for a usage mistake.  Every failure is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.python import usage
from twisted.python.failure import Failure

from filexfer import __version__
from filexfer._ports import StartupError
from filexfer._tls import keep_tls_libraries_out
from filexfer.service import Options, make_service
from filexfer.tcp.sender import RETRY_DEADLINE, Progress, SendError, ServerRefused, send_file

PROG = "filexfer"

_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]]+)):(?P<port>[0-9]{1,5})(?P<path>/.*)?$"
)


class UserError(Exception):
    """A mistake to report in one line, with exit status 2 (usage) or 1."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Destination:
    """Where to send: C{HOST:PORT[/dir]} or C{tftp://HOST:PORT/NAME}."""

    scheme: str  # "tcp" or "tftp"
    host: str
    port: int
    path: str  # remote path ("" for none); a trailing "/" means a directory


def parse_destination(text: str) -> Destination:
    """Parse C{HOST:PORT}, C{HOST:PORT/remote/dir}, C{[::1]:PORT} or C{tftp://...}."""
    scheme = "tcp"
    rest = text
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("tftp", "tcp"):
            raise UserError(f"unknown scheme {scheme!r} in {text!r} (use HOST:PORT or tftp://)", 2)
        if scheme == "tftp" and re.match(r"^(\[[^\]]+\]|[^:/\[\]]+)(/|$)", rest):
            host, slash, path = rest.partition("/")
            rest = f"{host}:69{slash}{path}"
    match = _HOST_PORT.match(rest)
    if match is None:
        raise UserError(f"bad destination {text!r}: expected HOST:PORT, [IPv6]:PORT or tftp://", 2)
    port = int(match["port"])
    if not 0 < port < 65536:
        raise UserError(f"bad port {port} in {text!r}", 2)
    return Destination(scheme, match["v6"] or match["host"], port, (match["path"] or "")[1:])


def files_to_send(sources: Sequence[str], remote_dir: str) -> Iterator[tuple[str, str]]:
    """(local file, remote relative path) for every file; directories recursively."""
    prefix = remote_dir.strip("/")
    for source in sources:
        if os.path.isdir(source):
            top = os.path.basename(os.path.normpath(os.path.abspath(source)))
            for folder, subdirs, names in os.walk(source):
                subdirs.sort()
                for name in sorted(names):
                    local = os.path.join(folder, name)
                    relative = os.path.relpath(local, source).replace(os.sep, "/")
                    yield local, _join(prefix, top, relative)
        elif os.path.exists(source):
            yield source, _join(prefix, os.path.basename(source))
        else:
            raise UserError(f"{source}: no such file or directory")


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def describe_failure(failure: Failure) -> str:
    """One line for a person, whatever went wrong."""
    error = failure.value
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    if isinstance(error, DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(error, TimeoutError):
        return "timed out connecting"
    if isinstance(error, ConnectError):
        return f"cannot connect: {error.osError or error}"
    if isinstance(error, SendError | UserError):
        return str(error)
    text = str(error) or error.__class__.__name__
    return " ".join(text.split())


class ProgressBar:
    """One file's tqdm bar, or nothing when C{stream} is None.

    Call it as a progress callback; a total of None means not known yet.
    """

    def __init__(self, label: str, total: int | None, stream: TextIO | None) -> None:
        self._bar: Any = None
        if stream is not None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=stream,
                leave=True,
                dynamic_ncols=True,
            )

    def __call__(self, done: int, total: int | None) -> None:
        if self._bar is None:
            return
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Draw the bar a last time and leave it on the screen."""
        if self._bar is not None:
            self._bar.close()


class ProgressBars:
    """One tqdm bar per file, on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        self.enabled = enabled and stream.isatty()
        self._stream = stream

    @contextmanager
    def for_file(self, label: str, total: int | None) -> Iterator[ProgressBar]:
        """A progress bar for one file, closed when the block ends."""
        bar = ProgressBar(label, total, self._stream if self.enabled else None)
        try:
            yield bar
        finally:
            bar.close()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send and receive files over TCP (classic push or verified FX/1) and TFTP.",
        epilog="Run 'filexfer COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    send = commands.add_parser(
        "send",
        help="send files or directories to a filexfer server (or any TFTP server)",
        description="Send FILEs to DEST. Directories are sent recursively, keeping relative "
        "paths. Exit 0 only when every file was stored and verified by the server.",
        epilog="examples:\n"
        "  filexfer send build.tar.gz backup.example.org:8000\n"
        "  filexfer send logs/ 10.0.0.5:8000/hosts/web1\n"
        "  filexfer send --plain image.bin [::1]:9000\n"
        "  filexfer send firmware.bin tftp://192.0.2.7:69/boot/\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("files", nargs="+", metavar="FILE", help="files or directories")
    send.add_argument(
        "dest",
        metavar="DEST",
        help="HOST:PORT, HOST:PORT/remote/dir, [IPv6]:PORT, or tftp://HOST:PORT/NAME "
        "(a trailing / means a directory)",
    )
    send.add_argument(
        "--plain",
        action="store_true",
        help="classic form (name, ok, bytes, close) for receivers that speak nothing else; "
        "no receipt, single files only",
    )
    send.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, verifying the server's certificate and host name",
    )
    send.add_argument(
        "--cacert",
        metavar="FILE",
        help="PEM certificate of the authority to trust with --tls (default: the system's)",
    )
    send.add_argument(
        "--token",
        default=os.environ.get("FILEXFER_TOKEN"),
        help="shared secret the server requires (default: $FILEXFER_TOKEN)",
    )
    send.add_argument(
        "--retry-for",
        type=_seconds,
        default=RETRY_DEADLINE,
        metavar="SECONDS",
        help="while the server answers 503 (busy), try each file again with growing, "
        f"randomised waits for up to SECONDS (default {RETRY_DEADLINE:g}; 0: never); "
        "TCP only",
    )
    _add_common(send)

    get = commands.add_parser(
        "get",
        help="download a file from a TFTP server",
        description="Download NAME from a TFTP server into LOCAL (default: the name's last "
        "component in the current directory). The file appears only once complete.",
        epilog="example:\n  filexfer get tftp://127.0.0.1:8000/boot/pxelinux.0\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("url", metavar="tftp://HOST:PORT/NAME")
    get.add_argument("local", metavar="LOCAL", nargs="?", help="where to save it")
    get.add_argument(
        "--overwrite", action="store_true", help="replace LOCAL if it exists (default: refuse)"
    )
    _add_common(get)

    commands.add_parser(
        "serve",
        add_help=False,  # its arguments, --help included, are ServeOptions'
        help="run the receiver in the foreground (same options as 'twistd filexfer'; "
        "see 'filexfer serve --help')",
    )
    return parser


class ServeOptions(Options):
    """C{filexfer serve}: exactly the options of C{twistd filexfer}, under this name."""

    synopsis = f"Usage: {PROG} serve [options]"


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments: argparse's for send and get, the service's Options for serve.

    For serve, C{options} holds the parsed L{ServeOptions}, which have
    already kept the TLS libraries out unless an endpoint needs them.

    @raise UserError: a mistake in serve's options (status 2).
    @raise SystemExit: after help, the version, or a mistake argparse found.
    """
    parser = _build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "serve":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args
    args.options = ServeOptions()
    try:
        args.options.parseOptions(rest)
    except usage.UsageError as error:
        raise UserError(f"serve: {error}", 2) from None
    return args


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more: {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    tftp = parser.add_argument_group("TFTP options")
    tftp.add_argument("--blksize", type=int, default=None, help="TFTP block size (8-65464)")
    tftp.add_argument("--windowsize", type=int, default=None, help="TFTP window size (1-65535)")
    tftp.add_argument(
        "--timeout", type=float, default=None, help="TFTP retransmission timeout in seconds"
    )


def _tftp_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "blksize": args.blksize,
        "windowsize": args.windowsize,
        "timeout": args.timeout,
    }
    return {key: value for key, value in options.items() if value is not None}


async def _send(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    dest = parse_destination(args.dest)
    if dest.scheme == "tftp":
        plan = _tftp_plan(args, dest)
        transport = _tftp_transport(reactor, dest, args)
    else:
        if args.plain and any(os.path.isdir(source) for source in args.files):
            raise UserError("--plain sends single files only; send directories with FX/1", 2)
        plan = list(files_to_send(args.files, dest.path))
        transport = _tcp_transport(reactor, dest, args, err)
    return await send_all(plan, transport, ProgressBars(not args.no_progress, err), out, err)


@attrs.frozen
class Sent:
    """What one transport says it did with one file, for the success line."""

    where: str  # the remote name or URL the file went to
    size: int  # bytes


@attrs.frozen
class Transport:
    """How files go over one transport: send one, and what a success means."""

    send_one: Callable[[str, str, Progress], Awaitable[Sent]]
    """C{send_one(local, remote, progress)}: send one file, or fail with why."""
    outcome: str
    """What the success line says after the byte count (C{"stored and verified"})."""


CONNECTION_FAILURES = (ConnectError, DNSLookupError)
"""Failures to reach the server at all: the files after one are not tried."""


async def send_all(
    plan: Sequence[tuple[str, str]],
    transport: Transport,
    bars: ProgressBars,
    out: TextIO,
    err: TextIO,
) -> int:
    """Send every C{(local, remote)} of C{plan}; return the exit status.

    Each file gets a progress bar, then one line: on stdout when it was
    sent, on stderr when it failed.  After a failure to reach the server
    the rest are not tried.  The status is 0 when every file was sent, 1
    when any failed.
    """
    failures = 0
    for local, remote in plan:
        try:
            with bars.for_file(remote, os.path.getsize(local)) as progress:
                sent = await transport.send_one(local, remote, progress)
        except Exception:
            failure = Failure()
            print(f"{PROG}: {local}: {describe_failure(failure)}", file=err)
            failures += 1
            if failure.check(*CONNECTION_FAILURES):
                break
            continue
        outcome = f" {transport.outcome}" if transport.outcome else ""
        print(f"{local} -> {sent.where}: {sent.size} bytes{outcome}", file=out)
    return 1 if failures else 0


def _tcp_transport(
    reactor: Any, dest: Destination, args: argparse.Namespace, err: TextIO
) -> Transport:
    """FX/1 (or the classic form with --plain) over TCP, or TLS with --tls."""
    make_endpoint = _endpoint_maker(reactor, dest, args)

    async def send_one(local: str, remote: str, progress: Progress) -> Sent:
        receipt = await send_file(
            reactor,
            make_endpoint(),
            local,
            name=os.path.basename(remote) if args.plain else remote,
            plain=args.plain,
            token=args.token,
            progress=progress,
            retry_deadline=args.retry_for,
            on_retry=_retry_note(local, err),
        )
        return Sent(receipt.path, receipt.size)

    how = "sent (classic form, not verified)" if args.plain else "stored and verified"
    return Transport(send_one, how)


def _retry_note(local: str, err: TextIO) -> Callable[[ServerRefused, float], None]:
    """An C{on_retry} that says on stderr that the server was busy and when we try again."""

    def note(refusal: ServerRefused, wait: float) -> None:
        print(
            f"{PROG}: {local}: server busy ({refusal.code}); trying again in {wait:.1f} s", file=err
        )

    return note


def _endpoint_maker(reactor: Any, dest: Destination, args: argparse.Namespace) -> Callable[[], Any]:
    """A factory of client endpoints for C{dest}: TCP, or TLS with --tls."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    if args.cacert and not args.tls:
        raise UserError("--cacert goes with --tls", 2)
    if not args.tls:
        return lambda: HostnameEndpoint(reactor, dest.host, dest.port, timeout=30)
    from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust

    trust: Any = platformTrust()
    if args.cacert:
        try:
            with open(args.cacert, "rb") as handle:
                trust = Certificate.loadPEM(handle.read())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load --cacert {args.cacert}: {exc}") from None
    options = optionsForClientTLS(dest.host, trustRoot=trust)
    return lambda: wrapClientTLS(
        options, HostnameEndpoint(reactor, dest.host, dest.port, timeout=30)
    )


def _tftp_plan(args: argparse.Namespace, dest: Destination) -> list[tuple[str, str]]:
    """(local file, remote name) for each FILE sent to a tftp:// DEST."""
    if args.plain or any(os.path.isdir(source) for source in args.files):
        raise UserError("TFTP sends single files; --plain and directories are for TCP", 2)
    if len(args.files) > 1 and dest.path and not dest.path.endswith("/"):
        raise UserError("several files need a directory: end the tftp:// path with /", 2)
    plan = []
    for local in args.files:
        if not os.path.isfile(local):
            raise UserError(f"{local}: no such file")
        remote = dest.path
        if not remote or remote.endswith("/"):
            remote += os.path.basename(local)
        plan.append((local, remote))
    return plan


def _tftp_transport(reactor: Any, dest: Destination, args: argparse.Namespace) -> Transport:
    """TFTP uploads (WRQ) to C{dest}, with the TFTP options given."""
    from filexfer import tftp

    options = _tftp_options(args)

    async def send_one(local: str, remote: str, progress: Progress) -> Sent:
        total = os.path.getsize(local)  # an upload always knows it; Progress takes no None
        size = await tftp.upload(
            reactor,
            dest.host,
            dest.port,
            local,
            remote,
            progress=lambda done, _: progress(done, total),
            **options,
        )
        return Sent(f"tftp://{dest.host}:{dest.port}/{remote}", size)

    return Transport(send_one, "")


async def _get(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from filexfer import tftp

    dest = parse_destination(args.url)
    if dest.scheme != "tftp":
        raise UserError("get takes a tftp:// URL (the TCP push only sends)", 2)
    if not dest.path or dest.path.endswith("/"):
        raise UserError("name the file to get: tftp://HOST:PORT/NAME", 2)
    local = args.local or os.path.basename(dest.path)
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(dest.path))
    if os.path.lexists(local) and not args.overwrite:
        raise UserError(f"{local} exists; use --overwrite to replace it")
    bars = ProgressBars(not args.no_progress, err)
    try:
        with bars.for_file(dest.path, None) as progress:
            size = await tftp.download(
                reactor,
                dest.host,
                dest.port,
                dest.path,
                local,
                progress=progress,
                **_tftp_options(args),
            )
    except Exception:
        print(f"{PROG}: {args.url}: {describe_failure(Failure())}", file=err)
        return 1
    print(f"tftp://{dest.host}:{dest.port}/{dest.path} -> {local}: {size} bytes", file=out)
    return 0


def _serve(reactor: Any, options: Options, err: TextIO) -> Deferred[int]:
    from twisted.internet.error import CannotListenError
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    try:
        service = make_service(options, reactor)
    except ValueError as error:  # e.g. a --listen description serverFromString cannot parse
        raise UserError(f"serve: {error}", 2) from None
    except StartupError as error:  # --root unusable
        raise UserError(f"serve: {error}") from None
    try:
        service.startService()
    except StartupError as error:  # a port cannot be bound; names the option
        raise UserError(f"serve: {error}") from None
    except CannotListenError as error:
        raise UserError(f"cannot listen on port {error.port}: {error.socketError}") from None
    except OSError as error:
        raise UserError(f"cannot start: {error}") from None
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()  # runs until interrupted


def _run(reactor: Any, args: argparse.Namespace) -> Deferred[int]:
    out, err = sys.stdout, sys.stderr

    async def guarded() -> int:
        try:
            if args.command == "send":
                return await _send(reactor, args, out, err)
            if args.command == "get":
                return await _get(reactor, args, out, err)
            return await _serve(reactor, args.options, err)
        except UserError as error:
            print(f"{PROG}: {error}", file=err)
            return error.status

    return ensureDeferred(guarded())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the C{filexfer} console script."""
    from twisted.internet import task

    try:
        args = parse_command_line(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        raise SystemExit(error.status) from None
    if args.command != "serve" and not _needs_tls(args):
        keep_tls_libraries_out()  # serve's Options did so when no endpoint needs TLS

    def run(reactor: Any) -> Deferred[None]:
        return _run(reactor, args).addCallback(_exit)

    task.react(run)


def _needs_tls(args: argparse.Namespace) -> bool:
    """Will send or get use TLS?  Only C{send --tls} does."""
    return args.command == "send" and bool(args.tls)


def _exit(status: int) -> None:
    if status:
        raise SystemExit(status)
