"""OpenAPI docs served from the package: Swagger UI's assets come from the installed
`fastapi-offline` wheel, never from a CDN (a factory network has no internet)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"


def _csp_for(html: str) -> str:
    """Allow exactly the page's own inline start-up script (by hash), nothing else inline
    but Swagger UI's styles."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(src.encode()).digest()).decode() + "'"
        for src in re.findall(r"<script>(.*?)</script>", html, re.S))
    return (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")


def install_docs(app: FastAPI) -> None:
    app.mount("/docs-assets", StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} — API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png")
        html = bytes(page.body).decode()
        return HTMLResponse(html, headers={"Content-Security-Policy": _csp_for(html)})
