"""Where received bytes touch the disk: the stores and what they promise.

L{IStorage} is what the TCP receiver and the TFTP server store through;
L{DirectoryStorage} keeps files under one root directory.  One store per
module, beside each other:

 - C{_interfaces}: L{IStorage}, L{IUpload}, L{IDirectUpload}, L{Receipt}, L{policy_for} (the
   conflict policy of an upload that must keep its name);
 - C{directory}: L{DirectoryStorage} (temporary file, fsync, atomic link,
   resume, conflict policy);
 - C{_upload}: one upload and its background writer;
 - C{_conflicts}: C{name (1).ext} within the file system's limits;
 - C{_digests}: the cache of stored files' digests, by algorithm.
"""

from filexfer.storage._conflicts import numbered_name
from filexfer.storage._interfaces import (
    CONFLICT_POLICIES,
    BlockingRunner,
    ConflictPolicy,
    IDirectUpload,
    IStorage,
    IUpload,
    Receipt,
    policy_for,
)
from filexfer.storage.directory import DirectoryStorage

__all__ = [
    "CONFLICT_POLICIES",
    "BlockingRunner",
    "ConflictPolicy",
    "DirectoryStorage",
    "IDirectUpload",
    "IStorage",
    "IUpload",
    "Receipt",
    "numbered_name",
    "policy_for",
]
