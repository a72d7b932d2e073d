"""`GET /metrics`: the Prometheus numbers (`server.metrics`), in Prometheus' text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from r3.store.rounds import TrainingRounds
from server.deps import MetricsDep, RegistryDep, StoreDep

router = APIRouter()

_TEXT = {"description": "Prometheus' text exposition format",
         "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}


@router.get("/metrics", response_class=Response, responses={200: _TEXT})
async def metrics(metrics: MetricsDep, store: StoreDep, registry: RegistryDep) -> Response:
    return Response(await metrics.scrape(store, TrainingRounds(registry.sessions)), media_type=CONTENT_TYPE_LATEST)
