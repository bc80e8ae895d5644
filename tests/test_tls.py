"""Encrypted on the wire: `fhir-node serve` over HTTPS (TLS 1.2+, optional client certificates), the start-up
refusals that keep tokens off plain HTTP, and trusting X-Forwarded-* from the TLS proxies only.
Every server here listens on 127.0.0.1; the 0.0.0.0 cases must exit before binding (their database is unusable,
so even a node that failed to refuse could not get as far as listening)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from live_node import serve_node

from fhir_node.cli import startup_problem, tls_problem, uvicorn_proxy_options
from fhir_node.settings import Settings

JWT = {"auth": "jwt", "jwt_jwks": '{"keys": []}', "jwt_issuer": "https://idp.test", "jwt_audience": "https://n.test"}


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A CA, the node's certificate (IP SAN 127.0.0.1), a client it signed, and a stranger who signed itself."""

    ca: Path
    server: KeyPair
    client: KeyPair
    stranger: KeyPair

    def trust(self, client: KeyPair | None = None) -> ssl.SSLContext:
        """A client context that trusts the CA, presenting `client` when given."""
        context = ssl.create_default_context(cafile=self.ca)
        if client:
            context.load_cert_chain(client.cert, client.key)
        return context


def _issue(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A certificate for `name`, signed by `issuer` (a CA when there is none: self-signed)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True)
    )
    if usage is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("fhir-node test CA", ca_key)
    ca = (ca_cert.subject, ca_key)
    pairs = {}
    for name, usage, issuer in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, ca),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, ca),
        ("stranger", ExtendedKeyUsageOID.CLIENT_AUTH, None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        pairs[name] = _write(directory, name, _issue(name, key, issuer, usage), key)
    return Pki(ca=_write(directory, "ca", ca_cert, ca_key).cert, **pairs)


@pytest.fixture(scope="module")
def tls_base(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The FHIR base of a node serving HTTPS, asking clients for a certificate from the test CA."""
    directory = tmp_path_factory.mktemp("tls-node")
    tls = ["--ssl-certfile", str(pki.server.cert), "--ssl-keyfile", str(pki.server.key), "--ssl-ca-certs", str(pki.ca)]
    env = {"FHIR_NODE_AUTH": "none", "FHIR_NODE_TLS_PROXY": ""}
    with serve_node(f"sqlite:///{directory / 'fhir-node.db'}", directory, env, args=tls, verify=pki.trust()) as base:
        yield base


def _handshake(base: str, context: ssl.SSLContext) -> str | None:
    """A bare TLS handshake with the node; the protocol version agreed."""
    url = httpx.URL(base)
    with (
        socket.create_connection((url.host, url.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=url.host) as tls,
    ):
        return tls.version()


def test_metadata_over_https_without_a_client_certificate(tls_base: str, pki: Pki) -> None:
    response = httpx.get(f"{tls_base}/metadata", verify=pki.trust())
    assert response.status_code == 200
    assert response.json()["implementation"]["url"] == tls_base  # the node knows it is reached over https


def test_plain_http_to_the_tls_port_fails(tls_base: str) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_base.replace("https://", "http://", 1) + "/metadata", timeout=5)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    ("version", "agreed"),
    [
        (ssl.TLSVersion.TLSv1, None),
        (ssl.TLSVersion.TLSv1_1, None),
        (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
        (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
    ],
    ids=["TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3"],
)
def test_tls_1_2_at_least(tls_base: str, pki: Pki, version: ssl.TLSVersion, agreed: str | None) -> None:
    """A client willing to speak anything from TLS 1.0 up to `version` (old ciphers included)."""
    context = pki.trust()
    context.minimum_version, context.maximum_version = ssl.TLSVersion.TLSv1, version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if agreed:
        assert _handshake(tls_base, context) == agreed
        return
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(tls_base, context)
    # The node's alert, or its hanging up (uvloop does not flush the alert); not the client failing to offer
    # the old protocol at all (NO_PROTOCOLS_AVAILABLE), which would make this test prove nothing.
    assert refused.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLS1.2", "TLS1.3"])
def test_client_certificates_are_verified(tls_base: str, pki: Pki, version: ssl.TLSVersion) -> None:
    """One from the CA is accepted; a self-signed one is refused (in TLS 1.3, after the client's handshake)."""
    accepted, refused = pki.trust(pki.client), pki.trust(pki.stranger)
    accepted.maximum_version = refused.maximum_version = version
    assert httpx.get(f"{tls_base}/metadata", verify=accepted).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{tls_base}/metadata", verify=refused)


@pytest.fixture(
    scope="module",
    params=[(["--tls-proxy", "127.0.0.1"], {}, True), ([], {"FHIR_NODE_TLS_PROXY": "192.0.2.1, 10.0.0.0/8"}, False)],
    ids=["127.0.0.1-listed-by-flag", "127.0.0.1-not-listed-in-env"],
)
def proxied(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bool]]:
    """A plain-HTTP node behind TLS proxies, and whether our 127.0.0.1 connections come from one of them."""
    args, env, trusted = request.param
    directory = tmp_path_factory.mktemp("proxied-node")
    with serve_node(
        f"sqlite:///{directory / 'fhir-node.db'}", directory, {"FHIR_NODE_AUTH": "none", **env}, args=args
    ) as base:
        yield base, trusted


def test_forwarded_headers_are_trusted_from_the_tls_proxies_only(proxied: tuple[str, bool]) -> None:
    base, trusted = proxied
    # The auth-none node serves loopback clients only: a trusted X-Forwarded-For from outside is refused.
    outside = httpx.get(f"{base}/metadata", headers={"X-Forwarded-For": "203.0.113.7"})
    assert outside.status_code == (403 if trusted else 200)
    # A trusted X-Forwarded-Proto makes the node's own links https.
    url = httpx.get(f"{base}/metadata", headers={"X-Forwarded-Proto": "https"}).json()["implementation"]["url"]
    assert url.split("://")[0] == ("https" if trusted else "http")


def test_without_tls_proxies_nobody_s_forwarded_headers_are_trusted() -> None:
    assert uvicorn_proxy_options(Settings(tls_proxy=None)) == {"proxy_headers": False}
    assert uvicorn_proxy_options(Settings(tls_proxy=" 127.0.0.1, 10.0.0.0/8 ")) == {
        "proxy_headers": True,
        "forwarded_allow_ips": ["127.0.0.1", "10.0.0.0/8"],
    }


def _serve(tmp_path: Path, host: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m fhir_node serve` with only these FHIR_NODE_* settings and a database it cannot create."""
    (tmp_path / "a-file").touch()
    clean = {name: value for name, value in os.environ.items() if not name.startswith("FHIR_NODE_")}
    clean["FHIR_NODE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'a-file' / 'fhir-node.db'}"
    command = [sys.executable, "-m", "fhir_node", "serve", "--host", host, *args]
    return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("host", "env", "args", "message"),
    [
        (
            "0.0.0.0",
            {f"FHIR_NODE_{name.upper()}": value for name, value in JWT.items()},
            [],
            "fhir-node: FHIR_NODE_AUTH=jwt on 0.0.0.0 needs TLS: pass --ssl-certfile and --ssl-keyfile, "
            "or set FHIR_NODE_TLS_PROXY to the proxies that terminate TLS in front of the node",
        ),
        (
            "127.0.0.1",
            {"FHIR_NODE_AUTH": "jwt", "FHIR_NODE_JWT_ISSUER": "https://idp.test"},
            [],
            "fhir-node: FHIR_NODE_AUTH=jwt needs FHIR_NODE_JWT_JWKS, FHIR_NODE_JWT_AUDIENCE",
        ),
        ("127.0.0.1", {}, ["--ssl-certfile", "server.crt"], "fhir-node: --ssl-certfile needs --ssl-keyfile"),
    ],
    ids=["jwt-without-tls", "jwt-incomplete", "certificate-without-key"],
)
def test_serve_refuses_to_start(tmp_path: Path, host: str, env: dict[str, str], args: list[str], message: str) -> None:
    done = _serve(tmp_path, host, env, *args)
    assert (done.returncode, done.stderr) == (2, message + "\n")


@pytest.mark.parametrize(
    ("fields", "host", "tls", "problem"),
    [
        ({}, "127.0.0.1", False, None),
        ({}, "0.0.0.0", True, "FHIR_NODE_AUTH=none may only listen on a loopback address, not 0.0.0.0"),
        (JWT, "127.0.0.1", False, None),
        (JWT, "0.0.0.0", False, "FHIR_NODE_AUTH=jwt on 0.0.0.0 needs TLS"),
        (JWT, "0.0.0.0", True, None),
        ({**JWT, "tls_proxy": "127.0.0.1"}, "0.0.0.0", False, None),
        ({**JWT, "tls_proxy": "10.1.2.3, fd00::/8"}, "::", False, None),
        ({**JWT, "tls_proxy": "proxy.internal"}, "0.0.0.0", False, "'proxy.internal' is not an IP address"),
        ({**JWT, "tls_proxy": "*"}, "0.0.0.0", True, "'*' is not an IP address"),
        ({"auth": "jwt"}, "127.0.0.1", True, "needs FHIR_NODE_JWT_JWKS, FHIR_NODE_JWT_ISSUER, FHIR_NODE_JWT_AUDIENCE"),
    ],
)
def test_startup_problem(fields: dict[str, Any], host: str, tls: bool, problem: str | None) -> None:
    unset = {"auth": "none", "jwt_jwks": None, "jwt_issuer": None, "jwt_audience": None, "tls_proxy": None}
    found = startup_problem(Settings(**{**unset, **fields}), host, tls)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_tls_problem(pki: Pki, tmp_path: Path) -> None:
    cert, key, ca = str(pki.server.cert), str(pki.server.key), str(pki.ca)
    assert tls_problem(None, None, None) is None
    assert tls_problem(cert, key, None) is None
    assert tls_problem(cert, key, ca) is None
    assert tls_problem(None, key, None) == "--ssl-keyfile and --ssl-ca-certs need --ssl-certfile"
    assert tls_problem(cert, key, str(tmp_path / "ca.pem")) == f"--ssl-ca-certs {tmp_path / 'ca.pem'}: no such file"
    mismatch = tls_problem(cert, str(pki.client.key), ca) or ""
    assert mismatch.startswith("cannot load the TLS certificate, key or CA certificates: ")
