"""A tiny OpenAI-compatible judge for the model graders' tests: `POST /v1/chat/completions`, served on
loopback by `support.ThreadedServer`. What it answers depends on the request, so a test checks the
plumbing exactly:

- model `judge`: reads the answer, what follows the last colon of the last message; a score request
  (its schema's `result` is a number) scores 9 when it mentions `Paris`, else 2; a label request
  (`result` has an `enum`) labels it `correct` or `incorrect` the same way. One step, whose
  conclusion says which.
- model `flaky`: a 503 for its first `flaky_failures` calls since the last `reset`, then as `judge`.
- model `slow`: answers as `judge` after `SLOW_S` seconds.
- model `unreadable`: prose, not JSON. `out_of_range`: scores 15. `refusing`: a refusal.
  `rambling`: cut off by its token limit (finish_reason `length`). Any other model: a 404 OpenAI error.

Usage is `PROMPT_TOKENS_PER_MESSAGE` a message and `COMPLETION_TOKENS` a reply. Every request's body
and headers are kept in `requests`, and `most_at_once` is the most requests it answered at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SLOW_S = 0.5
PROMPT_TOKENS_PER_MESSAGE = 10
COMPLETION_TOKENS = 7
PASSING_SCORE, FAILING_SCORE = 9, 2


class OpenAICompatibleJudge:
    def __init__(self, flaky_failures: int = 2) -> None:
        self.flaky_failures = flaky_failures
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self._flaky_calls = 0
        self.answering = self.most_at_once = 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._complete)

    def reset(self) -> None:
        self.requests.clear()
        self._flaky_calls = self.most_at_once = 0

    async def _complete(self, request: Request) -> JSONResponse:
        self.answering += 1
        self.most_at_once = max(self.most_at_once, self.answering)
        try:
            return await self._answer(request)
        finally:
            self.answering -= 1

    async def _answer(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append((body, dict(request.headers)))
        model = body["model"]
        if model == "flaky":
            self._flaky_calls += 1
            if self._flaky_calls <= self.flaky_failures:
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        elif model == "slow":
            await asyncio.sleep(SLOW_S)
        elif model not in ("judge", "unreadable", "out_of_range", "refusing", "rambling"):
            return JSONResponse({"error": {"message": f"The model `{model}` does not exist",
                                           "type": "invalid_request_error", "param": "model",
                                           "code": "model_not_found"}}, status_code=404)
        return JSONResponse(_completion(model, body))


def _completion(model: str, body: dict[str, Any]) -> dict[str, Any]:
    right = "Paris" in body["messages"][-1]["content"].rpartition(":")[2]
    result_schema = body["response_format"]["json_schema"]["schema"]["properties"]["result"]
    if "enum" in result_schema:
        result: Any = "correct" if right else "incorrect"
    else:
        result = 15 if model == "out_of_range" else PASSING_SCORE if right else FAILING_SCORE
    step = {"description": "compare the answer with the reference",
            "conclusion": "the answer names Paris" if right else "the answer does not name Paris"}
    content: str | None = json.dumps({"steps": [step], "result": result})
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    finish = "stop"
    if model == "unreadable":
        message["content"] = "I think the answer is rather good."
    elif model == "refusing":
        message.update(content=None, refusal="I cannot grade this.")
    elif model == "rambling":
        message["content"], finish = content[:20], "length"
    return {"id": "chatcmpl-judge", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": PROMPT_TOKENS_PER_MESSAGE * len(body["messages"]),
                      "completion_tokens": COMPLETION_TOKENS,
                      "total_tokens": PROMPT_TOKENS_PER_MESSAGE * len(body["messages"]) + COMPLETION_TOKENS}}
