"""systemd integration: sockets it passes (socket activation) and the notification socket.

Socket activation (U{sd_listen_fds(3)
<https://www.freedesktop.org/software/systemd/man/sd_listen_fds.html>}):
systemd binds the ports, starts the service with the sockets open from
descriptor 3 on, and says so in C{LISTEN_FDS}, C{LISTEN_PID} and
C{LISTEN_FDNAMES} (the C{FileDescriptorName=} of each socket).  TCP goes
through Twisted's own C{--listen systemd:domain=INET6:index=0} endpoint; the
TFTP datagram socket is named by C{--tftp-listen systemd:index=N} (or
C{name=NAME}) and adopted by L{InheritedPort}.

Notifications (U{sd_notify(3)
<https://www.freedesktop.org/software/systemd/man/sd_notify.html>}): one
datagram of C{KEY=VALUE} lines to the C{AF_UNIX} socket named by
C{$NOTIFY_SOCKET} (a leading C{@} is Linux's abstract namespace).  It is
written here rather than taken from a package: sdnotify has not been
released since 2017 and swallows every exception, and systemd-watchdog has
no C{STOPPING=1} but through a private method; the protocol is one
C{sendto}.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorSocket
from twisted.python.systemd import ListenFDs

from filexfer._log import log
from filexfer._ports import ListeningPort, StartupError

_INHERITED = re.compile(r"systemd:(?:index=(?P<index>[0-9]{1,4})|name=(?P<name>[^:\s]{1,255}))")


def parse_inherited(description: str) -> int | str:
    """C{"systemd:index=1"} -> C{1}; C{"systemd:name=tftp"} -> C{"tftp"}.

    @raise ValueError: any other text; the message says the two forms.
    """
    match = _INHERITED.fullmatch(description.strip())
    if match is None:
        raise ValueError(
            f"not a socket passed by systemd: {description!r} "
            "(use systemd:index=N or systemd:name=NAME, NAME being FileDescriptorName=)"
        )
    return int(match["index"]) if match["index"] is not None else match["name"]


def inherited_sockets() -> ListenFDs:
    """The descriptors systemd passed to this process (none when it passed none).

    Twisted's C{systemd:} endpoint parser reads C{LISTEN_FDS} when
    C{twisted.internet.endpoints} is imported, and removes it from the
    environment so that no one adopts a socket twice: its record is the one
    left, and is used here for the TFTP socket too.
    """
    from twisted.internet import endpoints

    parser = getattr(endpoints, "_SystemdParser", None)
    known = getattr(parser, "_sddaemon", None)
    return known if isinstance(known, ListenFDs) else ListenFDs.fromEnvironment()


def inherited_descriptor(which: int | str, passed: ListenFDs) -> int:
    """The descriptor number of socket C{which} (an index or a name) among C{passed}.

    @raise LookupError: systemd passed no such socket; the message says what it passed.
    """
    descriptors = passed.inheritedDescriptors()
    if isinstance(which, int):
        if which < len(descriptors):
            return descriptors[which]
    else:
        named = passed.inheritedNamedDescriptors()
        if which in named:
            return named[which]
    if not descriptors:
        raise LookupError(
            "systemd passed no sockets (LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES are not "
            "all set for this process)"
        )
    names = ", ".join(
        f"{index}={name}" for index, name in enumerate(passed.inheritedNamedDescriptors())
    )
    wanted = f"index {which}" if isinstance(which, int) else f"name {which!r}"
    raise LookupError(
        f"systemd passed no socket with {wanted}: it passed {len(descriptors)}"
        + (f" ({names})" if names else "")
    )


class InheritedPort(ListeningPort):
    """A port whose socket systemd opened and passed: adopted, then run like L{ListeningPort}.

    @param which: the socket's index among those passed, or its name.
    @param option: how the command line named it, for messages
        (C{--tftp-listen systemd:index=1}).
    """

    def __init__(
        self,
        reactor: IReactorSocket,
        kind: socket.SocketKind,
        which: int | str,
        handler: Any,
        *,
        option: str,
        passed: ListenFDs | None = None,
    ) -> None:
        super().__init__(reactor, kind, 0, handler, option=option)
        self.which = which
        self.passed = passed
        self.origin = f", passed by systemd ({option})"

    def bind(self) -> None:
        """Take the passed socket now (idempotent).

        @raise StartupError: there is no such socket, or it is not of this
            port's kind (a stream socket given for TFTP).
        """
        if self._socket is not None or self._listening is not None:
            return
        passed = self.passed if self.passed is not None else inherited_sockets()
        try:
            descriptor = inherited_descriptor(self.which, passed)
        except LookupError as error:
            raise StartupError(f"{self.option}: {error}") from None
        sock = socket.socket(fileno=descriptor)
        if sock.type != self.kind:
            sock.detach()  # not ours to close
            wanted = "datagram (ListenDatagram=)" if self.kind == socket.SOCK_DGRAM else "stream"
            raise StartupError(f"{self.option}: the socket systemd passed is not a {wanted} socket")
        sock.setblocking(False)
        if sock.family == socket.AF_INET6:
            self.dual_stack = not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        self._socket = sock


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send C{state} (e.g. C{"READY=1"}) to the service manager, if there is one.

    @param state: newline-separated C{KEY=VALUE} assignments (sd_notify(3)).
    @return: True when sent; False when C{$NOTIFY_SOCKET} is not set (not
        run by systemd as C{Type=notify}) or the socket refuses it (logged:
        a notification never stops the service).
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as error:
        log.warn(
            "cannot notify the service manager ({state}): {error}",
            state=state.splitlines()[0],
            error=error.strerror or error,
        )
        return False
    return True
