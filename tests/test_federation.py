"""`fhir-node federate` and `fhir_node.federation` against real nodes on loopback: separate `fhir-node serve`
processes with their own data and FHIR_NODE_AUTH=jwt, a SMART token server checking private_key_jwt, one node
stopped, one slowed, and nodes behind faults (busy, broken, garbage)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from federation_servers import FaultProxy, TokenServer, node_databases, serve_asgi, serve_nodes

from fhir_node.cli import main
from fhir_node.federation import Federation, NodesFileError, QueryError, load_nodes
from fhir_node.federation.calls import retry_after
from fhir_node.federation.fanout import parse_query
from fhir_node.federation.nodes import thumbprint
from fhir_node.rules import small_cells

COUNT = "EpisodeOfCare?status=active&_summary=count"
ACTIVE = "EpisodeOfCare?status=active&_count=2"
#: Each node's EpisodeOfCare: the same ids on several nodes, which the merged answer must keep apart.
DATA = {
    "north": {"ep-1": "active", "ep-2": "active", "ep-3": "active", "ep-4": "finished"},
    "south": {"ep-1": "active", "ep-2": "active"},
    "east": {"ep-1": "active", "ep-2": "active", "ep-3": "active", "ep-4": "active"},
    "west": {"ep-1": "active"},  # stopped once started
}
SLOW_SECONDS = 4.0


@dataclass
class World:
    tokens: TokenServer
    proxy: FaultProxy
    proxy_base: str
    bases: dict[str, str]
    keys: Path

    def node(self, name: str, *, via: str | None = None, key: str = "rsa", **extra: Any) -> dict[str, Any]:
        """A nodes-file entry for node `name` (or a proxy route `via` in front of it), authenticating with `key`:
        'rsa' (token endpoint discovered), 'ec' (token endpoint named), 'short' (tokens live 2 s), 'stranger'
        (a key the token server does not know)."""
        url = f"{self.proxy_base}/{via}" if via else self.bases[name]
        auth: dict[str, Any] = {"client_id": f"central-{key}", "private_key": f"{key}.pem"}
        if key == "ec":
            auth |= {"token_url": self.tokens.token_url(name), "kid": "ec-384", "scope": "system/EpisodeOfCare.rs"}
        return {"name": via or name, "url": url, "auth": auth, **extra}

    def nodes_file(self, *nodes: dict[str, Any]) -> Path:
        path = self.keys / f"nodes-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump({"nodes": list(nodes)}))
        return path


def _pem(path: Path, key: Any) -> Any:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return key.public_key()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Token server, fault proxy and three nodes (SQLite, audit on), started once for the module."""
    keys = tmp_path_factory.mktemp("keys")
    tokens = TokenServer()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens.register("central-rsa", thumbprint(rsa_key), _pem(keys / "rsa.pem", rsa_key))
    tokens.register("central-ec", "ec-384", _pem(keys / "ec.pem", ec.generate_private_key(ec.SECP384R1())))
    short_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens.register("central-short", thumbprint(short_key), _pem(keys / "short.pem", short_key), lifetime=2)
    _pem(keys / "stranger.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    proxy = FaultProxy()
    with ExitStack() as stack:
        tokens.base = stack.enter_context(serve_asgi(tokens.app()))
        proxy_base = stack.enter_context(serve_asgi(proxy.app()))
        folders = {name: tmp_path_factory.mktemp(name) for name in DATA}
        node_databases(folders, DATA)
        # The nodes' own small-cell suppression off: what is tested is the federation's, after summing.
        env = {"FHIR_NODE_AUDIT": "true", "FHIR_NODE_LOG_LEVEL": "WARNING", "FHIR_NODE_SMALL_CELL_MIN": "0"}
        envs = {name: {**tokens.node_env(name), **env} for name in DATA}
        bases = stack.enter_context(serve_nodes(folders, envs, stopped={"west"}))
        proxy.routes["slow-east"] = {"target": bases["east"], "delay": SLOW_SECONDS}
        yield World(tokens, proxy, proxy_base, bases, keys)


def federate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["federate", *args])
    return code, capsys.readouterr().out


