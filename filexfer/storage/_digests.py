"""The digest cache: the digests of stored files, so a check need not re-read them.

One JSON record per stored path under the state directory's C{digests/},
keyed by the file's size, mtime and inode (a file changed behind the
cache's back is hashed again), holding one digest per algorithm (SHA-256,
BLAKE3: a file received with one and checked with the other gets both),
with the Mtime the file was announced with (a file system may round or
clamp the time it keeps).  An optimisation only: any error reading or
writing a record is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Any

from filexfer._hashing import DEFAULT_DIGEST, DigestName


class DigestCache:
    """Records in C{folder}; see the module docstring."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def _file(self, path: str) -> str:
        return os.path.join(self.folder, hashlib.sha256(path.encode()).hexdigest())

    def _record(self, path: str, existing: os.stat_result) -> dict[str, Any] | None:
        try:
            with open(self._file(path)) as handle:
                record: Any = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("path") != path:
            return None
        return record if record.get("key") == stat_key(existing) else None

    def digest(
        self, path: str, existing: os.stat_result, algorithm: DigestName = DEFAULT_DIGEST
    ) -> str | None:
        """The cached C{algorithm} digest (hex) of the file C{existing} at C{path}, or None."""
        record = self._record(path, existing)
        if record is None:
            return None
        value = _digests_of(record).get(algorithm)
        return value if isinstance(value, str) else None

    def announced_mtime(self, path: str, existing: os.stat_result) -> int | None:
        """The Mtime (ns) the stored file was announced with, or None."""
        record = self._record(path, existing)
        value = None if record is None else record.get("mtime_ns")
        return value if isinstance(value, int) else None

    def remember(
        self,
        path: str,
        existing: os.stat_result,
        digest: str,
        mtime_ns: int | None,
        algorithm: DigestName = DEFAULT_DIGEST,
    ) -> None:
        """Cache C{digest} (by C{algorithm}) and the announced C{mtime_ns} for the file C{existing}.

        Digests by other algorithms already cached for this same version of
        the file are kept; so is its announced Mtime when C{mtime_ns} is None.
        """
        old = self._record(path, existing) or {}
        digests = {**_digests_of(old), algorithm: digest}
        if mtime_ns is None and isinstance(old.get("mtime_ns"), int):
            mtime_ns = old["mtime_ns"]
        record = {
            "path": path,
            "key": stat_key(existing),
            "digests": digests,
            "mtime_ns": mtime_ns,
        }
        target = self._file(path)
        temp = f"{target}.{secrets.token_hex(4)}"
        try:
            with open(temp, "w") as handle:
                json.dump(record, handle)
            os.replace(temp, target)
        except OSError:
            pass  # the cache is an optimisation only


def _digests_of(record: dict[str, Any]) -> dict[str, Any]:
    """The record's digests by algorithm (a record from before BLAKE3 holds C{sha256} only)."""
    digests = record.get("digests")
    if isinstance(digests, dict):
        return digests
    legacy = record.get("sha256")
    return {"sha256": legacy} if isinstance(legacy, str) else {}


def stat_key(info: os.stat_result) -> list[int]:
    """What identifies one version of a file: size, mtime (ns) and inode."""
    return [info.st_size, info.st_mtime_ns, info.st_ino]
