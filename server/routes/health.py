"""`GET /health` (and `HEAD`, as load balancers probe): 200 once the model is loaded and the server takes requests."""

from __future__ import annotations

from fastapi import APIRouter

from server.admin_protocol import Health
from server.deps import EngineDep

router = APIRouter()


@router.get("/health", response_model=Health)
@router.head("/health", include_in_schema=False)  # load balancers probe with HEAD
async def health(engine: EngineDep) -> dict[str, str]:
    return {"status": "ok", "model": engine.model_id}
