"""The OpenAPI document describes the whole API: every answer's schema, and the bearer key."""

from __future__ import annotations

import pytest

from r3.settings import Settings
from server.app import create_app

OPEN = {"/health", "/metrics"}  # served without a key
TEXT = {"/metrics"}  # Prometheus' text format, not JSON

DOCUMENT = create_app(Settings()).openapi()  # no app is started: no model, no database
OPERATIONS = [(path, method, operation) for path, methods in DOCUMENT["paths"].items()
              if not path.startswith("/dashboard")  # the dashboard's HTML pages
              for method, operation in methods.items()]


def test_the_document_lists_every_route() -> None:
    paths = set(DOCUMENT["paths"])
    assert {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/feedback",
            "/v1/episodes/{episode_id}", "/admin/episodes", "/admin/adapters", "/admin/adapters/rollback",
            "/admin/adapters/{name}/activate", "/admin/train", "/admin/stats", "/admin/actions"} <= paths


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS, ids=[f"{m} {p}" for p, m, _ in OPERATIONS])
def test_every_route_declares_its_answer(path: str, method: str, operation: dict) -> None:
    answer = operation["responses"]["200"]["content"]
    media_type = next(iter(answer)) if path in TEXT else "application/json"
    if path in TEXT:
        assert media_type.startswith("text/plain")
    schema = answer[media_type]["schema"]
    assert schema and schema != {"type": "object", "additionalProperties": True}, schema
    if media_type == "application/json":
        assert "$ref" in schema or "anyOf" in schema, f"{method} {path}: no named schema: {schema}"


def test_the_bearer_key_is_declared() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    for path, method, operation in OPERATIONS:
        required = [name for entry in operation.get("security", []) for name in entry]
        assert bool(required) != (path in OPEN), f"{method} {path} security: {required}"
        assert all(schemes[name]["scheme"] == "bearer" for name in required)


def test_admin_schemas_are_in_the_document() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert {"AdapterList", "Activation", "TrainingRequested", "TrainingState", "StatsReport", "AdminActionList",
            "Health", "LiveStats"} <= set(schemas)
    assert "from" in schemas["AdminActionOut"]["properties"]  # the wire name, not the Python one
    assert schemas["TrainingRoundOut"]["properties"]["requested_at"]["format"] == "date-time"


def test_a_bad_request_is_documented_as_the_400_it_gets() -> None:
    """R3 answers invalid input 400 with OpenAI's error object, never FastAPI's 422: the document says so."""
    schemas = DOCUMENT["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and schemas["ErrorResponse"]["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["properties"]) == {"message", "type", "param", "code"}
    assert not [(method, path) for path, method, operation in OPERATIONS if "422" in operation["responses"]]
    for path in ("/v1/chat/completions", "/v1/completions", "/feedback"):
        answer = DOCUMENT["paths"][path]["post"]["responses"]["400"]["content"]["application/json"]
        assert answer["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
