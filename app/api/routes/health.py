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
    """503 while this replica cannot classify (loading, or its database is down); 200
    when it can, with each dependency's state: an image store that is down only stops
    enrolment and image reads, so a load balancer keeps sending classifications."""
    rt: Runtime = request.app.state.runtime
    if not rt.ready.is_set():
        msg = f"not ready: {rt.failed}" if rt.failed else "loading"
        return envelope(503, "not_ready", msg, {"Retry-After": "2"})
    deps = rt.dependencies()
    if deps["database"] != "up":
        return envelope(503, "not_ready", f"the database is {deps['database']}",
                        {"Retry-After": "2"})
    down = sorted(name for name, state in deps.items() if state != "up")
    return {"status": "degraded" if down else "ready", "model": rt.backbone.version,
            "classes": rt.cache.class_count(), "dependencies": deps}


@router.get("/metrics")
def metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    rt.metrics.queue_depth.set(rt.batcher.queued_images)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
