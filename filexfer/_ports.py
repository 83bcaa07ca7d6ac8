"""The ports C{--port} opens: bound in advance, dual-stack, named in the log.

C{--port N} (and C{--workers}) bind C{[::]:N} with C{IPV6_V6ONLY} off, so
that one socket serves IPv4 (as C{::ffff:a.b.c.d}) and IPv6 clients; where
IPv6 is unavailable they fall back to C{0.0.0.0:N} and say so in the log.
Binding happens in L{ListeningPort.bind}, which the twistd plugin calls
while building the service (before twistd daemonises), so that a busy port
is reported as one line on the terminal in every form of start-up.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorSocket

from filexfer._log import format_address, log


class StartupError(Exception):
    """The service cannot start: one line for a person, naming the option at fault."""


_NO_IPV6 = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT, errno.EINVAL}


def _bind(
    family: socket.AddressFamily,
    kind: socket.SocketKind,
    interface: str,
    port: int,
    backlog: int,
    reuse_port: bool,
    dual_stack: bool,
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((interface, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_socket(
    kind: socket.SocketKind,
    port: int,
    interface: str = "",
    backlog: int = 50,
    reuse_port: bool = False,
) -> tuple[socket.socket, bool]:
    """A bound (for TCP, listening) non-blocking socket, and whether it serves IPv4 and IPv6.

    An empty C{interface} means every address: C{::} dual-stack, or
    C{0.0.0.0} where the system has no IPv6 (a warning says so).

    @raise OSError: the port cannot be bound (e.g. C{EADDRINUSE}).
    """
    if interface:
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        return _bind(family, kind, interface, port, backlog, reuse_port, interface == "::"), (
            interface == "::"
        )
    if socket.has_ipv6:
        try:
            return _bind(socket.AF_INET6, kind, "::", port, backlog, reuse_port, True), True
        except OSError as error:
            if error.errno not in _NO_IPV6:
                raise
            reason = error.strerror
    else:
        reason = "Python was built without IPv6"
    log.warn(
        "IPv6 is unavailable ({reason}): port {port} serves IPv4 only", reason=reason, port=port
    )
    return _bind(socket.AF_INET, kind, "", port, backlog, reuse_port, False), False


class ListeningPort(Service):
    """A TCP or UDP port bound by L{bind} (at the latest when started), then run by the reactor.

    @param option: how the command line named this port, for error messages
        (e.g. C{--port 8000}).
    @param reuse_port: bind with C{SO_REUSEPORT}, shared with other processes.
    """

    def __init__(
        self,
        reactor: IReactorSocket,
        kind: socket.SocketKind,
        port: int,
        handler: Any,
        *,
        option: str,
        interface: str = "",
        backlog: int = 50,
        reuse_port: bool = False,
    ) -> None:
        self.reactor = reactor
        self.kind = kind
        self.port = port
        self.handler = handler
        self.option = option
        self.interface = interface
        self.backlog = backlog
        self.reuse_port = reuse_port
        self.label = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        self.dual_stack = False
        self.origin = ""
        """Said after the address in the log (C{, passed by systemd})."""
        self._socket: socket.socket | None = None
        self._listening: IListeningPort | None = None

    def bind(self) -> None:
        """Bind the port now (idempotent).

        @raise StartupError: it cannot be bound; the message names the option.
        """
        if self._socket is not None or self._listening is not None:
            return
        try:
            self._socket, self.dual_stack = bind_socket(
                self.kind, self.port, self.interface, self.backlog, self.reuse_port
            )
        except OSError as error:
            what = "TFTP (UDP)" if self.kind == socket.SOCK_DGRAM else "TCP"
            where = (
                format_address(self.interface, self.port) if self.interface else f"port {self.port}"
            )
            raise StartupError(
                f"{self.option}: cannot listen for {what} on {where}: {error.strerror or error}"
            ) from None

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self.bind()
        assert self._socket is not None
        sock, self._socket = self._socket, None
        with sock:  # the reactor keeps its own descriptor
            if self.kind == socket.SOCK_STREAM:
                self._listening = self.reactor.adoptStreamPort(
                    sock.fileno(), sock.family, self.handler
                )
            else:
                self._listening = self.reactor.adoptDatagramPort(
                    sock.fileno(), sock.family, self.handler, 65536
                )
            where = format_address(sock.getsockname()[0], sock.getsockname()[1])
        families = " (IPv4 and IPv6)" if self.dual_stack else ""
        shared = f", shared (SO_REUSEPORT) by process {os.getpid()}" if self.reuse_port else ""
        what = "TFTP on UDP" if self.kind == socket.SOCK_DGRAM else "TCP"
        log.info(
            "listening for {what} on {where}{families}{shared}{origin}",
            what=what,
            where=where,
            families=families,
            shared=shared,
            origin=self.origin,
        )
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        listening, self._listening = self._listening, None
        return maybeDeferred(listening.stopListening) if listening is not None else succeed(None)
