"""The fleet features of the TFTP server on a fake UDP network: remap, quirks, port range,
single-port mode, read sources and per-client roots."""

from __future__ import annotations

import io
import os
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from filexfer._errors import TransferError
from filexfer.storage import FileSource, IReadSource
from filexfer.testing import FakeUDPPort
from filexfer.tftp import _packets as p
from filexfer.tftp._neighbours import NeighbourTable
from filexfer.tftp._portrange import PortRange
from filexfer.tftp._quirks import QuirksPolicy
from filexfer.tftp._remap import parse_rules
from filexfer.tftp.sources import ClientRootSource, ITFTPSource, RootSource
from tests.test_tftp_server import CLIENT, OTHER, Harness


def _events(test: unittest.TestCase) -> list[LogEvent]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def _read_all(h: Harness, port: FakeUDPPort, client: tuple[str, int] = CLIENT) -> bytes:
    """Play a client that ACKs every DATA block (windowsize 1, blksize 512) to the end."""
    data = b""
    for _ in range(1000):
        packets = h.take(port, client)
        if not packets:
            break
        (packet,) = packets
        assert isinstance(packet, p.Data), packet
        data += packet.payload
        h.send(port, p.Ack(packet.block), client)
        if len(packet.payload) < 512:
            break
    return data


class RemapTests(unittest.TestCase):
    """--tftp-remap: names go through the rules, then the root's rules."""

    def test_remapped_read(self) -> None:
        """A Windows-style name is served from the remapped path; the log shows the new name."""
        h = Harness(self, remap=parse_rules(r"ri ^[a-z]: " + "\n" + r"rg \\ /" + "\n"))
        os.makedirs(os.path.join(h.root, "boot"))
        h.put_file("boot/pxelinux.0", b"pxe")
        port = h.request(p.ReadRequest(b"C:boot\\pxelinux.0", "octet"))
        assert port is not None
        self.assertEqual(_read_all(h, port), b"pxe")

    def test_client_address_rule(self) -> None:
        """\\i puts the client's address in the name (a configuration per machine)."""
        h = Harness(self, remap=parse_rules(r"r ^config$ hosts/\i.cfg" + "\n"))
        os.makedirs(os.path.join(h.root, "hosts"))
        h.put_file("hosts/127.0.0.1.cfg", b"mine")
        port = h.request(p.ReadRequest(b"config", "octet"))
        assert port is not None
        self.assertEqual(_read_all(h, port), b"mine")

    def test_refused_by_rule(self) -> None:
        """An a rule refuses with ERROR 2 and its message."""
        h = Harness(self, remap=parse_rules(r"a \.key$ no\ keys\ here" + "\n"))
        h.put_file("host.key", b"secret")
        self.assertIsNone(h.request(p.ReadRequest(b"host.key", "octet")))
        self.assertEqual(h.take(h.main), [p.Error(p.ACCESS_VIOLATION, "no keys here")])

    def test_remapped_outside_the_root(self) -> None:
        """A name remapped to ../ is refused by the root rules (ERROR 2), for reads and writes."""
        h = Harness(self, remap=parse_rules(r"r ^ ../" + "\n"))
        self.assertIsNone(h.request(p.ReadRequest(b"etc/passwd", "octet")))
        self.assertIsNone(h.request(p.WriteRequest(b"x", "octet"), client=OTHER))
        self.assertEqual([e.code for e in h.take(h.main)], [p.ACCESS_VIOLATION])
        self.assertEqual([e.code for e in h.take(h.main, OTHER)], [p.ACCESS_VIOLATION])  # type: ignore[union-attr]
        self.assertEqual(os.listdir(os.path.dirname(h.root)), [os.path.basename(h.root)])

    def test_remapped_from_the_root(self) -> None:
        """The rules see the leading / a client sent; a result with one is read from the root."""
        rules = r"r ^/tftpboot/ /" + "\n" + r"rg \\ /" + "\n"
        h = Harness(self, remap=parse_rules(rules))
        events = _events(self)
        os.makedirs(os.path.join(h.root, "boot"))
        h.put_file("boot/pxelinux.0", b"pxe")
        for name, client in (
            (b"/tftpboot/boot/pxelinux.0", CLIENT),
            (b"\\boot\\pxelinux.0", OTHER),
        ):
            port = h.request(p.ReadRequest(name, "octet"), client=client)
            assert port is not None, name
            self.assertEqual(_read_all(h, port, client), b"pxe")
        paths = [e["path"] for e in events if e.get("protocol") == "tftp-rrq"]
        self.assertEqual(paths, ["boot/pxelinux.0", "boot/pxelinux.0"])
        port = h.request(p.WriteRequest(b"\\boot\\up.txt", "octet"), client=("127.0.0.1", 50002))
        assert port is not None
        h.send(port, p.Data(1, b"up"), ("127.0.0.1", 50002))
        self.assertEqual(h.stored("boot/up.txt"), b"up")

    def test_remapped_from_the_root_outside_it(self) -> None:
        """A result like /../x is still outside the root: ERROR 2, nothing read or written."""
        h = Harness(self, remap=parse_rules(r"r ^ /../" + "\n"))
        self.assertIsNone(h.request(p.ReadRequest(b"etc/passwd", "octet")))
        self.assertIsNone(h.request(p.WriteRequest(b"x", "octet"), client=OTHER))
        self.assertEqual([e.code for e in h.take(h.main)], [p.ACCESS_VIOLATION])  # type: ignore[union-attr]
        self.assertEqual([e.code for e in h.take(h.main, OTHER)], [p.ACCESS_VIOLATION])  # type: ignore[union-attr]
        self.assertEqual(os.listdir(os.path.dirname(h.root)), [os.path.basename(h.root)])

    def test_slow_regex_refused_others_go_on(self) -> None:
        """A catastrophic regex gives ERROR 2 within the budget; another client is served."""
        h = Harness(self, remap=parse_rules("r ^(a|aa)+$ x\n"))
        h.put_file("ok", b"fine")
        self.assertIsNone(h.request(p.ReadRequest(b"a" * 40 + b"!", "octet")))
        (error,) = h.take(h.main)
        assert isinstance(error, p.Error)
        self.assertEqual(error.code, p.ACCESS_VIOLATION)
        self.assertIn("remap rules gave up", error.message)
        port = h.request(p.ReadRequest(b"ok", "octet"), client=OTHER)
        assert port is not None
        self.assertEqual(_read_all(h, port, OTHER), b"fine")

    def test_put_rule(self) -> None:
        """A P rule applies to uploads only: uploads land in incoming/."""
        h = Harness(self, remap=parse_rules("rP ^ incoming/\n"))
        os.makedirs(os.path.join(h.root, "incoming"))
        port = h.request(p.WriteRequest(b"log.txt", "octet"))
        assert port is not None
        h.send(port, p.Data(1, b"hello"))
        self.assertEqual(h.stored("incoming/log.txt"), b"hello")


