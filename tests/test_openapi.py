"""The HTTP door's OpenAPI document: valid OpenAPI 3.1 describing every route the door serves, and true
of the real door, which schemathesis checks by calling every operation of a real daemon with generated
requests (valid ones, and ones the document rules out): no server error, every reply documented."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from qmdd.protocol.schemas import load_schema
from qmdd.protocol.wire import METHODS, REQUIRED
from qmdd.tokens import read_token
from qmdd.transports.http import HttpDoor
from qmdd.transports.openapi import document
from qmdd.transports.ratelimit import RateLimiter
from qmdd.transports.rest import QMD_ALIASES, SEARCH_METHODS
from tests.conftest import Env

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
PATH_PARAMETER = "{target}"


@pytest.fixture
def door(env: Env, notes: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A daemon serving HTTP with `notes` indexed and embedded (vsearch has vectors to search), no rate
    limit (the run sends hundreds of requests); its URL and the token header."""
    env.vars["QMDD_HTTP_RATE_PER_MINUTE"] = "0"
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("embed")
    yield started["http"], {"authorization": f"Bearer {read_token(env.paths)}"}


def walk(node: Any, at: str = "#") -> Iterator[tuple[str, Any]]:
    yield at, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from walk(value, f"{at}/{key}")


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def served_routes() -> dict[str, set[str]]:
    """Path -> methods of every route the door's app serves (HEAD goes with GET), /mcp included."""
    door = HttpDoor(None, None, loopback=True, limiter=RateLimiter(0, 1),  # type: ignore[arg-type]
                    mcp_app=lambda: None)  # type: ignore[arg-type,return-value]
    app = inspect.getclosurevars(door.app()).nonlocals["routed"]
    routes = {route.path.replace("{target:path}", PATH_PARAMETER): set(route.methods) - {"HEAD"}
              for route in app.routes}
    return {**routes, "/mcp": {"POST"}}


# --- the document --------------------------------------------------------------------------------------

def test_the_document_is_valid_openapi_31() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0" and document() is doc  # built once
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema
    for at, node in walk(doc):
        if at.endswith("/schema") or at.rpartition("/")[0] == "#/components/schemas":
            Draft202012Validator.check_schema(node)
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            assert isinstance(resolve(doc, node["$ref"]), dict), f"{at}: {node['$ref']} resolves to nothing"
    json.dumps(doc, allow_nan=False)  # what the door sends


def test_every_route_is_documented_and_nothing_else() -> None:
    documented = {path: {verb.upper() for verb in operations} for path, operations in document()["paths"].items()}
    assert documented == served_routes()


def test_only_health_is_public_and_every_operation_can_fail_with_a_problem() -> None:
    for path, operations in document()["paths"].items():
        for operation in operations.values():
            assert ("security" in operation) == (path == "/health")
            statuses = operation["responses"]
            assert "500" in statuses and "403" in statuses
            assert ("401" in statuses and "429" in statuses) == (path != "/health")
            # OpenAI's clients read OpenAI's error object under /v1/, MCP clients a JSON-RPC error at /mcp;
            # everything else is problem details.
            if path == "/mcp":
                refused = statuses["429"]["content"]["application/json"]["schema"]
                assert refused["properties"]["error"]["properties"]["data"]["properties"]["code"] == {
                    "enum": ["RATE_LIMITED"]}
                continue
            content, schema = (("application/json", "OpenAIError") if path.startswith("/v1/") else
                               ("application/problem+json", "Problem"))
            problem = statuses["400" if "400" in statuses else "500"]["content"][content]
            assert problem["schema"]["allOf"][0] == {"$ref": f"#/components/schemas/{schema}"}


def test_search_bodies_are_the_parameters_the_daemon_validates() -> None:
    schemas = document()["components"]["schemas"]
    for method in SEARCH_METHODS:
        body = schemas[f"{method.capitalize()}Params"]
        assert set(body["properties"]) == set(METHODS[method]) | set(QMD_ALIASES)
        assert body["required"] == [name for name, (_, default) in METHODS[method].items() if default is REQUIRED]
        assert body["additionalProperties"] is False


