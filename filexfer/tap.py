"""What twistd loads for C{twistd filexfer}: C{Options} and C{makeService}.

Start-up mistakes (a bad option, a --root that cannot be used, a busy
port) are one line on stderr and exit status 2 (options) or 1 (the rest),
without twistd's usage text or a traceback.  The ports are bound here,
before twistd daemonises, so that the daemonised form reports them too.
"""

from __future__ import annotations

import sys
from typing import cast

from twisted.application.service import IService
from twisted.python import usage

from filexfer import service
from filexfer._ports import StartupError
from filexfer._types import IServiceReactor

__all__ = ["Options", "makeService"]

PROG = "twistd filexfer"


class Options(service.Options):
    """The service's options; a mistake in them is one line on stderr, then exit 2."""

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            _fail(f"{error} (see '{PROG} --help')", 2)


def makeService(options: service.Options) -> IService:
    """Build the service on the reactor twistd installed, its ports bound."""
    from twisted.internet import reactor

    try:
        top = service.make_service(options, cast(IServiceReactor, reactor))
        service.bind_ports(top)
    except StartupError as error:
        _fail(str(error), 1)
    top.take_over_process()  # SIGTERM drains and exits 0; systemd hears READY=1
    return top


def _fail(message: str, status: int) -> None:
    print(f"{PROG}: {message}", file=sys.__stderr__ or sys.stderr, flush=True)
    raise SystemExit(status)