class QuirksTests(unittest.TestCase):
    """--tftp-quirks: options refused and caps, for the client's network only."""

    def test_refused_and_logged(self) -> None:
        """A refused blksize is left out of the OACK; the log line shows the stats."""
        events = _events(self)
        policy = QuirksPolicy.parse(["127.0.0.0/8 refuse=blksize windowsize=2"])
        h = Harness(self, quirks=policy)
        h.put_file("f", b"x" * 10)
        port = h.request(p.ReadRequest(b"f", "octet", (("blksize", "1400"), ("windowsize", "8"))))
        assert port is not None
        self.assertEqual(h.take(port), [p.OptionAck((("windowsize", "2"),))])
        h.send(port, p.Ack(0))
        self.assertEqual(_read_all(h, port), b"x" * 10)
        (logged,) = [e for e in events if e.get("protocol") == "tftp-rrq"]
        self.assertEqual(logged["stats"], "blksize 512, windowsize 2, refused blksize")

    def test_other_networks_untouched(self) -> None:
        """A client outside the rule's network gets the blksize it asked for."""
        h = Harness(self, quirks=QuirksPolicy.parse(["10.0.0.0/8 mtu=576"]))
        h.put_file("f", b"x")
        port = h.request(p.ReadRequest(b"f", "octet", (("blksize", "1400"),)))
        assert port is not None
        self.assertEqual(h.take(port), [p.OptionAck((("blksize", "1400"),))])


