"""pytest fixtures for code that embeds filexfer, built on pytest-twisted.

Installed with filexfer, pytest loads this plugin by itself (a C{pytest11}
entry point named C{filexfer.pytest_plugin}); a project that vendors
filexfer can name it in a C{conftest.py} instead::

    pytest_plugins = ["filexfer.pytest_plugin"]

The fixtures that listen on sockets need pytest-twisted, run with the
reactor it installs (C{pytest -p twisted --reactor=default}), and tests
written in its style (C{@pytest_twisted.ensureDeferred} or
C{@pytest_twisted.inlineCallbacks})::

    @pytest_twisted.ensureDeferred
    async def test_upload(filexfer_receiver, tmp_path):
        from twisted.internet import reactor
        local = tmp_path / "a.txt"
        local.write_bytes(b"hello")
        receipt = await send_file(reactor, filexfer_receiver.endpoint(reactor), local)
        assert open(filexfer_receiver.path(receipt.path), "rb").read() == b"hello"

 - C{filexfer_memory_storage}: a fresh L{MemoryStorage};
 - C{filexfer_fake_udp}: a fresh L{FakeUDPNetwork}, the reactor (a clock
   with C{listenUDP}) for TFTP tests without sockets; like the storage, it
   needs no pytest-twisted;
 - C{filexfer_receiver}: a L{RunningReceiver} on a free loopback TCP port,
   storing under C{tmp_path / "filexfer-receiver"};
 - C{filexfer_tftp_server}: a L{RunningTFTPServer} on a free loopback UDP
   port, storing under (and serving from) C{tmp_path / "filexfer-tftp"}.

Each is stopped at teardown, its connections and transfers closed.

pytest-twisted runs the reactor in a greenlet from the first such test on:
trial C{TestCase}s that use the real reactor cannot follow in the same
session (pytest-dev/pytest-twisted#147); run the two kinds apart, or use
L{filexfer.testing.start_receiver} from trial.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from filexfer._types import IServiceReactor
from filexfer.testing import (
    FakeUDPNetwork,
    MemoryStorage,
    RunningReceiver,
    RunningTFTPServer,
    start_receiver,
    start_tftp_server,
)

try:
    import pytest_twisted
except ImportError:  # the in-memory fixture works without it
    pytest_twisted = None


def _reactor() -> IServiceReactor:
    """The reactor pytest-twisted installed (imported late: it installs it at start-up)."""
    from twisted.internet import reactor

    return cast(IServiceReactor, reactor)


@pytest.fixture
def filexfer_memory_storage() -> MemoryStorage:
    """A fresh L{MemoryStorage} (conflict policy C{rename}, no size limit)."""
    return MemoryStorage()


@pytest.fixture
def filexfer_fake_udp() -> FakeUDPNetwork:
    """A fresh L{FakeUDPNetwork}: a clock and a lossless UDP network in memory."""
    return FakeUDPNetwork()


if pytest_twisted is not None:

    @pytest_twisted.async_yield_fixture
    async def filexfer_receiver(tmp_path: Path) -> AsyncIterator[RunningReceiver]:
        """A receiver on a free loopback TCP port, storing under C{tmp_path/filexfer-receiver}."""
        receiver = await start_receiver(_reactor(), tmp_path / "filexfer-receiver")
        yield receiver
        await receiver.stop()

    @pytest_twisted.async_yield_fixture
    async def filexfer_tftp_server(tmp_path: Path) -> AsyncIterator[RunningTFTPServer]:
        """A TFTP server on a free loopback UDP port, storing under C{tmp_path/filexfer-tftp}."""
        server = await start_tftp_server(_reactor(), tmp_path / "filexfer-tftp")
        yield server
        await server.stop()

else:
    _NEEDS = "needs pytest-twisted (pip install pytest-twisted)"

    @pytest.fixture
    def filexfer_receiver() -> RunningReceiver:
        """Needs pytest-twisted: this fails the test, saying so."""
        pytest.fail(f"the filexfer_receiver fixture {_NEEDS}")

    @pytest.fixture
    def filexfer_tftp_server() -> RunningTFTPServer:
        """Needs pytest-twisted: this fails the test, saying so."""
        pytest.fail(f"the filexfer_tftp_server fixture {_NEEDS}")
