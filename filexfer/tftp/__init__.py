"""TFTP over UDP: a server storing through L{filexfer.storage}, and a client.

RFC 1350 with option negotiation (RFC 2347), C{blksize} (RFC 2348),
C{timeout} and C{tsize} (RFC 2349) and C{windowsize} (RFC 7440); tftp://
URLs (RFC 3617) are read and written by L{parse_tftp_url} and
L{format_tftp_url}.  Reads come from a chain of read sources
(L{ITFTPSource}), each answering with the storage's
L{filexfer.storage.IReadSource}; the HTTP source is
L{filexfer.tftp.http.HTTPSource}.
"""

from typing import TYPE_CHECKING

from filexfer._lazy import lazy_exports

if TYPE_CHECKING:
    from filexfer.tftp._url import TFTPURL, BadURL, format_tftp_url, parse_tftp_url
    from filexfer.tftp.client import TFTPError, TFTPTimeout, download, upload
    from filexfer.tftp.server import TFTPServerProtocol
    from filexfer.tftp.sources import (
        NOT_MINE,
        ClientRootSource,
        ITFTPSource,
        RootSource,
        TemplateSource,
    )

_EXPORTS = {
    "TFTPURL": "filexfer.tftp._url",
    "BadURL": "filexfer.tftp._url",
    "format_tftp_url": "filexfer.tftp._url",
    "parse_tftp_url": "filexfer.tftp._url",
    "TFTPError": "filexfer.tftp.client",
    "TFTPTimeout": "filexfer.tftp.client",
    "download": "filexfer.tftp.client",
    "upload": "filexfer.tftp.client",
    "TFTPServerProtocol": "filexfer.tftp.server",
    "NOT_MINE": "filexfer.tftp.sources",
    "ClientRootSource": "filexfer.tftp.sources",
    "ITFTPSource": "filexfer.tftp.sources",
    "RootSource": "filexfer.tftp.sources",
    "TemplateSource": "filexfer.tftp.sources",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "NOT_MINE",
    "TFTPURL",
    "BadURL",
    "ClientRootSource",
    "ITFTPSource",
    "RootSource",
    "TFTPError",
    "TFTPServerProtocol",
    "TFTPTimeout",
    "TemplateSource",
    "download",
    "format_tftp_url",
    "parse_tftp_url",
    "upload",
]
