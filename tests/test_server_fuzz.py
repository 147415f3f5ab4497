"""Property-based fuzzing of the whole API from its own /openapi.json: no input may cause a 5xx.

Schemathesis generates valid (positive) and schema-violating (negative) requests for every
operation; the server must answer each with a 2xx/4xx, never a server error. Bounded: a short
context (few tokens per request) and a fixed number of examples per operation and mode.
"""

from __future__ import annotations

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from helios_worker.server.settings import ServerSettings
from tests.test_server_harness import live_server

MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def server(tiny_model):
    # A 32-token context keeps every generated request cheap; a queue keeps 429s out of the way.
    with live_server(ServerSettings(model=str(tiny_model("llama")), max_seq_len=32, max_queue=256)) as live:
        yield live


def operations(base_url: str):
    schema = schemathesis.openapi.from_dict(httpx.get(f"{base_url}/openapi.json").json())
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_causes_a_server_error(server, mode):
    session = requests.Session()
    server_errors: list[str] = []
    checked: list[str] = []
    for operation in operations(server.base_url):
        checked.append(operation.label)

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            response = case.call(base_url=server.base_url, session=session, timeout=30)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.path} {case.body!r} -> {response.status_code}")

        try:
            call()
        except Unsatisfiable:  # negative mode: an operation without inputs has nothing to break
            assert mode == GenerationMode.NEGATIVE, operation.label
    assert "POST /v1/completions" in checked and "POST /v1/chat/completions" in checked
    assert not server_errors, "\n".join(server_errors[:10])
