"""TFTP over UDP: a server storing through L{filexfer.storage}, and a client.

RFC 1350 with option negotiation (RFC 2347), C{blksize} (RFC 2348),
C{timeout} and C{tsize} (RFC 2349) and C{windowsize} (RFC 7440).
Reads come from a chain of read sources (L{ITFTPSource}); the HTTP source
is L{filexfer.tftp.http.HTTPSource}.
"""

from filexfer.tftp.client import TFTPError, TFTPTimeout, download, upload
from filexfer.tftp.server import TFTPServerProtocol
from filexfer.tftp.sources import (
    NOT_MINE,
    ClientRootSource,
    ITFTPSource,
    Readable,
    RootSource,
    TemplateSource,
)

__all__ = [
    "NOT_MINE",
    "ClientRootSource",
    "ITFTPSource",
    "Readable",
    "RootSource",
    "TFTPError",
    "TFTPServerProtocol",
    "TFTPTimeout",
    "TemplateSource",
    "download",
    "upload",
]
