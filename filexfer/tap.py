"""What twistd loads for C{twistd filexfer}: C{Options} and C{makeService}."""

from __future__ import annotations

from twisted.application.service import IService

from filexfer.service import Options, make_service

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """Build the service on the reactor twistd installed."""
    from twisted.internet import reactor

    return make_service(options, reactor)