class PortRangeTests(unittest.TestCase):
    """--tftp-port-range: transfer ports from the range; a full range is an ERROR at once."""

    def test_ports_in_range_then_exhausted(self) -> None:
        """Two transfers take both ports; the third client gets ERROR 0 saying why."""
        events = _events(self)
        h = Harness(self, ports=PortRange(41000, 41001))
        h.put_file("f", b"x" * 600)
        ports = [h.request(p.ReadRequest(b"f", "octet"), client=("127.0.0.1", n)) for n in (1, 2)]
        self.assertEqual(sorted(port.number for port in ports if port), [41000, 41001])
        self.assertIsNone(h.request(p.ReadRequest(b"f", "octet"), client=("127.0.0.1", 3)))
        (error,) = h.take(h.main, ("127.0.0.1", 3))
        self.assertEqual(
            error, p.Error(0, "all 2 transfer ports (41000:41001) are in use; try again later")
        )
        self.assertTrue(
            any("refused: all 2 transfer ports" in str(e.get("outcome")) for e in events)
        )
        # the first transfer ends: its number is free for the next request
        assert ports[0] is not None
        self.assertEqual(_read_all(h, ports[0], ("127.0.0.1", 1)), b"x" * 600)
        again = h.request(p.ReadRequest(b"f", "octet"), client=("127.0.0.1", 4))
        assert again is not None
        self.assertEqual(again.number, ports[0].number)


class SinglePortTests(unittest.TestCase):
    """--tftp-single-port: every reply from the listening port, routed by client address."""

    def test_replies_from_the_listening_port(self) -> None:
        """Two clients read at once; no transfer port is opened; each gets its own file."""
        h = Harness(self, single_port=True)
        h.put_file("a", b"A" * 700)
        h.put_file("b", b"B" * 300)
        self.assertIsNone(h.request(p.ReadRequest(b"a", "octet")))
        self.assertIsNone(h.request(p.ReadRequest(b"b", "octet"), client=OTHER))
        self.assertEqual(len(h.reactor.ports), 1)  # only the listening port, ever
        self.assertEqual(h.take(h.main, OTHER), [p.Data(1, b"B" * 300)])
        self.assertEqual(_read_all(h, h.main), b"A" * 700)
        h.send(h.main, p.Ack(1), OTHER)
        self.assertEqual(h.server.routes, {})

    def test_upload_and_repeated_request(self) -> None:
        """A WRQ works too; a repeated request is not a second transfer; a new one after it is."""
        h = Harness(self, single_port=True)
        wrq = p.WriteRequest(b"up.bin", "octet")
        h.request(wrq)
        h.request(wrq)
        self.assertEqual(h.take(h.main), [p.Ack(0)])
        h.send(h.main, p.Data(1, b"data"))
        self.assertEqual(h.take(h.main), [p.Ack(1)])
        self.assertEqual(h.stored("up.bin"), b"data")
        h.put_file("r", b"read")
        h.request(p.ReadRequest(b"r", "octet"))  # same client port, while the WRQ lingers
        self.assertEqual(_read_all(h, h.main), b"read")

    def test_drain_keeps_transfers_drops_requests(self) -> None:
        """Draining: the listening port still carries running transfers; new requests wait
        for the next server (dropped here: the client sends them again)."""
        h = Harness(self, single_port=True)
        h.put_file("a", b"A" * 700)
        self.assertIsNone(h.request(p.ReadRequest(b"a", "octet")))
        h.server.pause_requests()
        self.assertEqual(h.server.in_progress(), 1)
        self.assertIsNone(h.request(p.ReadRequest(b"a", "octet"), client=OTHER))
        self.assertEqual(h.take(h.main, OTHER), [])
        self.assertEqual(_read_all(h, h.main), b"A" * 700)
        self.assertEqual(h.server.in_progress(), 0)

    def test_stranger_is_a_request(self) -> None:
        """A DATA from an address without a transfer is not routed anywhere (ERROR 4)."""
        h = Harness(self, single_port=True)
        h.send(h.main, p.Data(1, b"x"), OTHER)
        (error,) = h.take(h.main, OTHER)
        self.assertEqual(error.code, p.ILLEGAL_OPERATION)  # type: ignore[union-attr]


