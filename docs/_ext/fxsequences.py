"""Sequence diagrams recorded from the code at build time, drawn with matplotlib.

* ``fx1-resume.svg``: an FX/1 upload cut half-way and resumed. The
  receiver is the real :class:`filexfer.ReceiverProtocol` on a real
  :class:`filexfer.DirectoryStorage` (in a temporary directory); what the
  client says is made by the same encoders ``filexfer send`` uses
  (``filexfer.tcp._wire``); every line the receiver answers is what it wrote.
* ``tftp-window.svg``: a download with windowsize 4 from the real
  ``TFTPServerProtocol`` by the real ``filexfer.tftp.download`` over
  :class:`filexfer.testing.FakeUDPNetwork`, where the first DATA 3 is lost:
  every datagram drawn is one that was sent, decoded by ``tftp._packets``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Step:
    """One row of a sequence diagram.

    kind: "right" (left actor to right), "left", "lost-right", "lost-left",
    "cut" (the connection breaks), "note".
    """

    kind: str
    text: str


def _shorten(line: bytes, limit: int = 52) -> str:
    text = line.decode("utf-8", "replace").rstrip("\n")
    parts = text.split(" ")
    shown = " ".join(p if len(p) <= 20 else p[:8] + "…" + p[-4:] for p in parts)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def record_resumed_upload() -> list[Step]:
    """Cut an FX/1 upload of 1 MiB after 384 KiB, then resume it: what each side says."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionLost
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from filexfer import DirectoryStorage, ReceiverFactory
    from filexfer.tcp import _wire

    data = bytes(range(256)) * 4096
    digest = hashlib.sha256(data).hexdigest()
    cut_at = 384 * 1024
    request = _wire.PutRequest(
        "logs/big.bin", size=len(data), mtime_ns=1_700_000_000 * 10**9, trailer=True
    )
    steps: list[Step] = []
    with tempfile.TemporaryDirectory() as root:
        factory = ReceiverFactory(DirectoryStorage(root), clock=Clock())

        def connect() -> tuple[object, StringTransport]:
            peer = IPv4Address("TCP", "127.0.0.1", 40000 + len(steps))
            protocol = factory.buildProtocol(peer)
            transport = StringTransport(peerAddress=peer)
            protocol.makeConnection(transport)
            return protocol, transport

        def answers(transport: StringTransport) -> None:
            for line in transport.value().splitlines(keepends=True):
                steps.append(Step("left", _shorten(line)))
            transport.clear()
            if transport.disconnecting:
                steps.append(Step("left", "FIN (the receiver closes its side)"))

        def say(protocol: object, payload: bytes, shown: str) -> None:
            steps.append(Step("right", shown))
            protocol.dataReceived(payload)  # type: ignore[attr-defined]

        header = _wire.encode_put(request)
        first, transport = connect()
        steps.append(Step("note", "first attempt"))
        say(first, header, " / ".join(_shorten(line, 40) for line in header.splitlines() if line))
        answers(transport)
        say(first, data[:cut_at], f"bytes [0, {cut_at})")
        steps.append(Step("cut", "the connection is cut: the receiver keeps the partial"))
        first.connectionLost(Failure(ConnectionLost()))  # type: ignore[attr-defined]
        answers(transport)

        second, transport = connect()
        steps.append(Step("note", "second attempt: the same request"))
        say(second, header, " / ".join(_shorten(line, 40) for line in header.splitlines() if line))
        answers(transport)
        offset = _held_offset(steps)
        steps.append(Step("note", f"the sender hashes its first {offset} bytes: they match"))
        say(second, data[offset:], f"bytes [{offset}, {len(data)})")
        say(second, _wire.encode_trailer(digest), _shorten(_wire.encode_trailer(digest)))
        answers(transport)
        steps.append(Step("right", "FIN: the sender checked done and closes"))
    return steps


def _held_offset(steps: list[Step]) -> int:
    """The offset of the last C{ok} the receiver wrote."""
    for step in reversed(steps):
        if step.kind == "left" and step.text.startswith("ok "):
            return int(step.text.split()[1])
    raise AssertionError("the receiver did not answer ok")


