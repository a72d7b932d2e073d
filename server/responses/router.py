"""`POST /v1/responses` and `GET /v1/responses/{response_id}`: the routes; the work is
`OpenAIServingResponses`'s (`server.responses.serving`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from server.auth import CheckedRoute, caller_scenario, tenant
from server.deps import EpisodeLogDep, ServicesDep, TenantDep, recordable
from server.errors import ignore_unknown_fields
from server.openai.serving import unless_disconnected
from server.openai.sse import streamed
from server.responses.protocol import Response, ResponsesRequest
from server.responses.serving import OpenAIServingResponses, stored_response
from server.responses.sse import ResponseEvents

router = APIRouter(route_class=CheckedRoute)

_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": Response, "description": "The response; with `stream: true`, its events as server-sent events",
          "content": {"text/event-stream": {"schema": {"type": "string", "description": "server-sent events, "
                                                       "each `event: <type>` and `data: <event>`"}}}}}


# Like chat completions, it records an episode: refused up front (503) while one could not be recorded.
@router.post("/v1/responses", response_model=None, responses=_ANSWERS, dependencies=[Depends(recordable)])
async def create_response(body: ResponsesRequest, request: Request, services: ServicesDep,
                          caller: str | None = Depends(tenant)) -> Response | StreamingResponse:
    """Generate, reflecting and retrying while the request's verifier says no. Everything the request
    asks for is checked before its answer (or its stream) starts; its work stops if the client hangs up."""
    # Before the unknown-field policy: a built-in tool's own fields say what it is, not a misspelling.
    body.refuse_unsupported()
    ignore_unknown_fields(request, body, services.settings.strict_request_fields)
    serving = OpenAIServingResponses(services)
    job = await unless_disconnected(request, serving.prepare_response(body, caller, caller_scenario(request),
                                                                      request.state.request_id))
    if body.stream:
        events = ResponseEvents()
        return await streamed(request, serving.stream_response(job, events), framing=events.framed)
    return await unless_disconnected(request, serving.full_response(job))


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, log: EpisodeLogDep, caller: TenantDep) -> Response:
    """One of the caller's responses, as it was answered (R3's account of it as it is now). A response
    made with `store: false` kept nothing to return."""
    return await stored_response(log, response_id, caller)
