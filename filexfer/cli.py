"""The C{filexfer} command: send, get, serve.

Exit codes: 0 when everything asked for was done and verified, 1 when a
transfer failed, 2 for a usage mistake, 3 when everything else was sent but
some entries were skipped (not regular files, or names the server would
refuse), 130 after SIGINT (Ctrl-C) and 143 after SIGTERM.  Every failure is
one line on stderr, never a traceback; text from a peer or a file name is
printed through L{filexfer._text.escape}.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import stat
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.python import usage
from twisted.python.failure import Failure

from filexfer import __version__
from filexfer._hashing import DIGESTS
from filexfer._progress import Progress
from filexfer._start import interrupted_while_starting
from filexfer._text import escape
from filexfer._tls import keep_tls_libraries_out
from filexfer._types import IServiceReactor
from filexfer.tcp.sender import (
    CONNECT_TIMEOUT,
    IDLE_TIMEOUT,
    REPLY_TIMEOUT,
    RETRY_DEADLINE,
    ConnectTimeout,
    ReplyTimeout,
    SendError,
    ServerRefused,
    check_remote_name,
    describe_mode,
    send_file,
)
from filexfer.tftp._packets import MAX_BLKSIZE, MAX_WINDOWSIZE, MIN_BLKSIZE, MODES
from filexfer.tftp._url import BadURL, format_tftp_url, parse_tftp_url
from filexfer.tftp.client import (
    DEFAULT_CLIENT_BLKSIZE,
    DEFAULT_CLIENT_RETRIES,
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_CLIENT_WINDOWSIZE,
)

if TYPE_CHECKING:
    from filexfer.service import Options

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
    mode: str | None = None  # a tftp:// URL's ;mode= (RFC 3617)


def parse_destination(text: str) -> Destination:
    """Parse C{HOST:PORT}, C{HOST:PORT/remote/dir}, C{[::1]:PORT} or C{tftp://...}.

    A tftp:// URL is read by L{filexfer.tftp.parse_tftp_url} (RFC 3617: its
    name percent-decoded, its C{;mode=} kept in L{Destination.mode}).
    """
    scheme = "tcp"
    rest = text
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() == "tftp":
            try:
                url = parse_tftp_url(text)
            except BadURL as error:
                raise UserError(str(error), 2) from None
            return Destination("tftp", url.host, url.port, url.name, url.mode)
        if scheme != "tcp":
            raise UserError(f"unknown scheme {scheme!r} in {text!r} (use HOST:PORT or tftp://)", 2)
    match = _HOST_PORT.match(rest)
    if match is None:
        raise UserError(f"bad destination {text!r}: expected HOST:PORT, [IPv6]:PORT or tftp://", 2)
    port = int(match["port"])
    if not 0 < port < 65536:
        raise UserError(f"bad port {port} in {text!r}", 2)
    return Destination(scheme, match["v6"] or match["host"], port, (match["path"] or "")[1:])


STATUS_FAILED = 1
STATUS_USAGE = 2
STATUS_SKIPPED = 3
"""Everything that could be sent was sent, but some entries were skipped."""


def files_to_send(
    sources: Sequence[str],
    remote_dir: str,
    skipped: list[str] | None = None,
    classic: bool = False,
) -> Iterator[tuple[str, str]]:
    """(local file, remote relative path) for every file; directories recursively.

    The rule for what is not a regular file (docs/usage.md, "What is sent"):
    a symlink to a regular file is sent as a file under the link's name; a
    symlink to a directory is not followed, except when it is a FILE given
    on the command line; dangling symlinks, FIFOs, sockets and devices are
    skipped, and so is a file whose remote name the server would refuse
    (not valid UTF-8, a control character, ...).  Each skip appends one line
    to C{skipped}; nothing is opened, so nothing can block.

    @raise UserError: a FILE given on the command line does not exist.
    """
    notes: list[str] = [] if skipped is None else skipped
    prefix = remote_dir.strip("/")
    for source in sources:
        try:
            info = os.stat(source)  # the command line's own symlinks are followed
        except FileNotFoundError:
            if os.path.lexists(source):
                notes.append(f"{source}: skipped: dangling symlink")
                continue
            raise UserError(f"{source}: no such file or directory") from None
        except OSError as error:
            notes.append(f"{source}: skipped: {error.strerror}")
            continue
        if stat.S_ISDIR(info.st_mode):
            top = os.path.basename(os.path.normpath(os.path.abspath(source)))
            for local, relative in _walk(source, "", notes):
                yield from _named(local, _join(prefix, top, relative), classic, notes)
        elif stat.S_ISREG(info.st_mode):
            yield from _named(source, _join(prefix, os.path.basename(source)), classic, notes)
        else:
            notes.append(f"{source}: skipped: {describe_mode(info.st_mode)}")


def _walk(folder: str, relative: str, notes: list[str]) -> Iterator[tuple[str, str]]:
    """(local, relative) for the regular files below C{folder}, in name order."""
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as error:
        notes.append(f"{folder}: skipped: cannot read the directory: {error.strerror}")
        return
    for entry in entries:
        local = entry.path
        below = _join(relative, entry.name)
        kind = _kind(local)
        if kind == "file":
            yield local, below
        elif kind == "directory":
            yield from _walk(local, below, notes)
        else:
            notes.append(f"{local}: skipped: {kind}")


def _kind(path: str) -> str:
    """C{"file"}, C{"directory"}, or why the entry at C{path} is skipped."""
    try:
        info = os.lstat(path)
    except OSError as error:
        return f"cannot read it: {error.strerror}"
    if stat.S_ISREG(info.st_mode):
        return "file"
    if stat.S_ISDIR(info.st_mode):
        return "directory"
    if not stat.S_ISLNK(info.st_mode):
        return describe_mode(info.st_mode)
    try:
        target = os.stat(path)
    except OSError:
        return "dangling symlink"
    if stat.S_ISREG(target.st_mode):
        return "file"
    if stat.S_ISDIR(target.st_mode):
        return "symlink to a directory (not followed)"
    return f"symlink to {describe_mode(target.st_mode)}"


def _named(local: str, remote: str, classic: bool, notes: list[str]) -> Iterator[tuple[str, str]]:
    """C{(local, remote)}, unless the server's name rules refuse C{remote}."""
    try:
        check_remote_name(os.path.basename(remote) if classic else remote, classic)
    except SendError as error:
        notes.append(f"{local}: skipped: {error}")
        return
    yield local, remote


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def describe_failure(failure: Failure) -> str:
    """One line for a person, whatever went wrong; anything a peer said is escaped."""
    error = failure.value
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    if isinstance(error, DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(error, TimeoutError):
        return "timed out connecting (is the host up and the port open? see --connect-timeout)"
    if isinstance(error, ConnectError):
        return f"cannot connect: {error.osError or error}"
    if isinstance(error, SendError | UserError):
        return escape(str(error))
    text = str(error) or error.__class__.__name__
    return escape(" ".join(text.split()))


def say(stream: TextIO, text: str) -> None:
    """Print one line, escaped: a file name or a peer's words cannot break it or the terminal."""
    print(escape(text), file=stream)


class Interrupt:
    """SIGINT and SIGTERM during send or get: stop the transfer that runs, then report.

    The first signal cancels the running transfer (L{guard}), which drops
    the connection (an FX/1 server keeps the bytes for a resume) or removes
    a download's temporary file; the command then prints one line and exits
    with 128 + the signal's number.  A second signal, or a transfer that
    does not stop within L{GRACE} seconds, ends the process at once.
    """

    GRACE = 5.0

    def __init__(self) -> None:
        self.signum: int | None = None
        self._running: Deferred[Any] | None = None
        self._deadline: IDelayedCall | None = None

    @property
    def status(self) -> int:
        """The exit status: 130 after SIGINT, 143 after SIGTERM."""
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        """The signal's name, C{SIGINT} or C{SIGTERM}."""
        return signal.Signals(self.signum or 0).name

    def guard(self, running: Deferred[Any]) -> Deferred[Any]:
        """Cancel C{running} if a signal comes while it runs (at once if one came)."""
        self._running = running
        if self.signum is not None:
            running.cancel()
        return running

    def install(self, reactor: IServiceReactor) -> None:
        """Take SIGINT and SIGTERM over from the reactor (call it once the reactor runs)."""

        def handler(signum: int, frame: object) -> None:
            reactor.callFromThread(self.fire, reactor, signum)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)

    def fire(self, reactor: IServiceReactor, signum: int) -> None:
        """A signal came: cancel what runs; the second one ends the process now."""
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        self._deadline = reactor.callLater(self.GRACE, self._too_slow)
        if self._running is not None:
            self._running.cancel()  # a no-op once it has a result; forwarded when chained

    def _too_slow(self) -> None:
        say(sys.stderr, f"{PROG}: interrupted by {self.name}; the transfer did not stop in time")
        sys.stderr.flush()
        os._exit(self.status)


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


