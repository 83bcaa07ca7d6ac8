"""The pytest fixtures of filexfer.pytest_plugin, used in pytest-twisted's style.

Not collected with the suite (the name does not start with C{test_}):
tests/test_testing.py runs this file in a pytest of its own, because
pytest-twisted's greenlet reactor and trial's test cases do not mix in one
session.  Run it alone with C{python -m pytest tests/pytest_twisted_style.py}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

import filexfer.testing
from filexfer import Receipt, send_file
from filexfer.tcp.sender import ServerRefused
from filexfer.testing import FakeUDPNetwork, MemoryStorage, RunningReceiver, RunningTFTPServer
from filexfer.tftp.client import download, upload
from tests.helpers import payload, sha256_bytes, write_file


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_receiver_fixture_stores_on_disk(
    filexfer_receiver: RunningReceiver, tmp_path: Path
) -> None:
    """send_file over real loopback TCP to filexfer_receiver stores the bytes under its root."""
    reactor = _reactor()
    data = payload(300_000, seed=1)
    local = write_file(str(tmp_path / "local" / "data.bin"), data)
    receipt = await send_file(reactor, filexfer_receiver.endpoint(reactor), local, name="in/d.bin")
    assert receipt == Receipt(len(data), sha256_bytes(data), "in/d.bin")
    assert Path(filexfer_receiver.path("in/d.bin")).read_bytes() == data
    assert filexfer_receiver.root == str(tmp_path / "filexfer-receiver")


@pytest_twisted.inlineCallbacks
def test_receiver_fixture_classic_form(filexfer_receiver: RunningReceiver, tmp_path: Path) -> Any:
    """The classic form works against the fixture too (an inlineCallbacks test)."""
    reactor = _reactor()
    local = write_file(str(tmp_path / "plain.txt"), b"plain bytes")
    yield send_file(reactor, filexfer_receiver.endpoint(reactor), local, plain=True)
    yield filexfer_receiver.idle()  # no receipt in the classic form: wait for the receiver
    assert Path(filexfer_receiver.path("plain.txt")).read_bytes() == b"plain bytes"


@pytest_twisted.ensureDeferred
async def test_receiver_fixture_refusal(filexfer_receiver: RunningReceiver, tmp_path: Path) -> None:
    """A refusal from the real receiver reaches the sender as ServerRefused."""
    reactor = _reactor()
    local = write_file(str(tmp_path / "x"), b"x")
    endpoint = filexfer_receiver.endpoint(reactor)
    await send_file(reactor, endpoint, local, name="a-file")
    with pytest.raises(ServerRefused) as caught:  # only the server knows "a-file" is a file
        await send_file(reactor, endpoint, local, name="a-file/x")
    assert caught.value.code == 403


@pytest_twisted.ensureDeferred
async def test_receiver_stop_closes_open_connections(tmp_path: Path) -> None:
    """RunningReceiver.stop aborts a connection still in its handshake and stops listening."""
    from twisted.internet.endpoints import connectProtocol
    from twisted.internet.protocol import Protocol

    reactor = _reactor()
    receiver = await filexfer.testing.start_receiver(reactor, tmp_path / "root")
    lost: Deferred[None] = Deferred()

    class Idle(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            lost.callback(None)

    await connectProtocol(receiver.endpoint(reactor), Idle())
    await receiver.stop()
    await lost
    with pytest.raises(Exception, match="refused"):
        await connectProtocol(receiver.endpoint(reactor), Protocol())


@pytest_twisted.ensureDeferred
async def test_tftp_fixture_download(
    filexfer_tftp_server: RunningTFTPServer, tmp_path: Path
) -> None:
    """filexfer.tftp.client.download fetches a file from filexfer_tftp_server."""
    data = payload(100_000, seed=2)
    write_file(filexfer_tftp_server.path("boot/image.bin"), data)
    target = tmp_path / "image.bin"
    size = await download(
        _reactor(), filexfer_tftp_server.host, filexfer_tftp_server.port, "boot/image.bin", target
    )
    assert size == len(data)
    assert target.read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_tftp_fixture_upload(filexfer_tftp_server: RunningTFTPServer, tmp_path: Path) -> None:
    """An upload to filexfer_tftp_server lands under its root."""
    local = write_file(str(tmp_path / "up.bin"), b"u" * 2000)
    server = filexfer_tftp_server
    await upload(_reactor(), server.host, server.port, local, "up/u.bin")
    assert Path(server.path("up/u.bin")).read_bytes() == b"u" * 2000


@pytest_twisted.ensureDeferred
async def test_tftp_over_memory_storage(
    filexfer_memory_storage: MemoryStorage, tmp_path: Path
) -> None:
    """A TFTP server on MemoryStorage serves and stores files (real loopback UDP)."""
    from twisted.internet.defer import maybeDeferred

    from filexfer.tftp.server import TFTPServerProtocol

    reactor = _reactor()
    storage = filexfer_memory_storage
    storage.files["served.bin"] = payload(5000, seed=4)
    server = TFTPServerProtocol(storage=storage, reactor=reactor)
    port = reactor.listenUDP(0, server, interface="127.0.0.1")
    try:
        target = tmp_path / "served.bin"
        await download(reactor, "127.0.0.1", port.getHost().port, "served.bin", target)
        assert target.read_bytes() == storage.files["served.bin"]
        await upload(reactor, "127.0.0.1", port.getHost().port, target, "copy/served.bin")
        assert storage.files["copy/served.bin"] == storage.files["served.bin"]
    finally:
        await server.stop_transfers()
        await maybeDeferred(port.stopListening)


def test_memory_storage_fixture(filexfer_memory_storage: MemoryStorage) -> None:
    """filexfer_memory_storage is a fresh, empty MemoryStorage."""
    assert isinstance(filexfer_memory_storage, MemoryStorage)
    assert filexfer_memory_storage.files == {}


def test_fake_udp_fixture(
    filexfer_fake_udp: FakeUDPNetwork, filexfer_memory_storage: MemoryStorage, tmp_path: Path
) -> None:
    """filexfer_fake_udp runs a TFTP download with no sockets and no running reactor."""
    from filexfer.tftp.server import TFTPServerProtocol

    network, storage = filexfer_fake_udp, filexfer_memory_storage
    storage.files["f"] = payload(3000)
    network.listenUDP(69, TFTPServerProtocol(storage=storage, reactor=network))
    result = download(network, "127.0.0.1", 69, "f", tmp_path / "f")
    assert network.run_until(result)
    assert (tmp_path / "f").read_bytes() == storage.files["f"]
