"""`POST /v1/chat/completions`: the route; the work is `OpenAIServingChat`'s (`server.chat.serving`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from server.auth import CheckedRoute, caller_scenario, tenant
from server.chat.protocol import ChatCompletion, ChatCompletionRequest
from server.chat.serving import OpenAIServingChat
from server.deps import ServicesDep
from server.errors import ignore_unknown_fields
from server.openai.serving import unless_disconnected
from server.openai.sse import streamed

router = APIRouter(route_class=CheckedRoute)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, services: ServicesDep,
                                 caller: str | None = Depends(tenant)) -> ChatCompletion | StreamingResponse:
    """Generate, reflecting and retrying while the request's verifier says no. Everything the request
    asks for is checked before its answer (or its stream) starts; its work stops if the client hangs up."""
    ignore_unknown_fields(request, body, services.settings.strict_request_fields)
    serving = OpenAIServingChat(services)
    checked = await unless_disconnected(request, serving.prepare(body, caller, caller_scenario(request),
                                                                 request.state.request_id))
    if body.stream:
        return await streamed(request, serving.stream(checked))
    return await unless_disconnected(request, serving.full(checked))
