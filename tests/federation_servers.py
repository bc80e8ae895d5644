"""What the federation tests (and benchmark) run on loopback besides the nodes themselves: a SMART token server
that checks `private_key_jwt` client assertions and issues the tokens the nodes verify, and a proxy that puts a
node behind a fault (slow, busy, broken, garbage)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt
import orjson
import uvicorn
from access_data import consent
from jwt_keys import ISSUER, TestIssuer, jwt_settings
from live_node import free_port, serve_node
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fhir_node.federation.backend_services import ASSERTION_SECONDS, ASSERTION_TYPE
from fhir_node.rules.small_cells import bundle_total
from fhir_node.store.audit_file import audit_file

SSIN_SYSTEM = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """`app` under uvicorn on 127.0.0.1 in a thread until the block ends; yields http://127.0.0.1:PORT."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class TokenServer:
    """An identity provider with one token endpoint per node (`/{node}/token`), each issuing tokens for that
    node's audience only. Clients are registered with their public key; a token request must carry a
    `private_key_jwt` assertion (RS384 or ES384, iss = sub = client id, aud = the endpoint, at most five minutes,
    jti never seen before), as SMART Backend Services says."""

    issuer: TestIssuer = field(default_factory=TestIssuer)
    base: str = ""
    clients: dict[str, tuple[str, Any]] = field(default_factory=dict)  # client id -> (kid, public key)
    lifetime: dict[str, int] = field(default_factory=dict)  # client id -> seconds its tokens live
    issued: Counter[tuple[str, str]] = field(default_factory=Counter)  # (node, client id) -> tokens issued
    _jtis: set[str] = field(default_factory=set)

    def register(self, client_id: str, kid: str, public_key: Any, lifetime: int = 300) -> None:
        self.clients[client_id] = (kid, public_key)
        self.lifetime[client_id] = lifetime

    @staticmethod
    def audience(node: str) -> str:
        return f"https://{node}.fhir-node.test/fhir"

    def token_url(self, node: str) -> str:
        return f"{self.base}/{node}/token"

    def node_env(self, node: str) -> dict[str, str]:
        """The FHIR_NODE_* environment of a node that trusts this server's tokens for its audience."""
        settings = jwt_settings(self.issuer.jwks_json(), jwt_audience=self.audience(node))
        settings["smart_token_endpoint"] = self.token_url(node)
        return {f"FHIR_NODE_{name.upper()}": str(value) for name, value in settings.items()}

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{node}/token", self._token, methods=["POST"])])

    async def _token(self, request: Request) -> Response:
        node = request.path_params["node"]
        form = dict(parse_qsl((await request.body()).decode()))
        if form.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type", "client_credentials only")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return _oauth_error("invalid_client", "a private_key_jwt assertion is required", 401)
        try:
            client_id = self._verify(str(form.get("client_assertion")), self.token_url(node))
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            return _oauth_error("invalid_client", str(exc), 401)
        scope = str(form.get("scope", ""))
        self.issued[(node, client_id)] += 1
        lifetime = self.lifetime[client_id]
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": self.audience(node),
            "sub": client_id,
            "client_id": client_id,
            "fhir_node_role": "aggregator",
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
        }
        body = {
            "access_token": self.issuer.sign(claims),
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": scope,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def _verify(self, assertion: str, endpoint: str) -> str:
        """The client id the assertion proves, or an exception saying why not."""
        header = jwt.get_unverified_header(assertion)
        client_id = jwt.decode(assertion, options={"verify_signature": False})["iss"]
        kid, key = self.clients[client_id]
        if header.get("kid") != kid:
            raise ValueError("unknown kid")
        claims = jwt.decode(
            assertion,
            key,
            algorithms=["RS384", "ES384"],
            audience=endpoint,
            issuer=client_id,
            options={"require": ["exp", "jti", "sub"]},
        )
        if claims["sub"] != client_id or claims["exp"] > time.time() + ASSERTION_SECONDS + 5:
            raise ValueError("sub must be the client id, exp at most five minutes away")
        if claims["jti"] in self._jtis:
            raise ValueError("jti already used")
        self._jtis.add(claims["jti"])
        return client_id


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


@dataclass
class FaultProxy:
    """`/{route}/...` forwards to a node's base after a fault: `delay` seconds of silence, `busy` answers
    first (status, Retry-After) before forwarding, `broken` a 500 instead, `garbage` a 200 web page instead,
    `masked` a count Bundle whose total the node withheld (small-cell suppression). `hits` counts the
    requests each route received."""

    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{route}/{path:path}", self._forward)])

    async def _forward(self, request: Request) -> Response:
        name = request.path_params["route"]
        route = self.routes[name]
        self.hits[name] += 1
        await asyncio.sleep(route.get("delay", 0))
        if route.get("busy"):
            status, after = route["busy"].pop(0)
            return Response(status_code=status, headers={"Retry-After": after})
        if route.get("broken"):
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "database on fire"}],
            }
            return Response(orjson.dumps(outcome), 500, media_type="application/fhir+json")
        if route.get("garbage"):
            return Response("<html><body>Welcome to nginx!</body></html>", 200, media_type="text/html")
        if route.get("masked"):  # a node withholding its own small count
            withheld = {"resourceType": "Bundle", "type": "searchset"} | bundle_total(1, 5)
            return Response(orjson.dumps(withheld), 200, media_type="application/fhir+json")
        url = f"{route['target']}/{request.path_params['path']}"
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept")}
        async with httpx.AsyncClient() as client:
            answer = await client.request(request.method, url, params=request.query_params, headers=headers)
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))


