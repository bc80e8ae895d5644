"""Bearer tokens from the identity provider (IdP), verified into a Principal (FHIR_NODE_AUTH=jwt).

The node's contract with the IdP:

- A token is a JWT signed with RS256, PS256 or ES256 (P-256) by a key in the IdP's JWKS (FHIR_NODE_JWT_JWKS:
  inline JSON, a file, or an https URL). Its header names the key by `kid`; while the JWKS holds a single key, the
  `kid` may be left out. Symmetric algorithms and `alg: none` are refused before any key is looked at.
- Keys rotate without a restart: the IdP publishes a new key before signing with it. A URL is fetched again when
  its cache (FHIR_NODE_JWT_JWKS_CACHE_SECONDS) runs out or a token names a `kid` it does not hold, at most once
  every 10 s; a file is read again when it changes. While the IdP cannot be reached, the last keys it served stay.
- Claims: `iss` = FHIR_NODE_JWT_ISSUER, `aud` = (or contains) FHIR_NODE_JWT_AUDIENCE; `exp`, `iat` and `sub`
  present; `nbf` honoured; clocks may differ by FHIR_NODE_JWT_LEEWAY_SECONDS.
- `fhir_node_role`: one of the node's roles. `sub`: the person's SSIN (11 digits; always so for a patient) or a
  system's client id. `nihdi`: the provider's or pharmacy's NIHDI number, required for provider and pharmacist.
  `psi`: the project's NIHDI number, required for psi-admin and psi-coordinator. `scope`: SMART scopes, one
  space-separated string (or a list). `client_id` (or `azp`): the client application.

Any other token is refused with an AuthError whose reason is safe to send back to the caller.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import InvalidSubjectError

from fhir_node.rules.check_digits import ssin_error
from fhir_node.security.principal import ROLES, Principal, Role, Scopes
from fhir_node.settings import Settings

log = logging.getLogger(__name__)

#: The algorithms a token may use, each with the key type it needs: asymmetric only, so neither `none` nor
#: HS256 with the public key as its secret can pass.
_ALGORITHMS = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC"}
#: A flood of tokens naming unknown kids fetches the JWKS at most once per this many seconds.
_REFETCH_SECONDS = 10.0
_FETCH_TIMEOUT_SECONDS = 5.0
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
#: Roles only people hold: they act under their SSIN (check digits and all), which the audit records.
PEOPLE = ("patient", "provider", "pharmacist", "psi-admin", "psi-coordinator")
#: The identifier each role acts under, besides its `sub`.
_ROLE_CLAIM = {"provider": "nihdi", "pharmacist": "nihdi", "psi-admin": "psi", "psi-coordinator": "psi"}
#: PyJWT's refusals as reasons for the caller, the more specific exception first.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidIssuedAtError, "bad claim iat"),
    (InvalidSubjectError, "bad claim sub"),
)


class AuthError(Exception):
    """A refused token. `reason` is short and safe to show the caller (OperationOutcome text and
    `WWW-Authenticate: Bearer error="invalid_token", error_description=...`): it never quotes the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(AuthError):
    """The IdP's keys could not be loaded at all: the token is refused, but the fault is the node's (a 503 rather
    than a 401 for whoever maps it)."""


class KeySource:
    """The IdP's public signing keys from FHIR_NODE_JWT_JWKS: inline JSON, a file (read again when it changes) or
    a URL (cached, fetched again for an unknown kid). Shared by the worker threads that verify tokens. `clock` is
    the monotonic clock the URL cache runs on (tests move it by hand)."""

    def __init__(self, spec: str, cache_seconds: int = 3600, *, clock: Callable[[], float] = time.monotonic) -> None:
        spec = spec.strip()
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._url: str | None = None
        self._path: Path | None = None
        #: The keys and the clock time they were loaded at; replaced whole, so a reader needs no lock.
        self._loaded: tuple[list[jwt.PyJWK], float] = ([], 0.0)
        #: When the URL was last fetched, successfully or not.
        self._fetched_at: float | None = None
        #: The file's (mtime, size) when last read; () when it could not be read.
        self._stamp: tuple[int, ...] | None = None
        if spec.startswith("{"):
            self._loaded = (_parse_jwks(spec), 0.0)
        elif "://" in spec:
            self._url = _checked_url(spec)
        else:
            self._path = Path(spec)

    def get(self, kid: str | None) -> jwt.PyJWK:
        """The key a token names by `kid`; without a kid, the only key there is."""
        if self._url is not None:
            keys = self._from_url(self._url, kid)
        elif self._path is not None:
            keys = self._from_file(self._path)
        else:
            keys = self._loaded[0]
        if not keys:
            raise KeysUnavailable("identity provider keys unavailable")
        if kid is None:
            if len(keys) == 1:
                return keys[0]
        else:
            for key in keys:
                if key.key_id == kid:
                    return key
        raise AuthError("unknown signing key")

    def _from_url(self, url: str, kid: str | None) -> list[jwt.PyJWK]:
        keys, loaded_at = self._loaded
        if not self._stale(keys, loaded_at, kid):
            return keys
        with self._lock:
            # Whoever held the lock before may just have fetched what this token needs.
            keys, loaded_at = self._loaded
            now = self._clock()
            due = self._fetched_at is None or now - self._fetched_at >= _REFETCH_SECONDS
            if due and self._stale(keys, loaded_at, kid):
                self._fetched_at = now
                try:
                    response = httpx.get(url, timeout=_FETCH_TIMEOUT_SECONDS)
                    response.raise_for_status()
                    keys = _parse_jwks(response.text)
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning("cannot fetch the identity provider's keys from %s: %s", url, exc)
                else:
                    self._loaded = (keys, now)
        return keys

    def _stale(self, keys: list[jwt.PyJWK], loaded_at: float, kid: str | None) -> bool:
        return (
            not keys
            or self._clock() - loaded_at >= self._cache_seconds
            or (kid is not None and all(key.key_id != kid for key in keys))
        )

    def _from_file(self, path: Path) -> list[jwt.PyJWK]:
        with self._lock:
            try:
                stat = path.stat()
                stamp: tuple[int, ...] = (stat.st_mtime_ns, stat.st_size)
            except OSError:
                stamp = ()
            if stamp != self._stamp:
                # A file that reads badly is reported once and its last good keys stay, until it changes again.
                self._stamp = stamp
                try:
                    self._loaded = (_parse_jwks(path.read_text(encoding="utf-8")), 0.0)
                except (OSError, ValueError) as exc:
                    log.warning("cannot read the identity provider's keys from %s: %s", path, exc)
            return self._loaded[0]


