"""Shared dependencies: the runtime, and bearer-key auth with role checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Forbidden, NotReady, Unauthorized
from app.schemas import MAX_ID
from app.services.keys import Principal, authenticate
from app.services.runtime import Runtime

bearer = HTTPBearer(auto_error=False)


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    if not rt.ready.is_set():
        raise NotReady("the service is starting; retry shortly", headers={"Retry-After": "2"})
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require(*roles: str) -> Callable[..., Principal]:
    allowed = {"admin", *roles}

    def dep(rt: RuntimeDep, cred: Annotated[HTTPAuthorizationCredentials | None,
                                            Depends(bearer)]) -> Principal:
        if cred is None or not cred.credentials:
            raise Unauthorized("missing 'Authorization: Bearer <key>' header")
        assert rt.sessions is not None
        with rt.sessions() as s:
            who = authenticate(s, cred.credentials, rt.settings)
        if who.role not in allowed:
            raise Forbidden(f"a {who.role} key may not do this")
        return who

    return dep


IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]

Admin = Annotated[Principal, Depends(require())]
Operator = Annotated[Principal, Depends(require("operator"))]
Classifier = Annotated[Principal, Depends(require("operator", "machine"))]
