"""The storage rules every store keeps, whatever holds the bytes (docs/protocol.md §1.2-1.3).

L{DirectoryStorage} and L{S3Storage} differ in mechanics (a temporary file
linked into place; a multipart upload completed with a conditional
request) but not in what they promise.  The promises live here, once:

 - which uploads may be resumed, and the identity a held partial is kept
   under (L{resume_identity});
 - the names the C{rename} policy tries, in order (L{candidate_names});
 - which stored copies may answer "already stored" (L{judge_stored}, I2);
 - when received bytes may get a final name (L{check_finished}, I1).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator

from filexfer._errors import TransferError
from filexfer._hashing import DEFAULT_DIGEST, DigestName
from filexfer._names import MAX_COMPONENT_BYTES
from filexfer.storage._conflicts import numbered_name
from filexfer.storage._interfaces import IUpload, Receipt

MAX_RENAME_TRIES = 10_000
"""Numbered names the C{rename} policy tries before it gives up (409)."""


def resume_identity(
    path: str, size: int | None, sha256: str | None, mtime_ns: int | None, trailer: bool
) -> str | None:
    """The hex key a held partial of this exact file is kept under, or None.

    "This exact file" is the same path and Size and either the same SHA256
    or, when none is announced, the same Mtime with the sender's SHA-256
    presented after the data (docs/protocol.md §1.2).  Anything less is
    never resumed: None.
    """
    if size is None or (sha256 is None and not (trailer and mtime_ns is not None)):
        return None
    text = f"{path}\0{size}\0{sha256 or ''}\0{'' if sha256 else mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()


def candidate_names(name: str, limit: int = MAX_COMPONENT_BYTES) -> Iterator[str]:
    """C{name}, then C{name (1)}, C{name (2)}... within C{limit} bytes (L{MAX_RENAME_TRIES})."""
    yield name
    for number in range(1, MAX_RENAME_TRIES):
        yield numbered_name(name, number, limit)


def wanted_copies(
    sizes: dict[str, int],
    size: int | None,
    sha256: str | None,
    mtime_ns: int | None,
    trailer: bool,
    fresh: bool,
    same_mtime: Callable[[str], bool],
) -> list[str]:
    """Which stored copies (path -> size) may answer "already stored" (I2).

    With an announced SHA256, every copy of the right size (its digest
    decides).  Without one, only copies with the sender's Mtime, and only
    when the sender will prove its digest in a trailer (and did not ask
    for a C{fresh} start).
    """
    if size is None:
        return []
    matching = [path for path, held in sizes.items() if held == size]
    if sha256 is not None:
        return matching
    if not trailer or fresh or mtime_ns is None:
        return []
    return [path for path in matching if same_mtime(path)]


def judge_stored(
    path: str,
    size: int | None,
    sha256: str | None,
    digests: dict[str, str],
    algorithm: DigestName = DEFAULT_DIGEST,
) -> IUpload | None:
    """The upload that receives nothing, when a stored copy may be this file.

    @param digests: stored path -> its C{algorithm} digest (SHA-256 when
        C{sha256} was announced).

    @return: L{AlreadyStored} when a copy has the announced SHA256; a
        L{StoredCandidate} (the sender proves its digest) when no SHA256 was
        announced and copies with its Size and Mtime exist; else None.
    """
    from filexfer.storage._upload import AlreadyStored, StoredCandidate

    if sha256 is not None:
        for stored, digest in digests.items():
            if hmac.compare_digest(digest, sha256):
                assert size is not None
                return AlreadyStored(Receipt(size, sha256, stored))
        return None
    if digests and size is not None:
        return StoredCandidate(path, size, digests, algorithm)
    return None


def check_finished(
    received: int,
    expected_size: int | None,
    offset: int,
    digest: str,
    announced: str | None,
    claimed: str | None,
    algorithm: DigestName = DEFAULT_DIGEST,
) -> tuple[TransferError, bool] | None:
    """Why received bytes may not get a final name (I1), and whether to keep them for a resume.

    @param received: bytes held, a resumed prefix included.
    @param offset: bytes held from an earlier upload when this one began.
    @param digest: the hex C{algorithm} digest of the held bytes.
    @param announced: the SHA256 the sender announced up front, or None.
    @param claimed: the C{algorithm} digest the sender presented after the data, or None.
    @return: None when the bytes may be placed; else the refusal and
        whether the bytes stay for a resume (only a short upload keeps them).
    """
    if expected_size is not None and received < expected_size:
        return (
            TransferError(422, f"short upload: {received} of {expected_size} bytes arrived"),
            True,
        )
    if announced is not None and digest != announced:
        return TransferError(422, f"SHA256 mismatch: received data hashes to {digest}"), False
    if claimed is not None and digest != claimed:
        # I1: bytes that are not the sender's file as it is now never get a
        # final name, and a stale prefix is not offered again.
        if offset:
            reason = (
                f"the {offset} bytes held from an earlier upload differ from your"
                " file; send it again from the start"
            )
        else:
            reason = f"the file changed while it was sent (its {algorithm} differs)"
        return TransferError(422, reason), False
    return None


def check_max_size(max_size: int | None, size: int) -> None:
    """Refuse with 413 a file of C{size} bytes (announced or arrived) above C{max_size}."""
    if max_size is not None and size > max_size:
        raise TransferError(413, f"file is larger than the server allows ({max_size} bytes)")
