"""The FastAPI application: create_app() wires settings, runtime, routes and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.api.routes import (
    anomaly,
    audit,
    classes,
    classify,
    console,
    health,
    keys,
    push,
    results,
)
from app.docs import install_docs
from app.errors import install_handlers
from app.middleware import BodyLimit, InFlightLimit, KeyGate, RequestMetrics, SecurityHeaders
from app.services.runtime import Runtime
from app.settings import Settings, get_settings
from storage.notify import ChangeListener

STATIC = Path(__file__).parent / "static"


async def sync_loop(runtime: Runtime) -> None:
    """Keep this replica's prototype cache, keys and push targets coherent with the other
    replicas' writes: at once when PostgreSQL notifies a change (storage/notify.py), and
    every FSDI_SYNC_INTERVAL_MS in any case (SQLite, or notifications lost)."""
    interval = runtime.settings.sync_interval_ms / 1000
    if interval <= 0:
        return
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    listener = None
    if (runtime.settings.sync_notify
            and runtime.settings.resolved_database_url.startswith("postgresql")):
        listener = ChangeListener(runtime.settings.resolved_database_url,
                                  lambda: loop.call_soon_threadsafe(wake.set))
        listener.start()
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
            try:
                await asyncio.to_thread(runtime.sync_once)
            except Exception:  # a database hiccup must not end the loop
                logging.getLogger("fsdi").exception("replica sync failed; retrying")
    finally:
        if listener is not None:
            await asyncio.to_thread(listener.stop)


async def housekeeping_loop(runtime: Runtime, interval_s: float = 3600.0) -> None:
    """Every `interval_s`: remove the query-image packs and the result rows past their
    retention, and the answers kept for idempotent requests past a day."""
    while True:
        await asyncio.sleep(interval_s)
        for step in (runtime.prune_query_images, runtime.prune_results,
                     runtime.prune_idempotent):
            try:
                await asyncio.to_thread(step)
            except Exception:  # a hiccup of the disk or database must not end the loop
                logging.getLogger("fsdi").exception("%s failed; retrying", step.__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Migrations finish before uvicorn reports start-up complete (a tidy log, and the
        # schema is settled before any request); the slow rest loads while /healthz answers.
        try:
            await asyncio.to_thread(runtime.open_database)
        except Exception:  # load() retries and, failing again, keeps /readyz at 503
            logging.getLogger("fsdi").exception("database not ready at start-up")
        loader = asyncio.get_running_loop().run_in_executor(None, runtime.load)
        batcher = runtime.batcher
        await batcher.start()
        runtime.results.start()
        sync = asyncio.create_task(sync_loop(runtime), name="fsdi-replica-sync")
        housekeeping = asyncio.create_task(housekeeping_loop(runtime), name="fsdi-housekeeping")
        await runtime.pusher.start()
        if settings.opcua_url:
            from app.services.opcua import LineServer

            runtime.opcua = LineServer(runtime)
            await runtime.opcua.start()
        try:
            yield
        finally:
            if runtime.opcua is not None:
                await runtime.opcua.stop()
                runtime.opcua = None
            sync.cancel()
            housekeeping.cancel()
            await runtime.pusher.stop()
            await batcher.stop()
            runtime.results.stop()
            await loader
            runtime.close()

    # /docs is served from the package (no CDN: a factory network has no internet);
    # ReDoc, which would load from a CDN, is off.
    app = FastAPI(title="FSDI — few-shot defect inspection", version="0.1.0",
                  lifespan=lifespan, docs_url=None, redoc_url=None,
                  # operation ids as a generated client wants them: `classify`, not
                  # `classify_api_v1_classify_post`
                  generate_unique_id_function=lambda route: route.name)
    install_docs(app)
    app.state.runtime = runtime
    install_handlers(app)
    # Routes are matched in this order: /classify, the hot path, comes first (matching it
    # last cost a scan of every other route on each request).
    for r in (classify.router, health.router, keys.router, classes.router, audit.router,
              console.router, push.router, anomaly.router, results.router):
        app.include_router(r)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # Added inner to outer: a request meets SecurityHeaders first, then metrics, the
    # in-flight cap, the key check (before any body byte) and the body-size cap.
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(KeyGate, runtime=runtime)
    app.add_middleware(InFlightLimit, limit=settings.max_in_flight)
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    app.add_middleware(SecurityHeaders)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return app
