"""Validation of the names and paths that peers ask us to store or read.

Pure functions: no file system access.  The rules are those of
docs/protocol.md, "Paths and storage".
"""

from __future__ import annotations

import unicodedata

from filexfer._errors import TransferError

STATE_DIR = ".filexfer"
"""The hidden directory where the server keeps its own state: under the root,
and at the top of each mount point inside the root that uploads go to."""

MAX_COMPONENT_BYTES = 255


def _check_component(component: str) -> None:
    try:
        encoded = component.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from an undecodable file name
        raise TransferError(400, "name is not valid UTF-8") from None
    if not 1 <= len(encoded) <= MAX_COMPONENT_BYTES:
        raise TransferError(400, "each path component must be 1-255 bytes")
    if component in (".", ".."):
        raise TransferError(400, f"path component {component!r} is not allowed")
    if "\\" in component:
        raise TransferError(400, "backslash is not allowed in a name")
    for char in component:
        if unicodedata.category(char) == "Cc":  # C0, DEL and C1 controls, NUL included
            raise TransferError(400, "control characters are not allowed in a name")


def _decode(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TransferError(400, "name is not valid UTF-8") from None


def validate_name(raw: bytes | str) -> str:
    """Check a single name component (the classic form's file name).

    @return: the name as text.
    @raise TransferError: 400 when the name breaks a rule.
    """
    name = _decode(raw)
    if "/" in name:
        raise TransferError(400, "a classic-form name cannot contain '/'")
    _check_component(name)
    return name


def validate_path(raw: bytes | str) -> str:
    """Check a relative, C{/}-separated path (FX/1 and TFTP).

    @return: the path as text, unchanged.
    @raise TransferError: 400 when the path breaks a rule, 403 when any
        component is the name of the server's state directories.
    """
    path = _decode(raw)
    if path.startswith("/"):
        raise TransferError(400, "absolute paths are not allowed")
    components = path.split("/")
    for component in components:
        _check_component(component)
    if STATE_DIR in components:  # the root's, or one at the top of a mount inside it
        raise TransferError(403, "that directory is reserved for the server")
    return path


def from_tftp_root(name: str) -> str:
    """A TFTP file name as a path relative to the root: leading C{/}s dropped.

    Devices, PXE ROMs and phones name files from the TFTP root
    (C{/pxelinux.cfg/default}); tftpd-hpa with C{-s} serves and stores them
    there, and so do we (docs/tftp.md, "File names").  The rest of the name
    is left to L{validate_path}: C{..}, C{.}, empty components and the other
    rules still apply.  C{"/"} alone gives C{""}, which L{validate_path}
    refuses.
    """
    return name.lstrip("/")
