"""Text that came from elsewhere (a peer, a file name), made safe to print.

A server's C{error} reason or C{done} path, a TFTP ERROR message, a client's
file name in a log line, a local file name with a newline in it: printed raw,
control characters in them could move the cursor, retitle the window, ring
the bell, or forge a line of their own.  L{escape} is the one place that
decides what is shown as an escape instead.
"""

from __future__ import annotations

import unicodedata

_KEEP = frozenset({"Zs"})
"""Categories kept even though C{str.isprintable} says no: spaces."""


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """C{text} with every character a terminal might act on written as an escape.

    Escaped, in Python's notation (C{\\x1b}, C{\\u202e}): C0 and C1 control
    characters (ESC, BEL, CR, LF, TAB, DEL, ...), format characters such as
    the bidirectional overrides, line and paragraph separators, lone
    surrogates (bytes of a name that were not UTF-8), private-use and
    unassigned code points.  Everything else, spaces included, is unchanged.
    """
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or unicodedata.category(char) in _KEEP else _escaped(char)
        for char in text
    )