@implementer(ITFTPSource)
class ScriptSource:
    """An iPXE script made for the client asking (the docs' example)."""

    def open(self, path: str, client: Any, server: Any) -> Deferred[IReadSource | None]:
        if path != "boot.ipxe":
            return succeed(None)
        script = f"#!ipxe\necho hello {client[0]} via {server[1]}\n".encode()
        return succeed(FileSource(io.BytesIO(script), len(script)))


@implementer(ITFTPSource)
class BrokenSource:
    def __init__(self, result: Deferred[IReadSource | None]) -> None:
        self.result = result

    def open(self, path: str, client: Any, server: Any) -> Deferred[IReadSource | None]:
        return self.result


class SourceTests(unittest.TestCase):
    """The read-source chain."""

    def test_generated_then_root(self) -> None:
        """The first source answers its path; other paths fall through to the root."""
        h = Harness(self)
        h.server.sources = [ScriptSource(), RootSource(h.storage)]
        h.put_file("other", b"from root")
        port = h.request(p.ReadRequest(b"boot.ipxe", "octet", (("tsize", "0"),)))
        assert port is not None
        script = b"#!ipxe\necho hello 127.0.0.1 via 69\n"
        self.assertEqual(h.take(port), [p.OptionAck((("tsize", str(len(script))),))])
        h.send(port, p.Ack(0))
        self.assertEqual(_read_all(h, port), script)
        port = h.request(p.ReadRequest(b"other", "octet"), client=OTHER)
        assert port is not None
        self.assertEqual(_read_all(h, port, OTHER), b"from root")

    def test_nobody_has_it(self) -> None:
        """No source has the file: ERROR 1."""
        h = Harness(self)
        h.server.sources = [ScriptSource()]
        h.request(p.ReadRequest(b"nothing", "octet"))
        self.assertEqual([e.code for e in h.take(h.main)], [p.FILE_NOT_FOUND])  # type: ignore[union-attr]

    def test_failing_source(self) -> None:
        """A source that fails: ERROR 0, logged with the source; the next request is served."""
        h = Harness(self)
        h.server.sources = [BrokenSource(fail(RuntimeError("backend down"))), RootSource(h.storage)]
        h.request(p.ReadRequest(b"f", "octet"))
        self.assertEqual(h.take(h.main), [p.Error(0, "the file's source failed")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_refusing_source(self) -> None:
        """A source that raises TransferError refuses: its code, its reason; the chain stops."""
        h = Harness(self)
        h.put_file("f", b"x")
        h.server.sources = [
            BrokenSource(fail(TransferError(403, "not for you"))),
            RootSource(h.storage),
        ]
        h.request(p.ReadRequest(b"f", "octet"))
        self.assertEqual(h.take(h.main), [p.Error(p.ACCESS_VIOLATION, "not for you")])

    def test_slow_source_times_out_others_go_on(self) -> None:
        """A source that never answers: ERROR 0 after source_timeout; others are served."""
        h = Harness(self, source_timeout=5.0)
        h.put_file("f", b"x")
        never: Deferred[IReadSource | None] = Deferred()
        slow = BrokenSource(never)
        h.server.sources = [slow, RootSource(h.storage)]
        h.request(p.ReadRequest(b"slow", "octet"))
        h.server.sources = [RootSource(h.storage)]
        port = h.request(p.ReadRequest(b"f", "octet"), client=OTHER)
        assert port is not None
        self.assertEqual(_read_all(h, port, OTHER), b"x")
        h.reactor.advance(5.0)
        self.assertEqual(h.take(h.main), [p.Error(0, "the file's source did not answer in time")])


class PerClientRootTests(unittest.TestCase):
    """--tftp-per-client-root: the client's directory first, then the shared root."""

    def test_ip(self) -> None:
        """ROOT/127.0.0.1/x is served to 127.0.0.1; y (only shared) from the root."""
        h = Harness(self)
        h.server.sources = [ClientRootSource(h.storage, "ip", NeighbourTable(h.reactor))]  # type: ignore[arg-type]
        os.makedirs(os.path.join(h.root, "127.0.0.1"))
        h.put_file("127.0.0.1/x", b"own")
        h.put_file("x", b"shared x")
        h.put_file("y", b"shared y")
        port = h.request(p.ReadRequest(b"x", "octet"))
        assert port is not None
        self.assertEqual(_read_all(h, port), b"own")
        port = h.request(p.ReadRequest(b"y", "octet"), client=OTHER)
        assert port is not None
        self.assertEqual(_read_all(h, port, OTHER), b"shared y")

    def test_other_clients_directories_refused(self) -> None:
        """Fresh-eyes finding on issue 13: through the shared root, one client could read
        another's directory (ROOT/127.0.0.3/who.txt asked as 127.0.0.3/who.txt); a
        path into any per-client directory (an address, or a MAC as dnsmasq writes it)
        is refused with ERROR 2, its own included; other transfers carry on."""
        h = Harness(self)
        h.server.sources = [ClientRootSource(h.storage, "ip", NeighbourTable(h.reactor))]  # type: ignore[arg-type]
        for key in ("127.0.0.3", "127.0.0.1", "fd00::3", "52-54-00-ab-cd-ef"):
            os.makedirs(os.path.join(h.root, key))
            h.put_file(f"{key}/who.txt", key.encode())
        h.put_file("shared.txt", b"shared")
        for name in (
            b"127.0.0.3/who.txt",
            b"/127.0.0.3/who.txt",
            b"127.0.0.1/who.txt",
            b"fd00::3/who.txt",
            b"52-54-00-AB-CD-EF/who.txt",
        ):
            self.assertIsNone(h.request(p.ReadRequest(name, "octet")), name)
            (error,) = h.take(h.main)
            self.assertIsInstance(error, p.Error)
            self.assertEqual(error.code, 2, name)  # type: ignore[attr-defined]
        port = h.request(p.ReadRequest(b"shared.txt", "octet"), client=OTHER)
        assert port is not None
        self.assertEqual(_read_all(h, port, OTHER), b"shared")

    def test_mac(self) -> None:
        """mac: the directory named after the MAC the neighbour table gives."""
        h = Harness(self)
        arp = "IP address HW type Flags HW address Mask Device\n"
        arp += "127.0.0.1 0x1 0x2 52:54:00:AB:CD:EF * lo\n"
        table = NeighbourTable(h.reactor, read_arp=lambda: arp)  # type: ignore[arg-type]
        h.server.sources = [ClientRootSource(h.storage, "mac", table)]
        os.makedirs(os.path.join(h.root, "52-54-00-ab-cd-ef"))
        h.put_file("52-54-00-ab-cd-ef/x", b"by mac")
        port = h.request(p.ReadRequest(b"x", "octet"))
        assert port is not None
        self.assertEqual(_read_all(h, port), b"by mac")


class TemplateSourceTests(unittest.TestCase):
    """template_source: --tftp-source filexfer.tftp.sources:template_source=NAME:FILE."""

    def test_rendered_per_client(self) -> None:
        """The template is filled with the client's and the server's addresses."""
        from filexfer.tftp.sources import template_source

        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("#!ipxe\nchain http://{server}/hosts/{client}.ipxe  # {{braces}}\n")
        source = template_source(None, f"boot.ipxe:{path}")
        readable = self.successResultOf(
            source.open("/boot.ipxe", ("::ffff:10.0.0.7", 9), ("10.0.0.1", 69))
        )
        assert readable is not None
        self.assertEqual(
            self.successResultOf(readable.read(1000)),
            b"#!ipxe\nchain http://10.0.0.1/hosts/10.0.0.7.ipxe  # {braces}\n",
        )
        self.assertIsNone(
            self.successResultOf(source.open("other", ("10.0.0.7", 9), ("10.0.0.1", 69)))
        )

    def test_bad_template_at_start(self) -> None:
        """A template naming an unknown field, or no NAME:FILE, fails when the source is made."""
        from filexfer.tftp.sources import template_source

        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("{hostname}")
        self.assertRaises(ValueError, template_source, None, f"boot.ipxe:{path}")
        self.assertRaises(ValueError, template_source, None, "boot.ipxe")
