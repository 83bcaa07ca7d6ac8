"""TLS end to end: twistd listening on an ssl: endpoint, `filexfer send --tls` verifying it.

The certificates are made at test time: a throw-away authority and a server
certificate for 127.0.0.1 and localhost.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial import unittest

from tests.helpers import (
    LOOPBACK,
    ServerProcess,
    payload,
    run_filexfer,
    sha256_file,
    twistd_command,
    visible_files,
    write_file,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificates(folder: str, names: list[x509.GeneralName]) -> tuple[str, str, str]:
    """Write an authority and a server key + certificate for C{names}.

    @return: paths of (authority certificate, server key, server certificate).
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("filexfer test CA"))
        .issuer_name(_name("filexfer test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("filexfer test server"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    os.makedirs(folder, exist_ok=True)
    paths = tuple(os.path.join(folder, n) for n in ("ca.pem", "server.key", "server.pem"))
    contents = (
        ca_cert.public_bytes(serialization.Encoding.PEM),
        _pem_key(server_key),
        server_cert.public_bytes(serialization.Encoding.PEM),
    )
    for path, content in zip(paths, contents, strict=True):
        with open(path, "wb") as handle:
            handle.write(content)
    return paths[0], paths[1], paths[2]


class TLSTests(unittest.TestCase):
    def start_tls_server(self, names: list[x509.GeneralName]) -> tuple[ServerProcess, str, str]:
        """twistd filexfer on an ssl: endpoint; returns (server, root, CA path)."""
        base = os.path.abspath(self.mktemp())
        ca, key, cert = make_certificates(os.path.join(base, "pki"), names)
        root = os.path.join(base, "root")
        listen = f"ssl:0:interface={LOOPBACK}:privateKey={key}:certKey={cert}"
        server = ServerProcess(
            twistd_command("filexfer", "--listen", listen, "--no-tftp", "--root", root),
            cwd=base,
        )
        self.addCleanup(server.stop)
        match = server.log.wait_for(r"listening for TCP on \S+:(\d+)")
        server.port = int(match.group(1))
        return server, root, ca

    def local_file(self, size: int = 3 * 1024 * 1024) -> str:
        """A file of C{size} pseudo-random bytes."""
        return write_file(os.path.join(os.path.abspath(self.mktemp()), "secret.bin"), payload(size))

    def test_verified_tls_upload(self) -> None:
        """`send --tls --cacert` to an ssl: endpoint stores the file intact, verified."""
        server, root, ca = self.start_tls_server(
            [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
        )
        source = self.local_file()
        result = run_filexfer(
            "send", "--tls", "--cacert", ca, "--no-progress", source, f"{LOOPBACK}:{server.port}"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(visible_files(root), ["secret.bin"])
        self.assertEqual(sha256_file(os.path.join(root, "secret.bin")), sha256_file(source))

    def test_host_name_checked(self) -> None:
        """A certificate for another host name is refused: exit 1, one line, nothing stored."""
        server, root, ca = self.start_tls_server([x509.DNSName("other.example")])
        result = run_filexfer(
            "send", "--tls", "--cacert", ca, "--no-progress", self.local_file(1024),
            f"{LOOPBACK}:{server.port}",
        )  # fmt: skip
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertEqual(visible_files(root), [])

    def test_untrusted_authority_refused(self) -> None:
        """Without --cacert the test authority is not trusted: exit 1, nothing stored."""
        server, root, _ = self.start_tls_server([x509.IPAddress(ipaddress.ip_address(LOOPBACK))])
        result = run_filexfer(
            "send", "--tls", "--no-progress", self.local_file(1024), f"{LOOPBACK}:{server.port}"
        )
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(visible_files(root), [])

    def test_cacert_needs_tls(self) -> None:
        """--cacert without --tls is a usage mistake (exit 2)."""
        result = run_filexfer("send", "--cacert", "ca.pem", self.local_file(10), "127.0.0.1:1")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--cacert goes with --tls", result.stderr)