class _OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage mistakes are one line (and exit 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="Send and receive files over TCP (classic push or verified FX/1) and TFTP.",
        epilog="Run 'filexfer COMMAND --help' for a command's options.\n"
        "\nexamples:\n"
        "  filexfer serve --port 8000 --root /srv/incoming\n"
        "  filexfer send build.tar.gz backup.example.org:8000\n"
        "  filexfer get tftp://192.0.2.7:69/boot/pxelinux.0\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_OneLineParser
    )

    send = commands.add_parser(
        "send",
        help="send files or directories to a filexfer server (or any TFTP server)",
        description="Send FILEs to DEST. Directories are sent recursively, keeping relative "
        "paths; symlinks to files are sent as files, other entries that are not regular "
        "files are skipped with one line each. Exit 0 only when every file was stored and "
        "verified by the server.",
        epilog=EXIT_CODES_HELP.lstrip("\n") + "\nexamples:\n"
        "  filexfer send build.tar.gz backup.example.org:8000\n"
        "  filexfer send logs/ 10.0.0.5:8000/hosts/web1\n"
        "  filexfer send --plain image.bin '[::1]:9000'\n"
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
        "--digest",
        choices=DIGESTS,
        default=None,
        help="receipt digest to ask the server for (default blake3, about 4x faster than "
        "sha256; a server that does not offer it answers with sha256, and the success line "
        "names the one verified); sha256 asks nothing, as clients before BLAKE3; FX/1 only",
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
    send.add_argument(
        "--connect-timeout",
        type=_positive_seconds,
        default=CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when no connection is made within SECONDS (default {CONNECT_TIMEOUT:g}); "
        "TCP only",
    )
    send.add_argument(
        "--reply-timeout",
        type=_positive_seconds,
        default=REPLY_TIMEOUT,
        metavar="SECONDS",
        help="give up when the server has not answered the request SECONDS after the "
        f"connection was made (default {REPLY_TIMEOUT:g}); TCP only",
    )
    send.add_argument(
        "--idle-timeout",
        type=_positive_seconds,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when a transfer makes no progress for SECONDS (default {IDLE_TIMEOUT:g}); "
        "TCP only",
    )
    _add_common(send)

    get = commands.add_parser(
        "get",
        help="download a file from a TFTP server",
        description="Download NAME from a TFTP server into LOCAL (default: the name's last "
        "component in the current directory). The file appears only once complete.",
        epilog=EXIT_CODES_HELP.lstrip("\n").replace(
            "  3  everything else was sent; some entries were skipped (one line each)\n", ""
        )
        + "\nexamples:\n  filexfer get tftp://127.0.0.1:8000/boot/pxelinux.0\n"
        "  filexfer get --blksize 8192 tftp://[::1]:8000/images/disk.img disk.img\n",
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
        add_help=False,  # its arguments, --help included, are the service Options'
        help="run the receiver in the foreground (same options as 'twistd filexfer'; "
        "see 'filexfer serve --help')",
    )
    return parser


def serve_options() -> Options:
    """C{filexfer serve}'s options: exactly those of C{twistd filexfer}, under this name."""
    from filexfer.service import Options  # here: send and get do not load the server

    options = Options()
    options.synopsis = f"Usage: {PROG} serve [options]"
    return options


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments: argparse's for send and get, the service's Options for serve.

    For serve, C{options} holds the parsed L{serve_options}, which have
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
    args.options = serve_options()
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


def _whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from C{low} to C{high} (a usage mistake otherwise)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}: {text!r}")
        return value

    return whole_number


