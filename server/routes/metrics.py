"""`GET /metrics`: the Prometheus numbers (`server.metrics`), in Prometheus' text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.deps import EpisodeLogDep, MetricsDep, StoreDep

router = APIRouter()

_TEXT = {"description": "Prometheus' text exposition format",
         "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}


@router.get("/metrics", response_class=Response, responses={200: _TEXT})
async def metrics(metrics: MetricsDep, log: EpisodeLogDep, store: StoreDep) -> Response:
    return Response(await metrics.scrape(log, store.rounds), media_type=CONTENT_TYPE_LATEST)
