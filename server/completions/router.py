"""`POST /v1/completions` (the legacy text completion): the route; the work is
`OpenAIServingCompletion`'s (`server.completions.serving`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from server.auth import CheckedRoute, caller_scenario
from server.completions.protocol import Completion, CompletionRequest
from server.completions.serving import OpenAIServingCompletion
from server.deps import ServicesDep
from server.errors import ignore_unknown_fields
from server.openai.serving import unless_disconnected
from server.openai.sse import streamed

router = APIRouter(route_class=CheckedRoute)


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request,
                            services: ServicesDep) -> Completion | StreamingResponse:
    """A prompt's continuation (with `logprobs` and `echo`: how evaluation tools score a model).
    Everything the request asks for is checked before its answer (or its stream) starts."""
    ignore_unknown_fields(request, body, services.settings.strict_request_fields)
    serving = OpenAIServingCompletion(services)
    checked = await serving.prepare(body, caller_scenario(request))
    if body.stream:
        return await streamed(request, serving.stream(checked))
    return await unless_disconnected(request, serving.full(checked))