def search(world: World, query: str, *nodes: dict[str, Any], max_entries: int | None = None, **options: Any) -> Any:
    async def run() -> Any:
        async with Federation(load_nodes(world.nodes_file(*nodes)), **options) as federation:
            return await federation.search(query, max_entries)

    return asyncio.run(run())


def test_a_count_sums_what_answered_and_reports_the_stopped_and_the_slow_node(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = world.nodes_file(
        world.node("north"),
        world.node("south", key="ec"),
        world.node("east", via="slow-east", timeout=1),
        world.node("west"),
    )
    started = time.monotonic()
    code, out = federate(["--nodes", str(nodes), "--format", "json", "--retries", "1", COUNT], capsys)
    assert time.monotonic() - started < SLOW_SECONDS  # the slow node never held the others up
    answer = json.loads(out)
    assert code == 2
    assert set(answer) == {"nodes", "total"}
    assert answer["total"] == 3 + 2
    assert [set(n) for n in answer["nodes"]] == [{"name", "ok", "status", "error", "seconds"}] * 4
    got = {n["name"]: (n["ok"], n["status"]) for n in answer["nodes"]}
    assert got == {"north": (True, 200), "south": (True, 200), "slow-east": (False, None), "west": (False, None)}
    east, west = answer["nodes"][2], answer["nodes"][3]
    assert east["error"] == "no answer within 1 s" and 1 <= east["seconds"] < SLOW_SECONDS
    assert west["error"].startswith("cannot connect")
    assert answer["nodes"][0]["error"] is None


def test_a_whole_answer_exits_0_with_a_table(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = world.nodes_file(world.node("north"), world.node("south", key="ec"), world.node("east"))
    code, out = federate(["--nodes", str(nodes), COUNT], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["node", "answer", "status", "seconds", "error"]
    assert [line.split()[:3] for line in lines[1:4]] == [
        ["north", "ok", "200"],
        ["south", "ok", "200"],
        ["east", "ok", "200"],
    ]
    assert "total: 9" in lines and lines[-1] == "3 of 3 nodes answered"


def test_small_counts_are_suppressed_after_summing_never_per_node(world: World) -> None:
    north, south = world.node("north"), world.node("south", key="ec")
    alone = search(world, COUNT, south)  # 2 on its own
    assert alone.total is None and alone.suppressed and alone.as_json()["total"] is None
    assert small_cells.masked(alone.bundle()) and "total" not in alone.bundle()
    both = search(world, COUNT, north, south)  # 3 + 2: each small, the sum is not
    assert both.total == 5 and not both.suppressed
    assert both.bundle() == {"resourceType": "Bundle", "type": "searchset", "total": 5}
    stricter = search(world, COUNT, north, south, suppress_below=6)
    assert stricter.total is None and stricter.as_json() == {"nodes": stricter.as_json()["nodes"], "total": None}
    nothing = search(world, "EpisodeOfCare?status=cancelled&_summary=count", north, south)
    assert nothing.total is None and nothing.suppressed  # 0 is a small cell too (small_cells.suppressed)


def test_a_count_a_node_withheld_leaves_no_sum_to_publish(world: World) -> None:
    world.proxy.routes["masked"] = {"target": world.bases["north"], "masked": True}
    answer = search(world, COUNT, world.node("north"), world.node("south", via="masked", key="ec"))
    assert [(r.name, r.ok) for r in answer.nodes] == [("north", True), ("masked", True)]
    assert answer.total is None and answer.suppressed and answer.as_json()["total"] is None


def test_a_search_merges_every_page_with_each_nodes_full_urls(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = world.nodes_file(world.node("north"), world.node("south", key="ec"))
    code, out = federate(["--nodes", str(nodes), "--format", "json", ACTIVE], capsys)
    assert code == 0
    answer = json.loads(out)
    assert set(answer) == {"nodes", "entries"}
    north, south = world.bases["north"], world.bases["south"]
    expected = [f"{north}/EpisodeOfCare/ep-{i}" for i in (1, 2, 3)] + [f"{south}/EpisodeOfCare/ep-{i}" for i in (1, 2)]
    assert [e["fullUrl"] for e in answer["entries"]] == expected
    assert {(e["resource"]["resourceType"], e["resource"]["status"]) for e in answer["entries"]} == {
        ("EpisodeOfCare", "active")
    }
    code, out = federate(["--nodes", str(nodes), ACTIVE], capsys)
    assert "entries: 5" in out and f"south  {south}/EpisodeOfCare/ep-2" in out


def test_max_stops_following_each_nodes_pages(world: World) -> None:
    answer = search(world, ACTIVE, world.node("north"), world.node("south", key="ec"), max_entries=1)
    assert [(node, e["fullUrl"].rsplit("/", 1)[1]) for node, e in answer.entries] == [
        ("north", "ep-1"),
        ("south", "ep-1"),
    ]
    three = search(world, ACTIVE, world.node("north"), max_entries=3)  # two pages of two, cut at three
    assert [e["resource"]["id"] for _, e in three.entries] == ["ep-1", "ep-2", "ep-3"]


def test_tokens_are_kept_until_they_expire_and_one_per_node(world: World) -> None:
    issued = world.tokens.issued

    async def run() -> list[Any]:
        nodes = load_nodes(world.nodes_file(world.node("north", key="short"), world.node("south", key="short")))
        async with Federation(nodes) as federation:
            first = await federation.search(COUNT)
            counted = (issued[("north", "central-short")], issued[("south", "central-short")])
            second = await federation.search(COUNT)
            assert (issued[("north", "central-short")], issued[("south", "central-short")]) == counted
            await asyncio.sleep(2)  # the 2 s tokens expire
            third = await federation.search(COUNT)
            assert issued[("north", "central-short")] == counted[0] + 1
            return [first, second, third]

    before = issued[("north", "central-short")]
    answers = asyncio.run(run())
    assert [a.total for a in answers] == [5, 5, 5] and all(a.complete for a in answers)
    assert issued[("north", "central-short")] == before + 2


def test_busy_nodes_are_retried_as_retry_after_says_within_the_timeout(world: World) -> None:
    world.proxy.routes["busy-south"] = {"target": world.bases["south"], "busy": [(503, "1"), (429, "0")]}
    world.proxy.routes["closed-north"] = {"target": world.bases["north"], "busy": [(503, "120")]}
    answer = search(
        world,
        COUNT,
        world.node("south", via="busy-south", key="ec"),
        world.node("north", via="closed-north"),
        timeout=10,
    )
    south, north = answer.nodes
    assert (south.ok, south.status, south.error) == (True, 200, None) and south.seconds >= 1
    assert world.proxy.hits["busy-south"] == 3
    # Retry-After beyond the node's timeout: given up at once, not waited for.
    assert (north.ok, north.status) == (False, 503) and "Retry-After: 120" in (north.error or "")
    assert north.seconds < 5 and world.proxy.hits["closed-north"] == 1
    assert answer.total is None and answer.suppressed  # 2 from south alone


def test_failures_that_retrying_cannot_mend_are_reported_at_once(world: World) -> None:
    world.proxy.routes["broken"] = {"target": world.bases["south"], "broken": True}
    world.proxy.routes["garbage"] = {"target": world.bases["south"], "garbage": True}
    # Behind a gateway without FHIR_NODE_BASE_URL, the node's next links name its own address, not the gateway's.
    world.proxy.routes["misconfigured"] = {"target": world.bases["north"]}
    answer = search(
        world,
        ACTIVE,
        world.node("north"),
        world.node("south", via="broken", key="ec"),
        world.node("south", via="garbage", key="ec"),
        world.node("south", key="stranger"),
        world.node("north", via="misconfigured"),
    )
    reports = {n.name: (n.ok, n.status, n.error) for n in answer.nodes}
    assert reports["north"] == (True, 200, None)
    assert reports["broken"] == (False, 500, "HTTP 500: database on fire")
    assert reports["garbage"] == (False, 200, "the answer is not a FHIR searchset Bundle")
    assert reports["south"][:2] == (False, 401) and reports["south"][2].startswith(
        "token endpoint: HTTP 401: invalid_client"
    )
    assert reports["misconfigured"][:2] == (False, 200)
    assert (reports["misconfigured"][2] or "").startswith(
        f"the next page link leaves the node's base {world.proxy_base}/misconfigured: "
        f"{world.bases['north']}/EpisodeOfCare?status=active&_count=2&_cursor="
    )
    assert world.proxy.hits["broken"] == 1 and world.proxy.hits["garbage"] == 1
    assert [e["fullUrl"] for _, e in answer.entries] == [
        f"{world.bases['north']}/EpisodeOfCare/ep-{i}" for i in (1, 2, 3)
    ]


def test_the_node_audits_the_federated_query_as_the_central_index(world: World) -> None:
    """The federated search went through the node's one request path: its log names the client and the query."""
    search(world, "EpisodeOfCare?status=finished&_summary=count", world.node("north"))
    token = world.tokens.issuer.token("ops", "operator", aud=world.tokens.audience("north"))
    events = httpx.get(
        f"{world.bases['north']}/AuditEvent?_count=1000", headers={"Authorization": f"Bearer {token}"}
    ).json()["entry"]
    queries = {
        base64.b64decode(x["query"]).decode(): e["resource"]
        for e in events
        for x in e["resource"]["entity"]
        if "query" in x
    }
    event = queries["GET /fhir/EpisodeOfCare?status=finished&_summary=count"]
    who = {a.get("who", {}).get("identifier", {}).get("value") for a in event["agent"]}
    assert "central-rsa" in who and event["outcome"] == "0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "/no/such/nodes.yaml", COUNT], "No such file"),
        (["--nodes", "{nodes}", "http://elsewhere/EpisodeOfCare"], "is not a search relative to a node's base"),
        (["--nodes", "{nodes}", "--bogus", COUNT], "unrecognized arguments: --bogus"),
        (["--nodes", "{nodes}", "--max", "0", ACTIVE], "--max"),
        (["--nodes", "{plain_http}", COUNT], "nodes[0].url: Value error, 'http://node.example.be/fhir': plain http"),
        (["--nodes", "{twice}", COUNT], "each node needs its own name: north appear"),
        (["--nodes", "{no_key}", COUNT], "nodes[0].auth.private_key"),
        ([COUNT], "the following arguments are required: --nodes"),
    ],
)
def test_usage_errors_exit_1_naming_the_problem(
    world: World, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    files = {
        "nodes": world.nodes_file(world.node("north")),
        "plain_http": world.nodes_file({"name": "x", "url": "http://node.example.be/fhir"}),
        "twice": world.nodes_file(world.node("north"), world.node("north", key="ec")),
        "no_key": world.nodes_file({**world.node("north"), "auth": {"client_id": "c", "private_key": "none.pem"}}),
    }
    with pytest.raises(SystemExit) as exit_:
        main(["federate", *(a.format(**files) for a in args)])
    assert exit_.value.code == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("query", "is_count"),
    [
        (COUNT, True),
        ("Patient?_summary=count&_has:Consent:patient:status=active", True),
        ("EpisodeOfCare?status=active", False),
        ("?_type=Patient,Organization&_summary=count", True),
        ("EpisodeOfCare/_history?_summary=count", True),
    ],
)
def test_a_query_is_a_search_relative_to_each_base(query: str, is_count: bool) -> None:
    assert parse_query(query) == (query, is_count)


@pytest.mark.parametrize(
    "query", ["", "https://evil.example/fhir/Patient", "/fhir/Patient", "EpisodeOfCare/../x", "a b"]
)
def test_anything_else_is_refused_before_any_node_is_asked(query: str) -> None:
    with pytest.raises(QueryError):
        parse_query(query)


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    later = email.utils.format_datetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30), True)
    waits = [retry_after(httpx.Response(503, headers={"Retry-After": v})) for v in ("7", later, "soon")]
    assert waits[0] == 7 and 28 <= (waits[1] or 0) <= 30 and waits[2] is None
    assert retry_after(httpx.Response(503)) is None


def test_a_p256_key_is_refused_smart_asks_for_rs384_or_es384(tmp_path: Path) -> None:
    _pem(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1()))
    nodes = tmp_path / "nodes.yaml"
    auth = {"client_id": "c", "private_key": "p256.pem"}
    nodes.write_text(yaml.safe_dump({"nodes": [{"name": "a", "url": "https://a.example/fhir/", "auth": auth}]}))
    with pytest.raises(NodesFileError, match=r"nodes\[0\]\.auth\.private_key: an RSA \(RS384\) or EC P-384"):
        load_nodes(nodes)
    _pem(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP384R1()))
    (node,) = load_nodes(nodes)
    assert node.url == "https://a.example/fhir" and node.auth and node.auth.algorithm == "ES384"