def _positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, more than 0."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be more than 0: {text!r}")
    return value


EXIT_CODES_HELP = (
    "\nexit status:\n"
    "  0  everything was done (and, for FX/1, verified by the server)\n"
    "  1  a transfer failed\n"
    "  2  a usage mistake\n"
    "  3  everything else was sent; some entries were skipped (one line each)\n"
    "  130, 143  interrupted by SIGINT (Ctrl-C) or SIGTERM\n"
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    tftp = parser.add_argument_group("TFTP options")
    tftp.add_argument(
        "--blksize",
        type=_whole_number(MIN_BLKSIZE, MAX_BLKSIZE),
        default=None,
        help=f"TFTP block size, 8-65464 (default {DEFAULT_CLIENT_BLKSIZE})",
    )
    tftp.add_argument(
        "--windowsize",
        type=_whole_number(1, MAX_WINDOWSIZE),
        default=None,
        help=f"TFTP window size, 1-65535 (default {DEFAULT_CLIENT_WINDOWSIZE})",
    )
    tftp.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="TFTP retransmission timeout (default "
        f"{DEFAULT_CLIENT_TIMEOUT:g}; the transfer gives up after {DEFAULT_CLIENT_RETRIES} "
        "retransmissions without an answer)",
    )
    tftp.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="TFTP transfer mode: octet (bytes as they are, the default) or netascii "
        "(text: line ends converted); a URL's ;mode=netascii says the same",
    )