def test_the_embeddings_body_is_the_parameters_the_daemon_validates() -> None:
    body = document()["components"]["schemas"]["EmbeddingsParams"]
    assert set(body["properties"]) == set(METHODS["embeddings"])
    assert body["required"] == [name for name, (_, default) in METHODS["embeddings"].items() if default is REQUIRED]
    assert body["additionalProperties"] is False


def test_replies_come_from_the_emit_spec_schemas() -> None:
    schemas = document()["components"]["schemas"]
    assert schemas["Collections"] == load_schema("collection-list")["output"]
    assert schemas["Status"] == load_schema("status")["output"]
    assert schemas["Document"] == load_schema("get")["output"]
    for method in SEARCH_METHODS:
        hit = schemas[f"{method.capitalize()}Reply"]["properties"]["results"]["items"]
        qmd_hit = load_schema(method)["output"]["items"]["properties"]
        # The daemon's hit has qmdctl's fields, the same but for `context`, which it sends as null too.
        assert {name for name, schema in qmd_hit.items() if hit["properties"][name] != schema} == {"context"}


# --- the door, against its document --------------------------------------------------------------------

QUERIES = ("alpha", "sqlite wal", "gnome screenshot", "全文搜索", "lex: alpha\nvec: databases", "hyde: a plan to ship")
"""Words of `notes`, so that a steered search finds something to rank, explain, snip and return whole."""


def steered(operation: Any) -> st.SearchStrategy[Any]:
    """Valid search requests that reach the engines and find hits: random queries, collection names and
    path prefixes are mostly refused or match nothing. The other fields (explain, full, snippet_lines,
    rerank, candidates, ...) are generated."""
    replaced = ("query", "collection", "collections", "limit", "path_prefix", "min_score", "minScore")

    def steer(case: Any, fields: dict[str, Any]) -> Any:
        case.body = {**{k: v for k, v in case.body.items() if k not in replaced}, **fields}
        return case
    fields = st.fixed_dictionaries({
        "query": st.sampled_from(QUERIES), "collection": st.sampled_from([None, "notes", ["notes"]]),
        "limit": st.integers(1, 30), "path_prefix": st.sampled_from([None, "projects", "projects/", "/"]),
        "min_score": st.one_of(st.none(), st.floats(0, 1))})
    return st.builds(steer, operation.as_strategy(), fields)


def plan(operation: Any, takes_input: bool) -> list[tuple[str, st.SearchStrategy[Any], int]]:
    """(name, strategy, examples) for an operation; the negative cases are checked to be refused."""
    if not takes_input:
        return [("positive", operation.as_strategy(), 3)]  # nothing to vary but the (replaced) token
    runs = [("positive", operation.as_strategy(), 100),
            ("negative", operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE), 50)]
    if operation.path.lstrip("/") in SEARCH_METHODS:
        runs.append(("steered", steered(operation), 100))
    return runs


def test_schemathesis_finds_no_server_error_and_no_undocumented_reply(door: tuple[str, dict[str, str]]) -> None:
    url, auth = door
    served = httpx.get(f"{url}/openapi.json", headers=auth, timeout=30)
    assert served.status_code == 200 and served.json() == json.loads(json.dumps(document()))
    schema = schemathesis.openapi.from_dict(served.json())  # from_url would leave /openapi.json itself out
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {f"{verb} {path}" for path, verbs in served_routes().items()
                                               for verb in verbs}
    failures: list[str] = []
    started = time.monotonic()
    for operation in operations:
        documented = document()["paths"][operation.path][operation.method.lower()]
        for name, strategy, examples in plan(operation, bool({"parameters", "requestBody"} & set(documented))):
            checks = [*CHECKS, negative_data_rejection] if name == "negative" else CHECKS
            try:
                exercise(strategy, examples, checks, url, auth)
            except (Exception, BaseExceptionGroup) as exc:  # every operation is tried, the failures reported together
                failures.append(f"{operation.label} ({name}): {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
    assert time.monotonic() - started < 120


def exercise(strategy: st.SearchStrategy[Any], examples: int, checks: list[Any], url: str,
             auth: dict[str, str]) -> None:
    """`examples` requests, the same ones each run (derandomized), each checked."""
    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def call(case: Any) -> None:
        case.call_and_validate(base_url=url, headers=auth, checks=checks, timeout=30)

    call()