class TokenVerifier:
    """Turns a Bearer token into the Principal it speaks for, by the contract in this module's docstring."""

    def __init__(self, settings: Settings, keys: KeySource | None = None) -> None:
        if not (settings.jwt_jwks and settings.jwt_issuer and settings.jwt_audience):
            # Without an issuer or audience PyJWT would skip those checks: refuse to start instead.
            raise ValueError(
                "FHIR_NODE_AUTH=jwt needs FHIR_NODE_JWT_JWKS, FHIR_NODE_JWT_ISSUER and FHIR_NODE_JWT_AUDIENCE"
            )
        self._settings = settings
        self._keys = keys or KeySource(settings.jwt_jwks, settings.jwt_jwks_cache_seconds)

    def verify(self, token: str) -> Principal:
        """The caller `token` speaks for; AuthError for any token refused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ALGORITHMS:
            raise AuthError("algorithm not allowed")
        key = self._keys.get(header.get("kid"))
        if key.key_type != _ALGORITHMS[alg]:
            raise AuthError("algorithm not allowed")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                leeway=self._settings.jwt_leeway_seconds,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim {exc.claim}") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(next((reason for t, reason in _REASONS if isinstance(exc, t)), "malformed token")) from exc
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    """The verified claims as a Principal, refused when the role lacks the identifiers it acts under."""
    sub = _text(claims, "sub")
    if sub is None:
        raise AuthError("missing claim sub")
    role = claims.get("fhir_node_role")
    if role is None:
        raise AuthError("missing claim fhir_node_role")
    if role not in ROLES:
        raise AuthError("unknown role")
    if role in PEOPLE and ssin_error(sub) is not None:
        raise AuthError(f"{role} sub is not an SSIN")
    needed = _ROLE_CLAIM.get(role)
    if needed and _text(claims, needed) is None:
        raise AuthError(f"missing claim {needed}")
    scope = claims.get("scope", "")
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        scope = " ".join(scope)
    if not isinstance(scope, str):
        raise AuthError("bad claim scope")
    return Principal(
        sub=sub,
        role=cast(Role, role),
        scopes=Scopes.parse(scope),
        nihdi=_text(claims, "nihdi"),
        psi=_text(claims, "psi"),
        client_id=_text(claims, "client_id") or _text(claims, "azp"),
    )


def _text(claims: dict[str, Any], name: str) -> str | None:
    """A claim that must be a string when present; an empty one counts as absent."""
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise AuthError(f"bad claim {name}")
    return value or None


def _parse_jwks(text: str) -> list[jwt.PyJWK]:
    """The keys of a JWKS that can verify tokens here: public RSA and EC P-256 keys, not marked for encryption.
    ValueError when there are none, so a broken JWKS is noticed rather than refusing every token quietly."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        keys = jwt.PyJWKSet.from_dict(data).keys
    except (ValueError, jwt.PyJWTError) as exc:
        raise ValueError(f"not a JWKS: {exc}") from exc
    usable = [
        key
        for key in keys
        if key.algorithm_name in _ALGORITHMS
        and key.public_key_use in (None, "sig")
        and isinstance(key.key, RSAPublicKey | EllipticCurvePublicKey)
    ]
    if not usable:
        raise ValueError("the JWKS holds no public RS256, PS256 or ES256 signing key")
    return usable


def _checked_url(url: str) -> str:
    """https, or plain http to a loopback address (tests, a local sidecar): keys fetched in clear text across a
    network could be swapped for an attacker's."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return url
        except ValueError:
            pass
    raise ValueError("FHIR_NODE_JWT_JWKS: a JWKS URL must be https (plain http only to a loopback address)")
