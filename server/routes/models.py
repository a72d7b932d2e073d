"""`GET /v1/models`: the base model and every loaded adapter."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    engine, started = request.app.state.engine, request.app.state.started
    base = ModelCard(id=engine.model_id, created=started, root=engine.model_id)
    adapters = [
        ModelCard(id=name, created=started, root=str(path), parent=engine.model_id)
        for name, path in engine.adapters().items()
    ]
    return ModelList(data=[base, *adapters])
