"""An identity provider for tests: signs the Bearer tokens a node with FHIR_NODE_AUTH=jwt verifies, and publishes
the JWKS it verifies them with."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.fhir-node.test"
AUDIENCE = "https://node.fhir-node.test/fhir"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.cache
def _rsa_key(n: int) -> rsa.RSAPrivateKey:
    """This process's n-th RSA key: generating one is slow, so each is made once and shared by every issuer."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class TestIssuer:
    """An identity provider for tests: an RSA key (kid 'rsa-1') and an EC P-256 key (kid 'ec-1')."""

    __test__ = False  # a helper, not a test class pytest should collect

    def __init__(self) -> None:
        self._keys: dict[str, PrivateKey] = {"rsa-1": _rsa_key(1), "ec-1": _ec_key()}

    def jwks(self) -> dict[str, Any]:
        """The public JWKS of all its keys (no `alg`, so an RSA key serves RS256 and PS256 alike)."""
        return {"keys": [_public_jwk(kid, key) for kid, key in self._keys.items()]}

    def jwks_json(self) -> str:
        return json.dumps(self.jwks())

    def token(
        self,
        sub: str,
        role: str,
        scope: str = "system/*.cruds",
        *,
        nihdi: str | None = None,
        psi: str | None = None,
        kid: str = "rsa-1",
        lifetime: int = 300,
        **claims: Any,
    ) -> str:
        """A token valid for `lifetime` seconds from now; `claims` override or add claims, None removes one."""
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + lifetime,
            "fhir_node_role": role,
            "scope": scope,
            "nihdi": nihdi,
            "psi": psi,
            **claims,
        }
        return self.sign({name: value for name, value in payload.items() if value is not None}, kid=kid)

    def sign(self, claims: dict[str, Any], *, kid: str = "rsa-1", alg: str | None = None) -> str:
        """`claims` signed as they are with key `kid`: RS256 or ES256 by the key's type, unless `alg` (PS256)."""
        key = self._keys[kid]
        alg = alg or ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256")
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    def rotate(self) -> str:
        """Adds a new RSA key with a new kid (published by `jwks()` from now on) and returns the kid."""
        n = 1 + sum(kid.startswith("rsa-") for kid in self._keys)
        kid = f"rsa-{n}"
        self._keys[kid] = _rsa_key(n)
        return kid


def _public_jwk(kid: str, key: PrivateKey) -> dict[str, Any]:
    algorithm = ECAlgorithm if isinstance(key, ec.EllipticCurvePrivateKey) else RSAAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def jwt_settings(jwks: str, **overrides: Any) -> dict[str, Any]:
    """`Settings(**jwt_settings(jwks))`: a node that trusts TestIssuer tokens, its keys from `jwks` (inline JSON,
    a file or a URL)."""
    return {"auth": "jwt", "jwt_jwks": jwks, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, **overrides}


# Tokens the node must refuse, each with the reason it gives: shared by the verifier's unit tests and the
# HTTP tests (401, nothing changed, audited).
SSIN = "85073003328"
NIHDI = "10012345678"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj).encode())


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A token's header, claims and signature segment, none of it verified."""
    signature = token.rsplit(".", 1)[1]
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False}), signature


def claims_of(issuer: TestIssuer) -> dict[str, Any]:
    """The claims of a token the node accepts."""
    return parts(issuer.token(SSIN, "patient"))[1]


def reheaded(token: str, **header: Any) -> str:
    """`token` with header fields changed, its signature kept (so it no longer matches)."""
    old, _, signature = parts(token)
    return ".".join([segment({**old, **header}), token.split(".")[1], signature])


def alg_none(issuer: TestIssuer) -> str:
    """Unsigned, naming a key the node does not have: refused for its alg before any key is looked up."""
    return f"{segment({'alg': 'none', 'typ': 'JWT', 'kid': 'no-such-key'})}.{segment(claims_of(issuer))}."


def hs256_with_public_key(issuer: TestIssuer) -> str:
    """The key-confusion attack: HS256 with the published RSA key's PEM as the HMAC secret."""
    pem = jwt.PyJWK(issuer.jwks()["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{segment(claims_of(issuer))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def tampered(issuer: TestIssuer) -> str:
    """A patient's token turned into the operator's, the patient's signature kept."""
    header, _, signature = issuer.token(SSIN, "patient").split(".")
    return f"{header}.{segment({**claims_of(issuer), 'fhir_node_role': 'operator'})}.{signature}"


def unpublished_kid(issuer: TestIssuer) -> str:
    """Signed with a key the issuer rotates in after the verifier read its JWKS."""
    return issuer.token(SSIN, "patient", kid=issuer.rotate())


def epoch_now() -> int:
    return int(time.time())


REFUSED: dict[str, tuple[Callable[[TestIssuer], str], str]] = {
    "expired": (lambda i: i.token(SSIN, "patient", exp=epoch_now() - 3600), "token expired"),
    "not yet valid": (lambda i: i.token(SSIN, "patient", nbf=epoch_now() + 3600), "token not yet valid"),
    "issued in the future": (lambda i: i.token(SSIN, "patient", iat=epoch_now() + 3600), "token not yet valid"),
    "wrong issuer": (lambda i: i.token(SSIN, "patient", iss="https://other-idp.test"), "wrong issuer"),
    "wrong audience": (lambda i: i.token(SSIN, "patient", aud="https://other-node.test/fhir"), "wrong audience"),
    "unknown kid": (unpublished_kid, "unknown signing key"),
    "alg none": (alg_none, "algorithm not allowed"),
    "HS256 with the public key": (hs256_with_public_key, "algorithm not allowed"),
    "ES256 claiming the RSA key": (
        lambda i: reheaded(i.token(SSIN, "patient", kid="ec-1"), kid="rsa-1"),
        "algorithm not allowed",
    ),
    "RS256 claiming the EC key": (lambda i: reheaded(i.token(SSIN, "patient"), kid="ec-1"), "algorithm not allowed"),
    "tampered payload": (tampered, "bad signature"),
    "not a JWT": (lambda i: "not-a-token", "malformed token"),
    "missing role": (lambda i: i.token(SSIN, "patient", fhir_node_role=None), "missing claim fhir_node_role"),
    "unknown role": (lambda i: i.token(SSIN, "administrator"), "unknown role"),
    "provider without nihdi": (lambda i: i.token(SSIN, "provider"), "missing claim nihdi"),
    "pharmacist without nihdi": (lambda i: i.token(SSIN, "pharmacist"), "missing claim nihdi"),
    "psi-admin without psi": (lambda i: i.token(SSIN, "psi-admin"), "missing claim psi"),
    "psi-coordinator without psi": (lambda i: i.token(SSIN, "psi-coordinator", nihdi=NIHDI), "missing claim psi"),
    "patient without SSIN": (lambda i: i.token("patient-42", "patient"), "patient sub is not an SSIN"),
    "patient with 10 digits": (lambda i: i.token(SSIN[:10], "patient"), "patient sub is not an SSIN"),
    "missing exp": (lambda i: i.token(SSIN, "patient", exp=None), "missing claim exp"),
    "missing iat": (lambda i: i.token(SSIN, "patient", iat=None), "missing claim iat"),
    "missing sub": (lambda i: i.sign({k: v for k, v in claims_of(i).items() if k != "sub"}), "missing claim sub"),
    "empty sub": (lambda i: i.token("", "aggregator"), "missing claim sub"),
    "scope not text": (lambda i: i.token(SSIN, "patient", scope={"Patient": "rs"}), "bad claim scope"),
}
