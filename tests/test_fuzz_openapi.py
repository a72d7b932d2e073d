"""A bounded fuzz of the whole API from its OpenAPI document (schemathesis): no input makes a 5xx.

Schemathesis generates valid and invalid requests for every operation the document lists (bodies,
query and path parameters), against a real server with the bundled model; every answer must be
below 500. The run is bounded (`MAX_EXAMPLES` per operation) so that it takes well under a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from support import ThreadedServer

from r3.settings import Settings
from server.app import create_app

KEY = "r3-fuzz-key"  # both an API key and the admin key, so every operation gets past its auth
MAX_EXAMPLES = 100


# The document needs no running app (no model): it is read at collection, one test per operation.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.hook
def before_generate_body(context, strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Half the bodies that name a model name one that exists: a random name is a 404 before the
    request reaches the prompt, the engine or the verifiers."""
    def served(pair: tuple) -> object:
        body, pick = pair
        return {**body, "model": "base"} if pick and isinstance(body, dict) and "model" in body else body

    return st.tuples(strategy, st.booleans()).map(served)


@pytest.fixture(scope="module")
def url(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    # A short context keeps what the fuzzer gets generated short.
    server_settings = Settings(models_dir=model_path.parent, data_dir=tmp_path_factory.mktemp("fuzz-data"),
                               api_keys=[KEY], admin_key=KEY, default_max_tokens=2, max_model_len=96)
    with ThreadedServer(create_app(server_settings)) as base_url:
        yield base_url


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_a_server_error(case, url) -> None:
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, checks=[not_a_server_error],
                           timeout=60)