def _tftp_options(args: argparse.Namespace, dest: Destination) -> dict[str, Any]:
    options = {
        "blksize": args.blksize,
        "windowsize": args.windowsize,
        "timeout": args.timeout,
        "mode": _tftp_mode(args, dest),
    }
    return {key: value for key, value in options.items() if value is not None}


def _tftp_mode(args: argparse.Namespace, dest: Destination) -> str:
    """--mode, else the URL's ;mode=, else octet; a usage error when the two differ."""
    if args.mode is not None and dest.mode is not None and args.mode != dest.mode:
        raise UserError(f"--mode {args.mode} contradicts ;mode={dest.mode} in the URL", 2)
    return args.mode or dest.mode or "octet"


async def _send(
    reactor: IServiceReactor,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    interrupt: Interrupt | None = None,
) -> int:
    dest = parse_destination(args.dest)
    _check_remote_dir(dest)
    if dest.scheme != "tftp" and args.mode is not None:
        raise UserError("--mode is a TFTP option: the TCP push sends bytes as they are", 2)
    if args.digest is not None and (args.plain or dest.scheme == "tftp"):
        form = "TFTP" if dest.scheme == "tftp" else "the classic form (--plain)"
        raise UserError(f"--digest is for FX/1 receipts: {form} has no receipt to verify", 2)
    skipped: list[str] = []
    if dest.scheme == "tftp":
        plan = _tftp_plan(args, dest, skipped)
        transport = _tftp_transport(reactor, dest, args)
    else:
        if args.plain and any(os.path.isdir(source) for source in args.files):
            raise UserError("--plain sends single files only; send directories with FX/1", 2)
        plan = list(files_to_send(args.files, dest.path, skipped, classic=args.plain))
        if args.plain and any("/" in remote for _, remote in plan):
            raise UserError(
                "the classic form (--plain) has no directories: drop the /DIR of DEST, "
                "or send with FX/1",
                2,
            )
        transport = _tcp_transport(reactor, dest, args, err)
    for note in skipped:
        say(err, f"{PROG}: {note}")
    bars = ProgressBars(not args.no_progress, err)
    status = await send_all(plan, transport, bars, out, err, interrupt=interrupt)
    return STATUS_SKIPPED if status == 0 and skipped else status


