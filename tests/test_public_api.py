"""The package's public face (STYLE.md: a test asserts the exports)."""

from __future__ import annotations

from twisted.trial import unittest

import filexfer

DOCUMENTED = {
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
}


class PublicAPITests(unittest.TestCase):
    def test_all_is_the_documented_set(self) -> None:
        """filexfer.__all__ is exactly the documented set of names."""
        self.assertEqual(set(filexfer.__all__), DOCUMENTED)
        self.assertEqual(len(filexfer.__all__), len(set(filexfer.__all__)))

    def test_names_exist(self) -> None:
        """Every exported name exists on the package."""
        for name in filexfer.__all__:
            self.assertTrue(hasattr(filexfer, name), name)

    def test_public_names_documented(self) -> None:
        """Every exported class and function has a docstring."""
        for name in filexfer.__all__:
            if name != "__version__":
                self.assertTrue(getattr(filexfer, name).__doc__, name)

    def test_version(self) -> None:
        """__version__ is a dotted version string."""
        parts = filexfer.__version__.split(".")
        self.assertGreaterEqual(len(parts), 2)
        self.assertTrue(all(part.isdigit() for part in parts[:2]))

    def test_error_hierarchy(self) -> None:
        """ServerRefused is a SendError; TransferError carries a code and a reason."""
        self.assertTrue(issubclass(filexfer.ServerRefused, filexfer.SendError))
        error = filexfer.ServerRefused(409, "exists")
        self.assertEqual((error.code, error.reason), (409, "exists"))
        self.assertEqual(str(filexfer.TransferError(404, "gone")), "error 404 gone")

    def test_storage_provides_interface(self) -> None:
        """DirectoryStorage provides IStorage."""
        self.assertTrue(filexfer.IStorage.implementedBy(filexfer.DirectoryStorage))
