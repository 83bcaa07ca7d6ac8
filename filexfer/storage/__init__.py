"""Where received bytes touch the disk: the stores and what they promise.

L{IStorage} is what the TCP receiver and the TFTP server store through;
L{DirectoryStorage} keeps files under one root directory.  One store per
module, beside each other:

 - C{_interfaces}: L{IStorage}, L{IUpload}, L{IDirectUpload}, L{Receipt}, L{policy_for} (the
   conflict policy of an upload that must keep its name);
 - C{_rules}: what every store promises (resume identity, names, I1, I2);
 - C{_sources}: L{FileSource}, a local file to read;
 - C{s3}: L{S3Storage} (multipart uploads, conditional writes, leases),
   which needs the C{s3} extra (boto3) once it talks to a store;
 - C{directory}: L{DirectoryStorage} (temporary file, fsync, atomic link,
   resume, conflict policy);
 - C{_upload}: one upload and its background writer;
 - C{_conflicts}: C{name (1).ext} within the file system's limits;
 - C{_digests}: the cache of stored files' digests, by algorithm.
"""

from typing import TYPE_CHECKING

from filexfer._lazy import lazy_exports

if TYPE_CHECKING:
    from filexfer.storage._conflicts import numbered_name
    from filexfer.storage._interfaces import (
        CONFLICT_POLICIES,
        BlockingRunner,
        ConflictPolicy,
        IDirectUpload,
        IReadSource,
        IStorage,
        IUpload,
        Receipt,
        policy_for,
    )
    from filexfer.storage._sources import FileSource
    from filexfer.storage.directory import DirectoryStorage
    from filexfer.storage.s3 import S3Storage

_EXPORTS = {
    "numbered_name": "filexfer.storage._conflicts",
    "CONFLICT_POLICIES": "filexfer.storage._interfaces",
    "BlockingRunner": "filexfer.storage._interfaces",
    "ConflictPolicy": "filexfer.storage._interfaces",
    "IDirectUpload": "filexfer.storage._interfaces",
    "IReadSource": "filexfer.storage._interfaces",
    "IStorage": "filexfer.storage._interfaces",
    "IUpload": "filexfer.storage._interfaces",
    "Receipt": "filexfer.storage._interfaces",
    "policy_for": "filexfer.storage._interfaces",
    "FileSource": "filexfer.storage._sources",
    "DirectoryStorage": "filexfer.storage.directory",
    "S3Storage": "filexfer.storage.s3",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "CONFLICT_POLICIES",
    "BlockingRunner",
    "ConflictPolicy",
    "DirectoryStorage",
    "FileSource",
    "IDirectUpload",
    "IReadSource",
    "IStorage",
    "IUpload",
    "Receipt",
    "S3Storage",
    "numbered_name",
    "policy_for",
]