@contextlib.contextmanager
def serve_nodes(
    folders: dict[str, Path], envs: dict[str, dict[str, str]], stopped: Collection[str] = (), at_once: int = 2
) -> Iterator[dict[str, str]]:
    """`fhir-node serve` on each `folders[name]/node.db` with `envs[name]`, `at_once` starting side by side (a
    start takes seconds of CPU); those named in `stopped` are stopped again at once (nodes that are down).
    Yields {name: FHIR base}."""
    starts = {
        name: serve_node(f"sqlite:///{folder / 'node.db'}", folder, envs[name]) for name, folder in folders.items()
    }
    with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
        started = {name: pool.submit(start.__enter__) for name, start in starts.items()}
    running = {name: starts[name] for name, future in started.items() if future.exception() is None}
    try:
        bases = {name: future.result() for name, future in started.items()}  # the first failure, if any
        for name in stopped:
            running.pop(name).__exit__(None, None, None)
        yield bases
    finally:
        for start in running.values():
            start.__exit__(None, None, None)


def node_databases(folders: dict[str, Path], data: dict[str, dict[str, str]]) -> None:
    """`folders[name]/node.db` for each node, holding one Patient and the EpisodeOfCare `data[name]` ({id: status}),
    written through the node's own transaction processing. The schema and guide are stored once and copied."""
    from fhir_node.load import DatabaseTarget

    template = next(iter(folders.values())) / "template.db"
    DatabaseTarget(f"sqlite:///{template}").close()
    for name, folder in folders.items():
        shutil.copyfile(template, folder / "node.db")
        shutil.copyfile(audit_file(str(template)), audit_file(str(folder / "node.db")))  # its AuditEvent chain
        _load_episodes(DatabaseTarget(f"sqlite:///{folder / 'node.db'}"), data[name])


def _load_episodes(target: Any, episodes: dict[str, str]) -> None:
    entries: list[dict[str, Any]] = [
        _put({"resourceType": "Patient", "id": "p1", "identifier": [{"system": SSIN_SYSTEM, "value": "85073003328"}]})
    ]
    # The central index is an aggregator: it sees only patients whose research consent is an active permit.
    entries.append(_put({**consent("Patient/p1"), "id": "c1"}))
    entries += [
        _put({"resourceType": "EpisodeOfCare", "id": rid, "status": status, "patient": {"reference": "Patient/p1"}})
        for rid, status in episodes.items()
    ]
    try:
        answer = target.post(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
        assert answer.status == 200, answer.body
    finally:
        target.close()


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}
