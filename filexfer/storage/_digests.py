"""The digest cache: the SHA-256 of stored files, so a check need not re-read them.

One JSON record per stored path under the state directory's C{digests/},
keyed by the file's size, mtime and inode (a file changed behind the
cache's back is hashed again), with the Mtime the file was announced with
(a file system may round or clamp the time it keeps).  An optimisation
only: any error reading or writing a record is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Any


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

    def digest(self, path: str, existing: os.stat_result) -> str | None:
        """The cached SHA-256 of the file C{existing} stored at C{path}, or None."""
        record = self._record(path, existing)
        return None if record is None else str(record["sha256"])

    def announced_mtime(self, path: str, existing: os.stat_result) -> int | None:
        """The Mtime (ns) the stored file was announced with, or None."""
        record = self._record(path, existing)
        value = None if record is None else record.get("mtime_ns")
        return value if isinstance(value, int) else None

    def remember(
        self, path: str, existing: os.stat_result, digest: str, mtime_ns: int | None
    ) -> None:
        """Cache C{digest} (and the announced C{mtime_ns}) for the file C{existing}."""
        record = {"path": path, "key": stat_key(existing), "sha256": digest, "mtime_ns": mtime_ns}
        target = self._file(path)
        temp = f"{target}.{secrets.token_hex(4)}"
        try:
            with open(temp, "w") as handle:
                json.dump(record, handle)
            os.replace(temp, target)
        except OSError:
            pass  # the cache is an optimisation only


def stat_key(info: os.stat_result) -> list[int]:
    """What identifies one version of a file: size, mtime (ns) and inode."""
    return [info.st_size, info.st_mtime_ns, info.st_ino]
