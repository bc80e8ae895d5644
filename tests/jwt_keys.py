"""An identity provider for tests: signs the Bearer tokens a node with FHIR_NODE_AUTH=jwt verifies, and publishes
the JWKS it verifies them with."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jwt
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
