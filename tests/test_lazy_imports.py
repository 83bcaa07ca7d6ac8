"""The public packages import their names at first use, so a command loads only what it runs.

C{filexfer send} in a fresh interpreter must not import the receiver, the
TFTP server, the service or the S3 store (about 0.1 CPU-second per run);
the public names are all still there, for code and for documentation tools.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial import unittest

import filexfer
import filexfer.storage
import filexfer.tftp

SERVER_SIDE = (
    "filexfer.service",
    "filexfer.tcp.receiver",
    "filexfer.tftp.server",
    "filexfer.storage.s3",
    "filexfer.storage.directory",
)


def imported_after(code: str) -> set[str]:
    """The filexfer modules a fresh interpreter has loaded after running C{code}."""
    probe = (
        f"{code}\nimport sys\nprint(' '.join(m for m in sys.modules if m.startswith('filexfer')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.split())


class LazyExportsTests(unittest.TestCase):
    def test_send_loads_no_server_side_module(self) -> None:
        """Parsing a send command and loading what it runs leaves the server side out."""
        loaded = imported_after(
            "import filexfer.cli as c\n"
            "c.parse_command_line(['send', 'f', '127.0.0.1:8000'])\n"
            "from filexfer import send_file"
        )
        self.assertIn("filexfer.tcp.sender", loaded)
        self.assertEqual(sorted(loaded.intersection(SERVER_SIDE)), [])

    def test_serve_loads_the_service(self) -> None:
        """Parsing serve's options is what imports the service."""
        loaded = imported_after("import filexfer.cli as c\nc.parse_command_line(['serve'])")
        self.assertIn("filexfer.service", loaded)

    def test_every_public_name_is_there(self) -> None:
        """Each name in __all__ resolves, and dir() lists it before it is used."""
        for package in (filexfer, filexfer.storage, filexfer.tftp):
            listed = set(dir(package))
            for name in package.__all__:
                self.assertIn(name, listed, f"{package.__name__}.{name}")
                self.assertTrue(hasattr(package, name), f"{package.__name__}.{name}")
        self.assertIs(filexfer.DirectoryStorage, filexfer.storage.DirectoryStorage)

    def test_unknown_name(self) -> None:
        """A name that is not exported is an AttributeError, as for any module."""
        with self.assertRaises(AttributeError) as caught:
            filexfer.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
        self.assertIn("'filexfer' has no attribute 'NoSuchThing'", str(caught.exception))
