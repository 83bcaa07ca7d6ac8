"""Where a TFTP read (RRQ) gets its bytes: a chain of read sources.

Fleets want answers computed per client (fbtftp's handlers, the
asynchronous backends of python-tx-tftp that MAAS uses): a boot script
that names the machine, a configuration per phone, a file fetched from an
HTTP server.  A read source is asked, in turn, for the requested path; it
answers with an L{IReadSource} (what L{IStorage.open_read} gives: a size and
reads in order; L{FileSource} wraps a file object) or L{NOT_MINE}, and then
the next source is asked.  The storage is one source (L{RootSource}, the
first by default: a local root or an S3 bucket alike), the root with a
directory per client another
(L{ClientRootSource}); L{filexfer.tftp.http.HTTPSource} streams missing
files from a web server.  Name your own on the command line with
C{--tftp-source PYTHON.PATH:FACTORY}: C{FACTORY(reactor, argument)}
returns an L{ITFTPSource} (C{argument} is the text after a C{=}, or None).

A source that raises L{filexfer.TransferError} refuses the request (the
client gets the matching ERROR, the chain stops); any other failure, or no
answer within the server's source timeout, gives the client ERROR 0 and a
log line naming the source.  Either way, every other transfer goes on.
"""

from __future__ import annotations

import importlib
import io
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from filexfer._errors import TransferError
from filexfer.storage import FileSource, IReadSource, IStorage
from filexfer.tftp._neighbours import (
    Mode,
    NeighbourTable,
    candidates,
    client_key,
    is_client_directory,
)

Address = tuple[str, int]


NOT_MINE = None
"""A source's answer for a path it does not serve: ask the next one."""


class ITFTPSource(Interface):
    """A source of files for TFTP reads (in the style of L{filexfer.storage.IStorage})."""

    def open(path: str, client: Address, server: Address) -> Deferred[IReadSource | None]:
        """The file C{path} for C{client} (host, port) that asked C{server} (host, port).

        C{path} has passed the remap rules and the name rules of
        PROTOCOL.md section 1.3 (relative to the root, no C{..}, no control
        characters).

        @return: a Deferred firing with an L{IReadSource} (the server closes
            it when the transfer ends), or L{NOT_MINE}.  It may fail with
            L{filexfer.TransferError} to refuse the request.
        """


@implementer(ITFTPSource)
class RootSource:
    """The storage's files (L{IStorage.open_read}: a local root, S3); a missing one is not mine."""

    def __init__(self, storage: IStorage) -> None:
        self.storage = storage

    def __repr__(self) -> str:
        return "the root"

    def open(self, path: str, client: Address, server: Address) -> Deferred[IReadSource | None]:
        """C{storage.open_read(path)}; 404 is L{NOT_MINE}, other refusals propagate."""
        opening: Deferred[IReadSource] = maybeDeferred(self.storage.open_read, path)
        return opening.addErrback(_missing_is_not_mine)


def _missing_is_not_mine(failure: Failure) -> None:
    """A 404 from the storage is L{NOT_MINE}; anything else still fails."""
    exc = failure.value
    if isinstance(exc, TransferError) and exc.code == 404:
        return NOT_MINE
    failure.raiseException()


@implementer(ITFTPSource)
class ClientRootSource:
    """C{ROOT/KEY/path} when it exists, else C{ROOT/path} (dnsmasq C{--tftp-unique-root}).

    C{KEY} is the client's address (mode C{ip}) or its MAC from the kernel's
    neighbour table (mode C{mac}; see L{filexfer.tftp._neighbours}).
    """

    def __init__(self, storage: IStorage, mode: Mode, neighbours: NeighbourTable) -> None:
        self.root = RootSource(storage)
        self.mode = mode
        self.neighbours = neighbours

    def __repr__(self) -> str:
        return f"the per-client root ({self.mode})"

    def open(self, path: str, client: Address, server: Address) -> Deferred[IReadSource | None]:
        """Try the client's directory, then the shared root.

        @raise TransferError: 403 for a path into a per-client directory
            (L{is_client_directory}): each is served only as its own client's.
        """
        first = path.lstrip("/").split("/", 1)[0]
        if is_client_directory(first):
            return fail(
                TransferError(403, "per-client directories are served only to their own client")
            )
        if self.mode == "mac":
            looking = self.neighbours.mac_for(client[0])
        else:
            looking = succeed(None)
        return looking.addCallback(
            lambda mac: self._first(
                candidates(path, client_key(self.mode, client[0], mac)), client, server
            )
        )

    def _first(
        self, paths: list[str], client: Address, server: Address
    ) -> Deferred[IReadSource | None]:
        trying = self.root.open(paths[0], client, server)
        if len(paths) == 1:
            return trying
        return trying.addCallback(
            lambda found: found if found is not None else self._first(paths[1:], client, server)
        )


def load_factory(spec: str) -> Any:
    """C{PYTHON.PATH:FACTORY[=ARGUMENT]} as (the factory, the argument or None).

    @raise ValueError: a malformed spec, a module that does not import, or
        no such name in it; the message says which.
    """
    target, equals, argument = spec.partition("=")
    module_name, colon, name = target.partition(":")
    if not colon or not module_name or not name:
        raise ValueError(f"expected PYTHON.PATH:FACTORY, not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{module_name!r} has no callable {name!r}")
    return factory, (argument if equals else None)


@implementer(ITFTPSource)
class TemplateSource:
    """One name served from a text template filled in for each client (e.g. an iPXE script).

    In the template, C{{client}} is the client's address, C{{client_port}}
    its port, C{{server}} and C{{server_port}} the address and port the
    request arrived on, C{{path}} the requested name; C{{{{}}}} and C{}}}}}
    are braces (Python's C{str.format}).  Other names are not mine.
    """

    def __init__(self, name: str, template: str) -> None:
        self.name = name.lstrip("/")
        self.template = template
        self.render(("192.0.2.1", 1), ("192.0.2.2", 69))  # a bad template fails at start-up

    def __repr__(self) -> str:
        return f"the template for {self.name!r}"

    def render(self, client: Address, server: Address) -> bytes:
        """The file for C{client}, asking C{server}."""
        from filexfer._guard import ipv4_form

        return self.template.format(
            client=ipv4_form(client[0]),
            client_port=client[1],
            server=ipv4_form(server[0]),
            server_port=server[1],
            path=self.name,
        ).encode("utf-8")

    def open(self, path: str, client: Address, server: Address) -> Deferred[IReadSource | None]:
        """The rendered template for C{self.name}; L{NOT_MINE} for any other path."""
        if path.lstrip("/") != self.name:
            return succeed(NOT_MINE)
        data = self.render(client, server)
        return succeed(FileSource(io.BytesIO(data), len(data)))


def template_source(reactor: Any, argument: str | None) -> TemplateSource:
    """C{--tftp-source filexfer.tftp.sources:template_source=NAME:TEMPLATE_FILE}.

    @raise ValueError: no argument, or a template that cannot be read or filled.
    """
    name, colon, path = (argument or "").partition(":")
    if not colon or not name or not path:
        raise ValueError("give NAME:TEMPLATE_FILE after '=' (e.g. boot.ipxe:/etc/boot.ipxe.in)")
    try:
        with open(path, encoding="utf-8") as handle:
            template = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the template {path!r}: {exc}") from None
    try:
        return TemplateSource(name, template)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"the template {path!r} cannot be filled: {exc!r}") from None
