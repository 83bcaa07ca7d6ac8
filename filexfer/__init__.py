"""filexfer: move files over the network with Twisted.

The public API lives here; everything else is an implementation detail.
"""

from typing import TYPE_CHECKING

from filexfer._lazy import lazy_exports

if TYPE_CHECKING:
    from filexfer._errors import TransferError
    from filexfer._records import ITransferObserver, TransferRecord
    from filexfer.storage import (
        DirectoryStorage,
        IReadSource,
        IStorage,
        IUpload,
        Receipt,
        S3Storage,
    )
    from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol
    from filexfer.tcp.sender import SenderProtocol, SendError, ServerRefused, send_file

_EXPORTS = {
    "TransferError": "filexfer._errors",
    "ITransferObserver": "filexfer._records",
    "TransferRecord": "filexfer._records",
    "DirectoryStorage": "filexfer.storage",
    "IReadSource": "filexfer.storage",
    "IStorage": "filexfer.storage",
    "IUpload": "filexfer.storage",
    "Receipt": "filexfer.storage",
    "S3Storage": "filexfer.storage",
    "ReceiverFactory": "filexfer.tcp.receiver",
    "ReceiverProtocol": "filexfer.tcp.receiver",
    "SenderProtocol": "filexfer.tcp.sender",
    "SendError": "filexfer.tcp.sender",
    "ServerRefused": "filexfer.tcp.sender",
    "send_file": "filexfer.tcp.sender",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__version__ = "0.1.0"

__all__ = [
    "DirectoryStorage",
    "IReadSource",
    "IStorage",
    "ITransferObserver",
    "IUpload",
    "Receipt",
    "ReceiverFactory",
    "ReceiverProtocol",
    "S3Storage",
    "SendError",
    "SenderProtocol",
    "ServerRefused",
    "TransferError",
    "TransferRecord",
    "__version__",
    "send_file",
]
