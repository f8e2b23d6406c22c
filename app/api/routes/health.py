"""Liveness, readiness and metrics: no auth, for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.errors import envelope
from app.services.runtime import Runtime

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(request: Request) -> Response | dict[str, object]:
    rt: Runtime = request.app.state.runtime
    if not rt.ready.is_set():
        msg = f"not ready: {rt.failed}" if rt.failed else "loading"
        return envelope(503, "not_ready", msg, {"Retry-After": "2"})
    return {"status": "ready", "model": rt.backbone.version,
            "classes": rt.cache.class_count()}


@router.get("/metrics")
def metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    rt.metrics.queue_depth.set(rt.batcher.queued_images)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
