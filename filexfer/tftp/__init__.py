"""TFTP over UDP: a server storing through L{filexfer.storage}, and a client.

RFC 1350 with option negotiation (RFC 2347), C{blksize} (RFC 2348),
C{timeout} and C{tsize} (RFC 2349) and C{windowsize} (RFC 7440).
"""

from filexfer.tftp.client import TFTPError, TFTPTimeout, download, upload
from filexfer.tftp.server import TFTPServerProtocol

__all__ = ["TFTPError", "TFTPServerProtocol", "TFTPTimeout", "download", "upload"]
