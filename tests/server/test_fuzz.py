"""Every route and method of the OpenAPI schema, fuzzed by schemathesis against a real ``kcore
serve`` on the tiny model: valid and invalid bodies, paths and headers.

Checks on every response: no 5xx; each status and body conforms to the published schema (which
declares OpenAI's error body for every 4xx); every 4xx body is OpenAI's error object, and one
for invalid input names the culprit in ``param`` where a field is to blame. The number of cases
run per operation is printed at the end of the module and must reach a floor, so a schema change
that silently stops generation fails here.

``FUZZ_EXAMPLES`` cases per operation and generation mode in the default run; ``-m slow`` runs
:func:`test_fuzz_long` with ten times as many.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import ignored_auth, positive_data_acceptance

from kernel_core.server.auth import OPEN_PATHS
from kernel_core.server.openapi import ROUTE_STATUSES

from .conftest import API_KEY, Server, start_server

FUZZ_EXAMPLES = int(os.environ.get("KCORE_FUZZ_EXAMPLES", "25"))
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Statuses of refusals that are about no single field of the body.
NO_FIELD = {401, 404, 405, 406, 408, 409, 413, 415, 431, 503}
ROUTES = sorted(ROUTE_STATUSES)
#: Operations with nothing to make invalid (no parameters, no body, no auth): positive cases only.
NO_INPUT = {("/health", "get"), ("/metrics", "get")}
CASES = [(route, mode) for route in ROUTES for mode in GenerationMode
         if mode is GenerationMode.POSITIVE or route not in NO_INPUT]


@pytest.fixture(scope="module")
def fuzz_server(tiny_model: Path, adapter_dir: Path, embedded_model_cache: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose work per request is bounded (64-token context), with an API key, an adapter
    and ``--adapter-dir``, so every route has something real behind it."""
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    server = start_server(
        tiny_model, log, "--api-key", API_KEY, "--adapter", f"qv8={adapter_dir / 'qv8'}",
        "--adapter-dir", str(adapter_dir), "--max-lora-rank", "16", "--max-model-len", "64",
        "--num-kv-blocks", "64",
        env={"KERNEL_CORE_CACHE": str(embedded_model_cache)},
    )
    yield server
    assert server.stop() == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def cases_run() -> Iterator[collections.Counter]:
    counts: collections.Counter = collections.Counter()
    yield counts
    print(f"\nschemathesis cases run: {sum(counts.values())} in all; by operation and status: " +
          ", ".join(f"{label} {status}: {n}" for (label, status), n in sorted(counts.items())))


@schemathesis.check
def openai_error_body(ctx, response, case) -> bool | None:
    """Every 4xx answer is ``{"error": {"message", "type", "param", "code"}}`` with a message, and a
    400 for a body that is not valid JSON or an invalid field says which field in ``param``."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(error) >= {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    if response.status_code == 400 and error["code"] not in ("invalid_json", "invalid_body"):
        # a 400 for a body that parsed into an object is about its fields: one must be named
        assert error["param"], body
    if response.status_code in NO_FIELD:
        assert error["param"] in (None, "model", "name", "path", "max_tokens"), body
    return True


def _call(case, mode: GenerationMode, fuzz_server: Server, cases_run: collections.Counter) -> None:
    case.headers = {**(case.headers or {}), **AUTH}  # bodies are fuzzed here, the key in test_fuzz_auth
    if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
        # a served name, or nearly every valid body would stop at 404 before reaching the engine
        case.body["model"] = (fuzz_server.model, "qv8")[len(repr(case.body)) % 2]
    response = case.call_and_validate(
        base_url=fuzz_server.base_url, additional_checks=[openai_error_body],
        # Limits no JSON Schema can state (the vocabulary, the context length, which names are
        # served, `prompt` xor `messages`) refuse some schema-valid bodies with a 400 that
        # `openai_error_body` checks names its field instead.
        # `ignored_auth` sends invalid keys, which the line above replaces: test_fuzz_auth covers them.
        excluded_checks=[positive_data_acceptance, ignored_auth],
    )
    cases_run[case.operation.label, response.status_code] += 1


def _fuzz(schema, route: tuple[str, str], mode: GenerationMode, examples: int, fuzz_server: Server,
          cases_run: collections.Counter) -> None:
    path, method = route
    operation = schema[path][method.upper()]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def run(case) -> None:
        _call(case, mode, fuzz_server, cases_run)

    run()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")
    published = {(op.ok().path, op.ok().method.lower()) for op in schema.get_all_operations()}
    assert published == set(ROUTES), "a route was added or removed: list its statuses in server/openapi.py"
    for path, method in NO_INPUT:
        operation = schema[path][method.upper()]
        assert not operation.body and not list(operation.iter_parameters()), (path, method)
    return schema


@pytest.mark.parametrize(("route", "mode"), CASES, ids=[f"{' '.join(r)} {m.value}" for r, m in CASES])
def test_fuzz(api_schema, route: tuple[str, str], mode: GenerationMode, fuzz_server: Server,
              cases_run: collections.Counter) -> None:
    _fuzz(api_schema, route, mode, FUZZ_EXAMPLES, fuzz_server, cases_run)


@pytest.mark.slow
@pytest.mark.parametrize(("route", "mode"), CASES, ids=[f"{' '.join(r)} {m.value}" for r, m in CASES])
def test_fuzz_long(api_schema, route: tuple[str, str], mode: GenerationMode, fuzz_server: Server,
                   cases_run: collections.Counter) -> None:
    _fuzz(api_schema, route, mode, FUZZ_EXAMPLES * 10, fuzz_server, cases_run)


def test_fuzz_left_the_server_whole(fuzz_server: Server, cases_run: collections.Counter) -> None:
    """After the fuzzing (this module's tests run in order): enough cases ran for every operation,
    and the server is idle with its KV pool whole."""
    by_operation: collections.Counter = collections.Counter()
    for (label, _), count in cases_run.items():
        by_operation[label] += count
    for path, method in ROUTES:
        floor = 1 if (path, method) in NO_INPUT else min(FUZZ_EXAMPLES, 5)
        assert by_operation[f"{method.upper()} {path}"] >= floor, cases_run
    for label in ("POST /v1/completions", "POST /v1/chat/completions"):
        assert cases_run[label, 200] > 0, f"no fuzzed {label} reached the engine: {cases_run}"
    fuzz_server.wait_idle()


@pytest.mark.parametrize("route", [r for r in ROUTES if r[0] not in OPEN_PATHS], ids=" ".join)
@given(header=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64))
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
          derandomize=True)
def test_fuzz_auth(route: tuple[str, str], header: str, fuzz_server: Server) -> None:
    """Any ``Authorization`` value but the key gets 401 with OpenAI's body on every keyed route,
    before the body is even looked at."""
    path, method = route
    status, body = fuzz_server.request(method.upper(), path.replace("{name}", "qv8"), {}, key=None,
                                       headers={"Authorization": header})
    assert header.strip() != f"Bearer {API_KEY}"
    assert status == 401, body
    assert body["error"]["code"] == "invalid_api_key", body