def _check_remote_dir(dest: Destination) -> None:
    """The remote directory of DEST must pass the server's rules: a usage mistake if not."""
    remote_dir = dest.path.strip("/")
    if remote_dir:
        try:
            check_remote_name(remote_dir, classic=False)
        except SendError as error:
            raise UserError(f"bad remote path in DEST: {error}", 2) from None


@attrs.frozen
class Sent:
    """What one transport says it did with one file, for the success line."""

    where: str  # the remote name or URL the file went to
    size: int  # bytes
    verified_with: str = ""  # the receipt digest both ends checked ("BLAKE3"), if any


@attrs.frozen
class Transport:
    """How files go over one transport: send one, and what a success means."""

    send_one: Callable[[str, str, Progress], Awaitable[Sent]]
    """C{send_one(local, remote, progress)}: send one file, or fail with why."""
    outcome: str
    """What the success line says after the byte count (C{"stored and verified"})."""
    again: str = "run the same command again to send it from the start"
    """What to do after an interruption."""


CONNECTION_FAILURES = (ConnectError, DNSLookupError, ConnectTimeout, ReplyTimeout)
"""Failures to reach the server at all: the files after one are not tried."""


async def send_all(
    plan: Sequence[tuple[str, str]],
    transport: Transport,
    bars: ProgressBars,
    out: TextIO,
    err: TextIO,
    interrupt: Interrupt | None = None,
) -> int:
    """Send every C{(local, remote)} of C{plan}; return the exit status.

    Each file gets a progress bar, then one line: on stdout when it was
    sent, on stderr when it failed.  After a failure to reach the server
    the rest are not tried.  The status is 0 when every file was sent, 1
    when any failed; after a signal (C{interrupt}) the file being sent is
    named in one line and the status is the interrupt's (130, 143).
    """
    interrupt = interrupt or Interrupt()
    failures = 0
    for index, (local, remote) in enumerate(plan):
        try:
            if interrupt.signum is not None:
                raise _Stopped()
            with bars.for_file(escape(remote), os.path.getsize(local)) as progress:
                sending: Deferred[Sent] = Deferred.fromCoroutine(
                    _awaited(transport.send_one(local, remote, progress))
                )
                sent = await interrupt.guard(sending)
        except Exception:
            failure = Failure()
            if interrupt.signum is not None:
                say(err, _interrupted_line(interrupt, plan, index, transport))
                return interrupt.status
            say(err, f"{PROG}: {local}: {describe_failure(failure)}")
            failures += 1
            if failure.check(*CONNECTION_FAILURES):
                break
            continue
        outcome = f" {transport.outcome}" if transport.outcome else ""
        if sent.verified_with:
            outcome += f" with {sent.verified_with}"
        say(out, f"{local} -> {sent.where}: {sent.size} bytes{outcome}")
    return STATUS_FAILED if failures else 0


async def _awaited(awaitable: Awaitable[Sent]) -> Sent:
    return await awaitable


class _Stopped(Exception):
    """A signal came between two files."""


def _interrupted_line(
    interrupt: Interrupt, plan: Sequence[tuple[str, str]], index: int, transport: Transport
) -> str:
    left = len(plan) - index - 1
    more = f" ({left} more {'file' if left == 1 else 'files'} not sent)" if left else ""
    return (
        f"{PROG}: interrupted by {interrupt.name} while sending {plan[index][0]}{more}; "
        f"{transport.again}"
    )


