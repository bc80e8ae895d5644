"""SMART Backend Services: the bearer token the central index shows one node, obtained with client credentials
and a `private_key_jwt` assertion from the token endpoint the node advertises (or the nodes file names), and
kept until shortly before it expires.

Written on PyJWT and httpx rather than an OAuth client library so that discovery and the token request run
under the same retries and deadline as the node's answer itself (and report the same way)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import jwt

from fhir_node.federation.calls import CONNECTION_ERRORS, Failure, json_body, send, why
from fhir_node.federation.nodes import Auth, Node, checked_url

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: SMART: an assertion expires no more than five minutes after it is made.
ASSERTION_SECONDS = 300
_JSON = {"Accept": "application/json"}


class TokenSource:
    """One node's bearer token: fetched when there is none or it is about to expire, shared by concurrent
    queries (one fetch at a time), dropped when the node refuses it."""

    def __init__(self, node: Node, auth: Auth) -> None:
        self._node = node
        self._auth = auth
        self._token_url = auth.token_url
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, client: httpx.AsyncClient, deadline: float, retries: int) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token_url = self._token_url or await self._discover(client, deadline, retries)
                self._token, lifetime = await self._fetch(client, self._token_url, deadline, retries)
                # Renewed a little early so that it does not expire on its way to the node.
                self._renew_at = time.monotonic() + lifetime - min(30.0, lifetime / 10)
            return self._token

    def forget(self, token: str) -> None:
        """The node refused `token` (revoked, keys rotated): the next query fetches another."""
        if self._token == token:
            self._token = None

    async def _discover(self, client: httpx.AsyncClient, deadline: float, retries: int) -> str:
        url = f"{self._node.url}/.well-known/smart-configuration"
        response = await send(lambda timeout: client.get(url, headers=_JSON, timeout=timeout), deadline, retries)
        config = json_body(response)
        if response.status_code != 200 or not isinstance(config, dict):
            raise Failure(f"SMART configuration: {why(response)}", response.status_code)
        methods = config.get("token_endpoint_auth_methods_supported")
        if isinstance(methods, list) and "private_key_jwt" not in methods:
            raise Failure("SMART configuration: the token endpoint does not take private_key_jwt")
        endpoint = config.get("token_endpoint")
        if not isinstance(endpoint, str):
            raise Failure("SMART configuration: no token_endpoint")
        try:
            return checked_url(endpoint)
        except ValueError as exc:
            raise Failure(f"SMART configuration: token_endpoint {exc}") from exc

    def _form(self, token_url: str) -> dict[str, str]:
        """The client-credentials request, with a fresh assertion (new jti) for every try."""
        auth, now = self._auth, int(time.time())
        claims = {
            "iss": auth.client_id,
            "sub": auth.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
            "jti": uuid.uuid4().hex,
        }
        assertion = jwt.encode(claims, auth.private_key, algorithm=auth.algorithm, headers={"kid": auth.key_id})
        return {
            "grant_type": "client_credentials",
            "scope": auth.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }

    async def _fetch(
        self, client: httpx.AsyncClient, token_url: str, deadline: float, retries: int
    ) -> tuple[str, float]:
        """(access token, seconds it lives)."""
        try:
            response = await send(
                lambda timeout: client.post(token_url, data=self._form(token_url), headers=_JSON, timeout=timeout),
                deadline,
                retries,
            )
        except CONNECTION_ERRORS as exc:
            raise Failure(f"token endpoint {token_url}: cannot connect: {exc or type(exc).__name__}") from exc
        if response.status_code != 200:
            raise Failure(f"token endpoint: {why(response)}", response.status_code)
        body = json_body(response)
        if not isinstance(body, dict):
            raise Failure("token endpoint: the answer is not JSON", response.status_code)
        token, kind, lifetime = body.get("access_token"), body.get("token_type"), body.get("expires_in")
        if not (isinstance(token, str) and token and isinstance(kind, str) and kind.lower() == "bearer"):
            raise Failure("token endpoint: no bearer access_token in the answer", response.status_code)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            raise Failure("token endpoint: no expires_in in the answer", response.status_code)
        return token, float(lifetime)
