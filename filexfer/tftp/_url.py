"""tftp:// URLs (RFC 3617): pure parsing and formatting, no I/O.

C{tftp://HOST[:PORT]/NAME[;mode=netascii|octet]}.  The name is
percent-decoded (C{my%20file.txt} asks for C{my file.txt}, as curl does) and
the optional C{;mode=} parameter picks the transfer mode.  The one C{/}
after the host separates it from the name: C{tftp://host//boot.cfg} asks
for C{/boot.cfg}.  L{format_tftp_url} is the inverse: what a printed URL
needs encoded is encoded, so that it can be pasted back.

Both C{filexfer get} and C{filexfer send} read their C{tftp://} arguments
with L{parse_tftp_url}.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

import attrs

from filexfer._log import format_address
from filexfer.tftp._packets import MODES

DEFAULT_PORT = 69
"""The port of a tftp:// URL that names none (RFC 1350's well-known port)."""

_AUTHORITY = re.compile(r"^(?:\[(?P<v6>[^\]/]+)\]|(?P<host>[^:/\[\]]+))(?::(?P<port>[0-9]{1,5}))?$")
_MODE = re.compile(r";mode=([^;/]*)$", re.IGNORECASE)


class BadURL(ValueError):
    """Not a tftp:// URL that can be used; the message says why, in one line."""


@attrs.frozen
class TFTPURL:
    """A parsed tftp:// URL.

    @ivar host: the host name or address (IPv6 without brackets).
    @ivar port: the UDP port (L{DEFAULT_PORT} when the URL names none).
    @ivar name: the file name, percent-decoded (C{""} when the URL has none).
    @ivar mode: C{"octet"} or C{"netascii"} from C{;mode=}, or None.
    """

    host: str
    port: int = DEFAULT_PORT
    name: str = ""
    mode: str | None = None

    def __str__(self) -> str:
        return format_tftp_url(self.host, self.port, self.name, self.mode)


def parse_tftp_url(text: str) -> TFTPURL:
    """Parse C{tftp://HOST[:PORT]/NAME[;mode=MODE]} (RFC 3617).

    The scheme and the C{mode=} key are case-insensitive, and so is the mode.
    C{?} and C{#} start a query and a fragment in any URL (RFC 3986), which
    TFTP has not: they are refused rather than dropped or sent; a name that
    contains them writes them C{%3F} and C{%23}.

    @raise BadURL: not tftp://, no host, a bad port, an unknown mode, C{?}
        or C{#}, or a name that is not UTF-8 or holds a NUL once decoded.
    """
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() != "tftp":
        raise BadURL(f"not a tftp:// URL: {text!r}")
    authority, slash, path = rest.partition("/")
    match = _AUTHORITY.match(authority)
    if match is None:
        raise BadURL(f"bad host in {text!r}: expected tftp://HOST[:PORT]/NAME")
    port = int(match["port"]) if match["port"] else DEFAULT_PORT
    if not 0 < port < 65536:
        raise BadURL(f"bad port {port} in {text!r}")
    for char, code in (("?", "%3F"), ("#", "%23")):
        if char in path:
            raise BadURL(f"{char!r} in {text!r} is not part of a TFTP name: write it {code}")
    mode: str | None = None
    found = _MODE.search(path)
    if found is not None:
        mode = found[1].lower()
        if mode not in MODES:
            raise BadURL(f"unknown ;mode={found[1]} in {text!r}: use netascii or octet")
        path = path[: found.start()]
    try:
        name = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadURL(f"the name in {text!r} is not UTF-8 once %-decoded") from None
    if "\0" in name:
        raise BadURL(f"the name in {text!r} holds a NUL (%00), which TFTP cannot send")
    return TFTPURL(match["v6"] or match["host"], port, name if slash else "", mode)


def format_tftp_url(host: str, port: int, name: str, mode: str | None = None) -> str:
    """The tftp:// URL of C{name} on C{host}:C{port}, as L{parse_tftp_url} reads it back.

    Everything but letters, digits, C{-._~} and C{/} is percent-encoded
    (UTF-8), so a space, C{%}, C{;}, C{?} or C{#} in a name survives a
    round trip; C{;mode=netascii} is added for netascii (octet is the default).
    """
    suffix = ";mode=netascii" if mode == "netascii" else ""
    return f"tftp://{format_address(host, port)}/{quote(name, safe='/')}{suffix}"
