"""What filexfer needs of Twisted, named: the transport the TCP push uses, and reactors.

Python's typing has no intersections, so each need is a zope interface
that extends the Twisted interfaces it combines (as treq's
C{_ITreqReactor} does).  mypy-zope treats it as a subtype of each of them,
so a value typed with it goes to any Twisted API that wants one of them
without a cast; a C{typing.Protocol} would not (mypy-zope does not count a
structural type as providing a zope interface).  Twisted's objects do not
declare these combinations: the value is cast once where it comes in.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReactorCore,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUDP,
    ITCPTransport,
)


class IStreamTransport(ITCPTransport, IPushProducer, IConsumer):
    """A connection's transport as the TCP push uses it.

    It writes, half-closes, aborts and names its peer (L{ITCPTransport}),
    pauses and resumes reading (L{IPushProducer}, handed to a background
    writer as its producer), and takes a pull producer for the file being
    sent (L{IConsumer}).  TCP and TLS transports (and C{StringTransport})
    provide all three.
    """


class ISendingReactor(IReactorTime, IReactorThreads):
    """A clock with a thread pool: the fast path of L{filexfer.tcp.sender.send_file}.

    With it a file goes out with C{sendfile} in one thread and is hashed in
    another, and a resumed prefix is hashed off the reactor thread.
    """


class ITFTPReactor(IReactorTime, IReactorUDP):
    """What a TFTP transfer needs: a UDP port of its own and retransmission timers."""


class IServiceReactor(
    IReactorCore,
    ISendingReactor,
    ITFTPReactor,
    IReactorTCP,
    IReactorSocket,
    IReactorProcess,
):
    """A full reactor: what L{filexfer.service.make_service} and the command line use.

    Ports are adopted from sockets bound beforehand (L{IReactorSocket}),
    workers are processes (L{IReactorProcess}), disk work runs in the
    thread pool, clients connect over TCP and resolve names (L{IReactorCore}),
    and TFTP takes UDP ports.  Twisted's reactors provide each of these
    without declaring the combination: cast the global reactor once, where it
    is imported.
    """