def _tcp_transport(
    reactor: IServiceReactor, dest: Destination, args: argparse.Namespace, err: TextIO
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
            connect_timeout=args.connect_timeout,
            reply_timeout=args.reply_timeout,
            idle_timeout=args.idle_timeout,
            digest=args.digest or "blake3",
        )
        if args.plain:
            return Sent(receipt.path, receipt.size)
        return Sent(receipt.path, receipt.size, receipt.algorithm.upper().replace("SHA", "SHA-"))

    if args.plain:
        return Transport(send_one, "sent (classic form, not verified)")
    again = (
        "run the same command again to resume (files already stored are checked, not sent again)"
    )
    return Transport(send_one, "stored and verified", again)


def _retry_note(local: str, err: TextIO) -> Callable[[ServerRefused, float], None]:
    """An C{on_retry} that says on stderr that the server was busy and when we try again."""

    def note(refusal: ServerRefused, wait: float) -> None:
        say(err, f"{PROG}: {local}: server busy ({refusal.code}); trying again in {wait:.1f} s")

    return note


def _endpoint_maker(
    reactor: IServiceReactor, dest: Destination, args: argparse.Namespace
) -> Callable[[], Any]:
    """A factory of client endpoints for C{dest}: TCP, or TLS with --tls."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    if args.cacert and not args.tls:
        raise UserError("--cacert goes with --tls", 2)
    timeout = max(1, round(args.connect_timeout))  # send_file enforces the exact one
    if not args.tls:
        return lambda: HostnameEndpoint(reactor, dest.host, dest.port, timeout=timeout)
    from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust

    trust: Any = platformTrust()
    if args.cacert:
        try:
            with open(args.cacert, "rb") as handle:
                trust = Certificate.loadPEM(handle.read())
        except OSError as exc:
            raise UserError(f"cannot load --cacert {args.cacert}: {exc.strerror}") from None
        except Exception:  # pyOpenSSL's crypto.Error, ValueError: not a PEM certificate
            raise UserError(
                f"cannot load --cacert {args.cacert}: not a PEM certificate", 2
            ) from None
    options = optionsForClientTLS(dest.host, trustRoot=trust)
    return lambda: wrapClientTLS(
        options, HostnameEndpoint(reactor, dest.host, dest.port, timeout=timeout)
    )


def _tftp_plan(
    args: argparse.Namespace, dest: Destination, skipped: list[str] | None = None
) -> list[tuple[str, str]]:
    """(local file, remote name) for each FILE sent to a tftp:// DEST.

    What is not a regular file is skipped by the rule of L{files_to_send}.
    """
    if args.plain or any(os.path.isdir(source) for source in args.files):
        raise UserError("TFTP sends single files; --plain and directories are for TCP", 2)
    if args.tls or args.cacert:
        raise UserError("TFTP has no TLS: --tls and --cacert are for TCP destinations", 2)
    if len(args.files) > 1 and dest.path and not dest.path.endswith("/"):
        raise UserError("several files need a directory: end the tftp:// path with /", 2)
    plan = []
    for local, _ in files_to_send(args.files, "", skipped):
        remote = dest.path  # checked by _check_remote_dir; the file names by files_to_send
        if not remote or remote.endswith("/"):
            remote += os.path.basename(local)
        plan.append((local, remote))
    return plan


def _tftp_transport(
    reactor: IServiceReactor, dest: Destination, args: argparse.Namespace
) -> Transport:
    """TFTP uploads (WRQ) to C{dest}, with the TFTP options given."""
    from filexfer import tftp

    options = _tftp_options(args, dest)

    async def send_one(local: str, remote: str, progress: Progress) -> Sent:
        size = await tftp.upload(
            reactor,
            dest.host,
            dest.port,
            local,
            remote,
            progress=progress,
            **options,
        )
        return Sent(format_tftp_url(dest.host, dest.port, remote, options["mode"]), size)

    return Transport(send_one, "")


async def _get(
    reactor: IServiceReactor,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    interrupt: Interrupt | None = None,
) -> int:
    from filexfer import tftp

    interrupt = interrupt or Interrupt()
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
    _check_can_save(local)
    options = _tftp_options(args, dest)
    url = format_tftp_url(dest.host, dest.port, dest.path, options["mode"])
    bars = ProgressBars(not args.no_progress, err)
    try:
        with bars.for_file(escape(dest.path), None) as progress:
            downloading = tftp.download(
                reactor,
                dest.host,
                dest.port,
                dest.path,
                local,
                progress=progress,
                **options,
            )
            size = await interrupt.guard(downloading)
    except Exception:
        failure = Failure()
        if interrupt.signum is not None:
            say(
                err,
                f"{PROG}: interrupted by {interrupt.name} while downloading {url}; "
                f"{local} was not written (TFTP cannot resume: run the command again)",
            )
            return interrupt.status
        if isinstance(failure.value, OSError) and not isinstance(
            failure.value, DNSLookupError | ConnectError | ConnectionError | TimeoutError
        ):  # the local file (the network's errors are OSErrors too)
            say(err, f"{PROG}: cannot save {local}: {failure.value.strerror or failure.value}")
        else:
            say(err, f"{PROG}: {url}: {describe_failure(failure)}")
        return STATUS_FAILED
    _give_normal_mode(local)
    say(out, f"{url} -> {local}: {size} bytes")
    return 0


def _check_can_save(local: str) -> None:
    """A directory to save C{local} in must exist and be writable: one line if not."""
    folder = os.path.dirname(local) or "."
    if not os.path.isdir(folder):
        raise UserError(f"cannot save {local}: there is no directory {folder} (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot save {local}: the directory {folder} is not writable")


def _give_normal_mode(path: str) -> None:
    """Give a downloaded file the mode new files get (0666 less the umask), as curl and tftp do.

    The download is written to a private temporary file (0600) first.
    """
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass  # it is there with the temporary file's mode


def _serve(reactor: IServiceReactor, options: Options, err: TextIO) -> Deferred[int]:
    from twisted.internet.error import CannotListenError
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from filexfer._ports import StartupError
    from filexfer.service import make_service

    # --event-log - takes standard output for its JSON lines: the log goes to stderr then
    logs = sys.stderr if options["event-log"] == "-" else sys.stdout
    globalLogBeginner.beginLoggingTo([textFileLogObserver(logs)], redirectStandardIO=False)
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
    service.take_over_process()  # SIGTERM drains and exits 0; systemd hears READY=1
    return Deferred()  # runs until interrupted


def _run(
    reactor: IServiceReactor, args: argparse.Namespace, interrupt: Interrupt | None = None
) -> Deferred[int]:
    out, err = sys.stdout, sys.stderr

    async def guarded() -> int:
        try:
            if args.command == "send":
                return await _send(reactor, args, out, err, interrupt)
            if args.command == "get":
                return await _get(reactor, args, out, err, interrupt)
            return await _serve(reactor, args.options, err)
        except UserError as error:
            say(err, f"{PROG}: {error}")
            return error.status

    return ensureDeferred(guarded())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the C{filexfer} console script."""
    from twisted.internet import task

    for signum in (signal.SIGINT, signal.SIGTERM):  # until the reactor runs: one line
        signal.signal(signum, interrupted_while_starting)
    try:
        args = parse_command_line(sys.argv[1:] if argv is None else argv)
    except UserError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        raise SystemExit(error.status) from None
    if args.command != "serve" and not _needs_tls(args):
        keep_tls_libraries_out()  # serve's Options did so when no endpoint needs TLS

    def run(reactor: IServiceReactor) -> Deferred[None]:
        # the reactor installs its handlers when it starts (SIGINT only over the default)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        interrupt = None
        if args.command != "serve":  # serve keeps the reactor's own clean shutdown
            interrupt = Interrupt()
            reactor.callWhenRunning(interrupt.install, reactor)
        return _run(reactor, args, interrupt).addCallback(_exit)

    task.react(run)


def _needs_tls(args: argparse.Namespace) -> bool:
    """Will send or get use TLS?  Only C{send --tls} does."""
    return args.command == "send" and bool(args.tls)


def _exit(status: int) -> None:
    if status:
        raise SystemExit(status)
