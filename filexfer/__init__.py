"""filexfer: move files over the network with Twisted.

The public API lives here; everything else is an implementation detail.
"""

from filexfer._errors import TransferError
from filexfer._records import ITransferObserver, TransferRecord
from filexfer.storage import DirectoryStorage, IReadSource, IStorage, IUpload, Receipt, S3Storage
from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol
from filexfer.tcp.sender import SenderProtocol, SendError, ServerRefused, send_file

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
