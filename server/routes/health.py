"""`GET /health`: 200 once the model is loaded and the server takes requests."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, str]:
    return {"status": "ok", "model": request.app.state.engine.model_id}
