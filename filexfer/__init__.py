"""filexfer: move files over the network with Twisted.

The public API lives here; everything else is an implementation detail.
"""

from filexfer._errors import TransferError
from filexfer._records import ITransferObserver, TransferRecord
from filexfer.storage import DirectoryStorage, IStorage, IUpload, Receipt
from filexfer.tcp.receiver import ReceiverFactory, ReceiverProtocol
from filexfer.tcp.sender import SenderProtocol, SendError, ServerRefused, send_file

__version__ = "0.1.0"

__all__ = [
    "DirectoryStorage",
    "IStorage",
    "ITransferObserver",
    "IUpload",
    "Receipt",
    "ReceiverFactory",
    "ReceiverProtocol",
    "SendError",
    "SenderProtocol",
    "ServerRefused",
    "TransferError",
    "TransferRecord",
    "__version__",
    "send_file",
]
