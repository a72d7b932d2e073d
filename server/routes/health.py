"""`GET /health` (and `HEAD`, as load balancers probe): 200 once the model is loaded and the server takes requests."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
@router.head("/health", include_in_schema=False)  # load balancers probe with HEAD
async def health(request: Request) -> dict[str, str]:
    return {"status": "ok", "model": request.app.state.engine.model_id}