def record_lost_block() -> list[Step]:
    """A windowed TFTP download (blksize 512, windowsize 4) whose first DATA 3 is lost."""
    from filexfer.testing import FakeUDPNetwork, MemoryStorage
    from filexfer.tftp import _packets
    from filexfer.tftp.client import download
    from filexfer.tftp.server import TFTPServerProtocol

    network = FakeUDPNetwork(latency=0.001)
    storage = MemoryStorage()
    storage.files["boot/pxelinux.0"] = os.urandom(512 * 9 + 100)
    server = TFTPServerProtocol(storage=storage, reactor=network)
    port = network.listenUDP(0, server, interface="127.0.0.1")
    steps: list[Step] = []
    lost: list[bytes] = []

    def watch(source: tuple[str, int], target: tuple[str, int], datagram: bytes) -> bool:
        packet = _packets.decode(datagram)
        text = _describe(packet, datagram)
        to_server = target[1] != client_port[0] if client_port else True
        drop = text.startswith("DATA 3 ") and not lost
        if drop:
            lost.append(datagram)
        kind = ("lost-" if drop else "") + ("right" if to_server else "left")
        steps.append(Step(kind, text))
        return drop

    client_port: list[int] = []
    original_listen = network.listenUDP

    def listen(number: int, protocol: object, interface: str = "", maxPacketSize: int = 8192):  # noqa: N803
        opened = original_listen(number, protocol, interface, maxPacketSize)  # type: ignore[arg-type]
        if not client_port and opened is not port:
            client_port.append(opened.number)
        return opened

    network.listenUDP = listen  # type: ignore[method-assign]
    network.drop = watch
    with tempfile.TemporaryDirectory() as folder:
        result = download(
            network,
            "127.0.0.1",
            port.number,
            "boot/pxelinux.0",
            os.path.join(folder, "pxelinux.0"),
            blksize=512,
            windowsize=4,
            timeout=1.0,
        )
        network.run_until(result, limit=60)
        received: list[object] = []
        result.addBoth(received.append)
        if received != [len(storage.files["boot/pxelinux.0"])]:
            raise AssertionError(f"the recorded download failed: {received}")
    return steps


def _describe(packet: object, datagram: bytes) -> str:
    """One datagram as a line: its opcode, block or options."""
    opcode = int.from_bytes(datagram[:2], "big")
    if opcode == 3:
        return f"DATA {int.from_bytes(datagram[2:4], 'big')} ({len(datagram) - 4} bytes)"
    if opcode == 4:
        return f"ACK {int.from_bytes(datagram[2:4], 'big')}"
    if opcode in (1, 2):
        parts = datagram[2:].split(b"\0")
        options = " ".join(
            f"{k.decode()}={v.decode()}" for k, v in zip(parts[2:-1:2], parts[3:-1:2], strict=False)
        )
        return f"{'RRQ' if opcode == 1 else 'WRQ'} {parts[0].decode()} {options}".strip()
    if opcode == 6:
        parts = datagram[2:].split(b"\0")
        return "OACK " + " ".join(
            f"{k.decode()}={v.decode()}" for k, v in zip(parts[0:-1:2], parts[1:-1:2], strict=False)
        )
    return type(packet).__name__


def draw(steps: list[Step], actors: tuple[str, str], title: str, path: str) -> None:
    """Draw C{steps} between two lifelines into the SVG at C{path}."""
    row = 0.42
    height = 1.2 + row * len(steps)
    figure, axes = plt.subplots(figsize=(8.6, height))
    left, right = 0.18, 0.82
    top = len(steps) + 0.6
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.6, top + 0.6)
    axes.axis("off")
    for x, name in zip((left, right), actors, strict=False):
        axes.plot([x, x], [-0.4, top - 0.2], color="#999999", linewidth=1, zorder=0)
        axes.text(
            x,
            top,
            name,
            ha="center",
            va="center",
            fontsize=10,
            weight="bold",
            bbox={"boxstyle": "round", "facecolor": "#eeeeee", "edgecolor": "#888888"},
        )
    for index, step in enumerate(steps):
        y = len(steps) - 1 - index
        if step.kind == "note":
            axes.text(
                0.5,
                y,
                step.text,
                ha="center",
                va="center",
                fontsize=8.5,
                style="italic",
                color="#555555",
                bbox={"boxstyle": "round", "facecolor": "#fffbe6", "edgecolor": "#e0c060"},
            )
            continue
        if step.kind == "cut":
            axes.plot([left, right], [y, y], color="#c62828", linewidth=1.5, linestyle=(0, (2, 2)))
            axes.text(
                0.5,
                y + 0.12,
                "✂ " + step.text,
                ha="center",
                va="bottom",
                fontsize=8.5,
                color="#c62828",
            )
            continue
        rightward = step.kind.endswith("right")
        start, end = (left, right) if rightward else (right, left)
        lost = step.kind.startswith("lost")
        if lost:
            end = start + (end - start) * 0.6
        color = "#c62828" if lost else ("#1f5fa8" if rightward else "#2e7d32")
        axes.annotate(
            "",
            xy=(end, y),
            xytext=(start, y),
            arrowprops={"arrowstyle": "-|>" if not lost else "-", "color": color, "linewidth": 1.2},
        )
        if lost:
            axes.text(end, y, "✗", ha="center", va="center", fontsize=12, color=color)
        label = step.text + ("  (lost)" if lost else "")
        axes.text(
            (left + right) / 2,
            y + 0.07,
            label,
            ha="center",
            va="bottom",
            fontsize=8,
            family="monospace",
            color=color,
        )
    axes.set_title(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def draw_all(folder: str) -> None:
    """Record and draw both sequences into C{folder}."""
    draw(
        record_resumed_upload(),
        ("filexfer send", "twistd filexfer"),
        "FX/1: an upload cut after 384 KiB, then resumed",
        os.path.join(folder, "fx1-resume.svg"),
    )
    draw(
        record_lost_block(),
        ("filexfer get", "TFTP server"),
        "TFTP, windowsize 4: the first DATA 3 is lost",
        os.path.join(folder, "tftp-window.svg"),
    )
