"""TokenVerifier: which Bearer tokens become a Principal, the reason each other token is refused with, and where
the identity provider's keys come from (inline, a file, a URL that rotates keys)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from jwt_keys import AUDIENCE, ISSUER, NIHDI, REFUSED, SSIN, TestIssuer, claims_of, epoch_now, jwt_settings, reheaded

from fhir_node.security.principal import Principal, Scopes
from fhir_node.security.tokens import AuthError, KeySource, KeysUnavailable, TokenVerifier
from fhir_node.settings import Settings

PSI = "10712345"


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer()


def _inline(jwks: dict[str, Any]) -> TokenVerifier:
    """A node holding `jwks` inline."""
    return TokenVerifier(Settings(**jwt_settings(json.dumps(jwks))))


@pytest.fixture
def verifier(issuer: TestIssuer) -> TokenVerifier:
    """A node holding the issuer's JWKS as it stands when the test starts."""
    return _inline(issuer.jwks())


def _refusal(verifier: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as refused:
        verifier.verify(token)
    return refused.value


@pytest.mark.parametrize(("make", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_refused(issuer: TestIssuer, verifier: TokenVerifier, make: Callable[[TestIssuer], str], reason: str) -> None:
    refused = _refusal(verifier, make(issuer))
    assert refused.reason == reason == str(refused)


def test_rs256_provider(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    token = issuer.token(SSIN, "provider", "user/EpisodeOfCare.rs openid", nihdi=NIHDI, client_id="gp-app")
    assert verifier.verify(token) == Principal(
        SSIN, "provider", Scopes({"EpisodeOfCare": frozenset("rs")}), nihdi=NIHDI, client_id="gp-app"
    )


def test_es256_psi_coordinator(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    token = issuer.token(SSIN, "psi-coordinator", ["system/Consent.read", "system/CarePlan.rs"], psi=PSI, kid="ec-1")
    assert verifier.verify(token) == Principal(
        SSIN, "psi-coordinator", Scopes({"Consent": frozenset("rs"), "CarePlan": frozenset("rs")}), psi=PSI
    )


def test_ps256_patient(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    claims = {**claims_of(issuer), "scope": "patient/*.rs", "azp": "patient-portal"}
    token = issuer.sign(claims, alg="PS256")
    assert jwt.get_unverified_header(token)["alg"] == "PS256"
    assert verifier.verify(token) == Principal(
        SSIN, "patient", Scopes({"*": frozenset("rs")}), client_id="patient-portal"
    )


def test_system_caller_without_scope(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    """The aggregator may be a system (a client id as sub); no scope claim grants nothing."""
    principal = verifier.verify(issuer.token("aggregator-service", "aggregator", None))
    assert principal == Principal("aggregator-service", "aggregator", Scopes())
    assert not principal.is_person


def test_clock_skew_within_leeway(issuer: TestIssuer, verifier: TokenVerifier) -> None:
    """FHIR_NODE_JWT_LEEWAY_SECONDS (30 by default) forgives a few seconds either way."""
    now = epoch_now()
    for claims in ({"exp": now - 10}, {"iat": now + 10}, {"nbf": now + 10}):
        assert verifier.verify(issuer.token(SSIN, "patient", **claims)).sub == SSIN


def test_key_without_kid() -> None:
    """A JWKS with a single key serves tokens that name no kid; with more keys, a token must name one."""
    key = ec.generate_private_key(ec.SECP256R1())
    single = {"keys": [ECAlgorithm.to_jwk(key.public_key(), as_dict=True)]}
    now = epoch_now()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": SSIN, "iat": now, "exp": now + 60}
    token = jwt.encode({**claims, "fhir_node_role": "patient"}, key, algorithm="ES256")
    assert _inline(single).verify(token).sub == SSIN
    two = {"keys": [*single["keys"], TestIssuer().jwks()["keys"][0]]}
    assert _refusal(_inline(two), token).reason == "unknown signing key"


def test_encryption_keys_are_not_signing_keys(issuer: TestIssuer) -> None:
    jwks = issuer.jwks()
    jwks["keys"][0]["use"] = "enc"
    assert _refusal(_inline(jwks), issuer.token(SSIN, "patient")).reason == "unknown signing key"


def test_settings_must_name_issuer_and_audience(issuer: TestIssuer) -> None:
    """Without them PyJWT would not check `iss` or `aud` at all."""
    for missing in ("jwt_jwks", "jwt_issuer", "jwt_audience"):
        with pytest.raises(ValueError, match="FHIR_NODE_JWT_ISSUER"):
            TokenVerifier(Settings(**jwt_settings(issuer.jwks_json(), **{missing: None})))


@pytest.mark.parametrize("spec", ["{}", '{"keys": []}', '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "{not json"])
def test_unusable_inline_jwks(spec: str) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        KeySource(spec)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://idp.example.be/jwks", True),
        ("http://127.0.0.1:8443/jwks", True),
        ("http://[::1]/jwks", True),
        ("http://idp.example.be/jwks", False),
        ("http://localhost/jwks", False),
        ("http://10.0.0.1/jwks", False),
        ("ftp://idp.example.be/jwks", False),
    ],
)
def test_jwks_url_must_be_https_unless_loopback(url: str, accepted: bool) -> None:
    """Keys fetched in clear text across a network could be swapped; nothing is fetched until a token comes."""
    if accepted:
        KeySource(url)
    else:
        with pytest.raises(ValueError, match="https"):
            KeySource(url)


def test_jwks_file_read_again_when_changed(issuer: TestIssuer, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(issuer.jwks_json())
    verifier = TokenVerifier(Settings(**jwt_settings(str(path))))
    assert verifier.verify(issuer.token(SSIN, "patient")).sub == SSIN

    rotated = issuer.token(SSIN, "patient", kid=issuer.rotate())
    assert _refusal(verifier, rotated).reason == "unknown signing key"
    path.write_text(issuer.jwks_json())
    assert verifier.verify(rotated).sub == SSIN

    # A file caught half-written is reported, and the keys read last stay until it reads well again.
    path.write_text('{"keys": [')
    os.utime(path, ns=(0, time.time_ns() + 10**9))
    assert verifier.verify(rotated).sub == SSIN


def test_jwks_file_missing(issuer: TestIssuer, tmp_path: Path) -> None:
    verifier = TokenVerifier(Settings(**jwt_settings(str(tmp_path / "absent.json"))))
    refused = _refusal(verifier, issuer.token(SSIN, "patient"))
    assert isinstance(refused, KeysUnavailable)
    assert refused.reason == "identity provider keys unavailable"


class JwksEndpoint(http.server.HTTPServer):
    """The IdP's JWKS URL on 127.0.0.1: serves `published` (None: HTTP 503) and counts the requests."""

    def __init__(self, published: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _JwksHandler)
        self.published = published
        self.fetches = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/.well-known/jwks.json"


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    server: JwksEndpoint

    def do_GET(self) -> None:
        self.server.fetches += 1
        if self.server.published is None:
            self.send_error(503)
            return
        body = self.server.published.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows what matters."""


@pytest.fixture
def endpoint(issuer: TestIssuer) -> Iterator[JwksEndpoint]:
    server = JwksEndpoint(issuer.jwks_json())
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


class Clock:
    """The monotonic clock a KeySource caches by, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _url_verifier(endpoint: JwksEndpoint, clock: Clock, cache_seconds: int = 3600) -> TokenVerifier:
    settings = Settings(**jwt_settings(endpoint.url, jwt_jwks_cache_seconds=cache_seconds))
    return TokenVerifier(settings, KeySource(endpoint.url, cache_seconds, clock=clock))


def test_jwks_url_rotation(issuer: TestIssuer, endpoint: JwksEndpoint) -> None:
    """A key the IdP rotates in is fetched when a token first names it: no new verifier, no restart."""
    clock = Clock()
    verifier = _url_verifier(endpoint, clock)
    assert endpoint.fetches == 0  # nothing is fetched before a token needs it
    assert verifier.verify(issuer.token(SSIN, "patient")).sub == SSIN
    assert endpoint.fetches == 1

    rotated = issuer.token(SSIN, "patient", kid=issuer.rotate())
    clock.now += 10
    assert _refusal(verifier, rotated).reason == "unknown signing key"  # signed before the IdP published the key
    assert endpoint.fetches == 2

    endpoint.published = issuer.jwks_json()
    clock.now += 10
    assert verifier.verify(rotated).sub == SSIN
    assert verifier.verify(issuer.token(SSIN, "patient")).sub == SSIN
    assert endpoint.fetches == 3


def test_unknown_kid_flood_fetches_once_per_interval(issuer: TestIssuer, endpoint: JwksEndpoint) -> None:
    clock = Clock()
    verifier = _url_verifier(endpoint, clock)
    token = issuer.token(SSIN, "patient")

    def flood() -> None:
        tokens = [reheaded(token, kid=f"unknown-{n}") for n in range(40)]
        with ThreadPoolExecutor(8) as pool:
            reasons = {refused.reason for refused in pool.map(functools.partial(_refusal, verifier), tokens)}
        assert reasons == {"unknown signing key"}

    flood()
    assert endpoint.fetches == 1  # the first load; every other unknown kid waits out the interval
    clock.now += 9.9
    flood()
    assert endpoint.fetches == 1
    clock.now += 0.1
    flood()
    assert endpoint.fetches == 2
    assert verifier.verify(token).sub == SSIN
    assert endpoint.fetches == 2


def test_jwks_url_cache_expires(issuer: TestIssuer, endpoint: JwksEndpoint) -> None:
    clock = Clock()
    verifier = _url_verifier(endpoint, clock, cache_seconds=60)
    token = issuer.token(SSIN, "patient")
    verifier.verify(token)
    clock.now += 59
    verifier.verify(token)
    assert endpoint.fetches == 1
    clock.now += 1
    verifier.verify(token)
    assert endpoint.fetches == 2


def test_idp_unreachable(issuer: TestIssuer, endpoint: JwksEndpoint) -> None:
    """Keys served once stay while the IdP is down; with none ever served, tokens are refused as the node's fault."""
    clock = Clock()
    verifier = _url_verifier(endpoint, clock, cache_seconds=60)
    token = issuer.token(SSIN, "patient")
    verifier.verify(token)
    endpoint.published = None
    clock.now += 60
    assert verifier.verify(token).sub == SSIN
    assert endpoint.fetches == 2

    cold = _url_verifier(endpoint, Clock())
    with pytest.raises(KeysUnavailable):
        cold.verify(token)
    with pytest.raises(KeysUnavailable):
        cold.verify(token)
    assert endpoint.fetches == 3  # the second refusal did not ask again within the interval
