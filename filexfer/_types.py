"""What filexfer needs of Twisted, named: the transport the TCP push uses.

Python's typing has no intersections, so each need is a zope interface
that extends the Twisted interfaces it combines (as treq's
C{_ITreqReactor} does).  mypy-zope treats it as a subtype of each of them,
so a value typed with it goes to any Twisted API that wants one of them
without a cast; a C{typing.Protocol} would not (mypy-zope does not count a
structural type as providing a zope interface).  Twisted's objects do not
declare these combinations: the value is cast once where it comes in.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport


class IStreamTransport(ITCPTransport, IPushProducer, IConsumer):
    """A connection's transport as the TCP push uses it.

    It writes, half-closes, aborts and names its peer (L{ITCPTransport}),
    pauses and resumes reading (L{IPushProducer}, handed to a background
    writer as its producer), and takes a pull producer for the file being
    sent (L{IConsumer}).  TCP and TLS transports (and C{StringTransport})
    provide all three.
    """
