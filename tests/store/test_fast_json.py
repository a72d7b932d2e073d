"""The episode log's JSON encoder writes what the standard library would read back, for any episode."""

from __future__ import annotations

import json
import math

import pytest

from r3.store import fast_json


@pytest.mark.parametrize(
    "value",
    [
        {"messages": [{"role": "user", "content": "Grüße, 東京 🌧"}], "logprobs": [-0.5, -1e-9], "n": None},
        {"target": 10**30, "negative": -(2**70)},  # a client's JSON may hold integers beyond 64 bits
        {"content": "half a pair: \ud800"},  # a lone surrogate, which the standard library escapes
        {1: "a key that is not a string", None: "another"},
    ],
)
def test_reads_back_as_the_standard_library_writes_it(value):
    assert json.loads(fast_json.dumps(value)) == json.loads(json.dumps(value))


def test_non_numbers_become_null():
    assert json.loads(fast_json.dumps({"x": [math.nan, -math.inf]})) == {"x": [None, None]}
