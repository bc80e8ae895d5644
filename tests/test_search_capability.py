"""The CapabilityStatement walk: every search parameter the node advertises, for every type and at system
level, is shown to filter. For each, a value present in the dataset is searched for and the result must be
exactly the oracle's, and neither empty nor everything; where only some resources have a value, :missing
is checked both ways too. A parameter the oracle does not know, or for which no such value exists, fails;
except on the published guide's types, whose data is fixed (see `_honoured_by_the_guide`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from search_data import (
    COMMON,
    GUIDE_TYPES,
    PARAMS,
    Loaded,
    Oracle,
    all_match_ids,
    assert_search,
    date_ranges,
    refs,
    strings,
    tokens,
    values_of,
)

TYPES = tuple(PARAMS)
#: A value no published file holds, per parameter type.
ABSENT = {
    "token": "no-such-code",
    "string": "zz-no-such-text",
    "uri": "urn:fhir-node:absent",
    "reference": "urn:fhir-node:absent",
    "date": "eq1901-01-01",
}


def _statement(env: Loaded) -> dict[str, Any]:
    r = env.client.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    return r.json()


def _advertised(env: Loaded) -> dict[str | None, dict[str, str]]:
    """name -> type of each searchParam, per resource type (None: system level)."""
    rest = _statement(env)["rest"][0]
    out: dict[str | None, dict[str, str]] = {
        r["type"]: {p["name"]: p["type"] for p in r["searchParam"]} for r in rest["resource"]
    }
    out[None] = {p["name"]: p["type"] for p in rest.get("searchParam", [])}
    return out


def test_the_oracle_knows_every_advertised_parameter(searched: Loaded) -> None:
    """And the node advertises every parameter the oracle checks: the walk below covers exactly the statement."""
    advertised = _advertised(searched)
    assert set(advertised) - {None} == set(TYPES)
    for res_type in TYPES:
        ours = {code: kind for code, (kind, _) in PARAMS[res_type].items()}
        assert advertised[res_type] == ours, res_type
    assert advertised[None] == {code: kind for code, (kind, _) in COMMON.items()}


def _escape(value: str) -> str:
    return re.sub(r"([\\,$|])", r"\\\1", value)


def _candidates(res_type: str, code: str, resources: list[dict[str, Any]]) -> Iterator[str]:
    """Queries (`name=value`) built from the values `code` takes in the data, most specific first."""
    kind, _ = PARAMS[res_type][code]
    for resource in resources:
        for element in values_of(res_type, code, resource):
            if kind == "token":
                for t in tokens(element):
                    if t.code is not None:
                        yield (
                            f"{code}={_escape(t.system)}|{_escape(t.code)}" if t.system else f"{code}={_escape(t.code)}"
                        )
                    yield from (f"{code}:text={_escape(text.split()[0])}" for text in t.texts)
            elif kind == "string":
                yield from (f"{code}={_escape(s)}" for s in strings(element))
                yield from (f"{code}={_escape(s[:3])}" for s in strings(element))
            elif kind == "date":
                found = (
                    [element] if isinstance(element, str) else [element[k] for k in ("start", "end") if k in element]
                )
                assert date_ranges(element), element
                yield from (f"{code}={prefix}{v}" for v in found for prefix in ("eq", "ge", "le", "sa", "eb"))
            elif kind == "reference":
                for r in refs(element):
                    if r.res_id:
                        yield f"{code}={r.res_type}/{r.res_id}"
                    elif r.url:
                        yield f"{code}={r.url}"
                    else:
                        yield f"{code}:identifier={_escape(r.system or '')}|{_escape(r.value or '')}"
            else:
                yield f"{code}={_escape(element)}"
                yield f"{code}:below={_escape(element)}"


def _discriminating(oracle: Oracle, res_type: str, code: str) -> str | None:
    everything = oracle.dataset.ids(res_type)
    for candidate in _candidates(res_type, code, oracle.dataset.of(res_type)):
        if 0 < len(oracle.ids(res_type, candidate)) < len(everything):
            return candidate
    return None


@pytest.mark.parametrize(("res_type", "code"), [(t, c) for t in TYPES for c in PARAMS[t]], ids=str)
def test_advertised_parameter_filters(searched: Loaded, res_type: str, code: str) -> None:
    assert code in _advertised(searched)[res_type], f"{res_type}.{code} is not in the CapabilityStatement"
    found = [bool(values_of(res_type, code, r)) for r in searched.dataset.of(res_type)]
    candidate = _discriminating(searched.oracle, res_type, code)
    if candidate is None and res_type in GUIDE_TYPES:
        _honoured_by_the_guide(searched, res_type, code)
        return
    if candidate is None and not (any(found) and not all(found)):
        pytest.fail(f"no value in the dataset shows that {res_type}?{code} filters: extend tests/search_data.py")
    if candidate is not None:
        assert_search(searched, res_type, candidate)
    if any(found) and not all(found):
        assert_search(searched, res_type, f"{code}:missing=true")
        assert_search(searched, res_type, f"{code}:missing=false")


def _honoured_by_the_guide(env: Loaded, res_type: str, code: str) -> None:
    """The guide's data is our published files (one ImplementationGuide, one publisher and date for all,
    no useContext): where no value of theirs discriminates, a value they hold must select exactly the
    oracle's resources and one they do not hold none, and :missing both ways must split them as the oracle
    does. The parameter is then shown honoured, not ignored; one no file gives a value, by :missing alone."""
    kind, _ = PARAMS[res_type][code]
    held = next(_candidates(res_type, code, env.dataset.of(res_type)), None)
    if held is not None:
        assert assert_search(env, res_type, held, discriminating=False), held
        assert not assert_search(env, res_type, f"{code}={ABSENT[kind]}", discriminating=False)
    assert_search(env, res_type, f"{code}:missing=true", discriminating=False)
    assert_search(env, res_type, f"{code}:missing=false", discriminating=False)


@pytest.mark.parametrize("code", list(COMMON))
def test_advertised_system_parameter_filters(searched: Loaded, code: str) -> None:
    """At system level a value shared across types must select the same resources in each of them."""
    assert code in _advertised(searched)[None], f"{code} is not a system-level searchParam"
    oracle = searched.oracle
    everything = oracle.typed(TYPES, "")
    candidates = (c for t in TYPES for c in _candidates(t, code, oracle.dataset.of(t)))
    candidate = next((c for c in candidates if 0 < len(oracle.typed(TYPES, c)) < len(everything)), None)
    assert candidate is not None, f"no value in the dataset shows that system-level {code} filters"
    got = all_match_ids(searched.client, None, candidate)
    assert len(got) == len(set(got)) and set(got) == oracle.typed(TYPES, candidate), candidate
