"""Free names for the rename policy, within the file system's limits.

C{numbered_name} turns C{report.pdf} into C{report (1).pdf}; when the
numbered name would be longer than the target file system allows
(C{NAME_MAX}, in bytes, at most the protocol's 255), the stem is shortened
at a character boundary so that the number and the extension survive.
"""

from __future__ import annotations

import os

from filexfer._names import MAX_COMPONENT_BYTES

COMPOUND_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")

_TAG_ROOM = len(" (99999999)")
"""Bytes kept for the number when deciding whether an extension can be kept:
an extension so long that it leaves no room for the stem and such a number
is no extension, and the number goes at the end of the whole name."""


def name_limit(dir_fd: int) -> int:
    """The longest name in bytes that can be created in the directory C{dir_fd}.

    The file system's C{NAME_MAX}, capped at the protocol's 255 bytes (a
    stored name must also be a valid name to ask for).
    """
    try:
        limit = os.fpathconf(dir_fd, "PC_NAME_MAX")
    except (OSError, ValueError):
        return MAX_COMPONENT_BYTES
    return MAX_COMPONENT_BYTES if limit <= 0 else min(limit, MAX_COMPONENT_BYTES)


def split_suffix(name: str) -> tuple[str, str]:
    """C{a.tar.gz} -> (C{a}, C{.tar.gz}); C{.bashrc} -> (C{.bashrc}, C{""})."""
    lower = name.lower()
    compound = next(
        (s for s in COMPOUND_SUFFIXES if lower.endswith(s) and len(name) > len(s)), None
    )
    if compound is not None:
        return name[: -len(compound)], name[-len(compound) :]  # keep the name's own case
    if name.startswith("."):  # a dotfile: its leading dot starts no extension
        stem, dot, ext = name[1:].rpartition(".")
        stem = "." + stem if dot else ""
    else:
        stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return name, ""
    return stem, "." + ext


def _cut(text: str, budget: int) -> str:
    """The longest prefix of C{text} that is at most C{budget} bytes of UTF-8."""
    return text.encode()[: max(budget, 0)].decode("utf-8", "ignore")


def numbered_name(name: str, number: int, limit: int = MAX_COMPONENT_BYTES) -> str:
    """C{report.pdf} -> C{report (1).pdf}; C{a.tar.gz} -> C{a (1).tar.gz}.

    The result is at most C{limit} bytes of UTF-8: the stem is cut at a
    character boundary.  An extension that would leave no room for the stem
    is not kept apart: the whole name is cut and the number appended.
    Distinct numbers give distinct names.

    @raise ValueError: when C{limit} leaves no room for the number.
    """
    tag = f" ({number})"
    if len(tag.encode()) >= limit:
        raise ValueError(f"no name of {limit} bytes can hold {tag!r}")
    stem, suffix = split_suffix(name)
    first = stem[:1].encode()
    if len(first) + _TAG_ROOM + len(suffix.encode()) > limit:
        stem, suffix = name, ""
    budget = limit - len((tag + suffix).encode())
    return f"{_cut(stem, budget)}{tag}{suffix}"
