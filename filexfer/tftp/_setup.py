"""The fleet options of C{twistd filexfer} / C{filexfer serve}: checked at start-up, then built.

L{check_fleet_options} reads and checks every file and value when the
options are parsed (a remap rule file with an error is reported with its
line number before anything listens, never at the first request), and
answers C{--tftp-remap-test}.  L{fleet_settings} turns them into the
keyword arguments of L{filexfer.tftp.server.TFTPServerProtocol}.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.python import usage
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from filexfer._errors import TransferError
from filexfer._names import from_tftp_root, validate_path
from filexfer.storage import IStorage
from filexfer.tftp._neighbours import MODES, NeighbourTable
from filexfer.tftp._portrange import PortRange
from filexfer.tftp._quirks import QuirksPolicy, QuirkSyntaxError
from filexfer.tftp._remap import RemapGaveUp, RemapRefused, RemapRules, RemapSyntaxError, load_rules
from filexfer.tftp.sources import ClientRootSource, ITFTPSource, RootSource, load_factory


def check_fleet_options(options: Any) -> None:
    """Parse and check the TFTP fleet options in place (C{options} is the service's Options).

    Adds C{tftp-port-range-parsed}, C{tftp-remap-rules}, C{tftp-quirks-policy}
    and C{tftp-source-factories}.

    @raise usage.UsageError: one line naming the option and the mistake.
    @raise SystemExit: after printing the answer to C{--tftp-remap-test}.
    """
    options["tftp-port-range-parsed"] = None
    if options["tftp-port-range"] is not None:
        try:
            options["tftp-port-range-parsed"] = PortRange.parse(options["tftp-port-range"])
        except ValueError as exc:
            raise usage.UsageError(f"--tftp-port-range: {exc}") from None
        if options["tftp-single-port"]:
            raise usage.UsageError(
                "--tftp-port-range: with --tftp-single-port every transfer uses the TFTP port"
            )
    options["tftp-remap-rules"] = None
    if options["tftp-remap"] is not None:
        path = options["tftp-remap"]
        try:
            options["tftp-remap-rules"] = load_rules(path)
        except RemapSyntaxError as exc:
            raise usage.UsageError(f"--tftp-remap {path}: {exc}") from None
        except OSError as exc:
            raise usage.UsageError(f"--tftp-remap {path}: cannot read it: {exc.strerror}") from None
    if options["tftp-remap-test"] is not None:
        rules = options["tftp-remap-rules"]
        if rules is None:
            raise usage.UsageError("--tftp-remap-test: give the rules with --tftp-remap FILE")
        text, status = remap_test(rules, options["tftp-remap-test"], options["client"])
        print(text)
        raise SystemExit(status)
    lines = list(options["tftp-quirks"])
    if options["tftp-quirks-file"] is not None:
        try:
            with open(options["tftp-quirks-file"], encoding="utf-8") as handle:
                file_lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise usage.UsageError(f"--tftp-quirks-file: cannot read it: {exc}") from None
    else:
        file_lines = []
    try:
        QuirksPolicy.parse(file_lines)
        for rule in lines:
            QuirksPolicy.parse([rule])
    except QuirkSyntaxError as exc:
        where = "--tftp-quirks-file" if file_lines else "--tftp-quirks"
        raise usage.UsageError(f"{where}: {exc}") from None
    options["tftp-quirks-policy"] = QuirksPolicy.parse(file_lines + lines)
    mode = options["tftp-per-client-root"]
    if mode is not None and mode not in MODES:
        raise usage.UsageError(f"--tftp-per-client-root: ip or mac, not {mode!r}")
    factories = []
    for spec in options["tftp-source"]:
        try:
            factories.append(load_factory(spec))
        except ValueError as exc:
            raise usage.UsageError(f"--tftp-source {spec}: {exc}") from None
    options["tftp-source-factories"] = factories
    url = options["tftp-http"]
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise usage.UsageError(f"--tftp-http: an http:// or https:// URL, not {url!r}")


def remap_test(rules: RemapRules, name: str, client: str) -> tuple[str, int]:
    """What C{--tftp-remap-test NAME} prints, and its exit status (0 mapped, 1 refused).

    The answer is the path the server reads: the rules' result read from the
    TFTP root (leading C{/}s dropped) after the name rules, which refuse a
    result outside the root as the server does.
    """
    try:
        result = rules.apply(name, kind="read", client=client)
    except ValueError:
        return f"--client {client!r}: not an IP address", 2
    except RemapRefused as exc:
        return f"{name!r} from {client}: refused by line {exc.line}: {exc.message}", 1
    except RemapGaveUp as exc:
        return f"{name!r} from {client}: refused: {exc}", 1
    try:
        path = validate_path(from_tftp_root(result.name))
    except TransferError as exc:
        return f"{name!r} from {client} -> {result.name!r}: refused: {exc.reason}", 1
    lines = ", ".join(str(line) for line in result.lines) or "none"
    return f"{name!r} from {client} -> {path!r} (rewritten by lines: {lines})", 0


def fleet_settings(options: Any, reactor: Any, storage: IStorage) -> dict[str, Any]:
    """The fleet keyword arguments of C{TFTPServerProtocol} for checked C{options}.

    @raise usage.UsageError: a C{--tftp-source} factory that fails or does
        not return an L{ITFTPSource}.
    """
    sources: list[Any] = []
    for (factory, argument), spec in zip(
        options["tftp-source-factories"], options["tftp-source"], strict=True
    ):
        try:
            source = factory(reactor, argument)
            verifyObject(ITFTPSource, source)
        except (Invalid, Exception) as exc:
            raise usage.UsageError(f"--tftp-source {spec}: {exc}") from None
        sources.append(source)
    mode = options["tftp-per-client-root"]
    if mode is not None:
        sources.append(ClientRootSource(storage, mode, NeighbourTable(reactor)))
    else:
        sources.append(RootSource(storage))
    if options["tftp-http"] is not None:
        from filexfer.tftp.http import HTTPSource

        sources.append(
            HTTPSource(
                reactor,
                options["tftp-http"],
                storage_root=options["root"],
                max_bytes=options["tftp-http-cache-size"],
            )
        )
    return {
        "sources": sources,
        "source_timeout": options["tftp-source-timeout"],
        "remap": options["tftp-remap-rules"],
        "quirks": options["tftp-quirks-policy"],
        "ports": options["tftp-port-range-parsed"],
        "single_port": bool(options["tftp-single-port"]),
    }
