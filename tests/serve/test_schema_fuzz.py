"""schemathesis against the server's own OpenAPI schema: whatever it sends, no answer is a 5xx.

Each operation's hypothesis strategy is driven directly (schemathesis' pytest plugin does
not load under this pytest), with a bounded number of examples per operation.
"""

from __future__ import annotations

import itertools

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

EXAMPLES_PER_OPERATION = 30


def test_no_input_gets_a_server_error(server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path != "/metrics"]  # plain text; a scrape asks the engine
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/tokenize"}
    seen: dict[str, set[int]] = {}
    for operation, mode in itertools.product(operations, GenerationMode):  # valid bodies, then invalid ones
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # a GET without parameters has no invalid form

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        def check(case) -> None:
            response = case.call(base_url=server.url, timeout=60)
            seen.setdefault(
                f"{case.method} {case.path} {case.meta.generation.mode.value if case.meta else ''}", set()
            ).add(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {response.text[:500]}"
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
    assert any(200 in statuses for statuses in seen.values())
