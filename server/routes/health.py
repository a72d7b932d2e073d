"""`GET /health` (and `HEAD`, as load balancers probe): 200 once the model is loaded and the server takes
requests; 503 while it cannot take them (its episode journal cannot be written), saying why.

A database that is down does not make the server unready: chat goes on, the journal keeps the episodes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.admin_protocol import Health
from server.deps import EngineDep, EpisodeLogDep
from server.errors import RETRY_AFTER_S

router = APIRouter()


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Not ready"}})
@router.head("/health", include_in_schema=False)  # load balancers probe with HEAD
async def health(engine: EngineDep, log: EpisodeLogDep, response: Response) -> Health:
    problem = log.unrecordable()
    if problem is not None:
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return Health(status="unavailable", model=engine.model_id, reason=problem)
    return Health(status="ok", model=engine.model_id)
