"""Shared dependencies: the runtime, and bearer-key auth with role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.errors import Forbidden, NotReady, Unauthorized
from app.schemas import MAX_ID
from app.services.keys import Principal, authenticate, env_admin, hash_key
from app.services.runtime import Runtime

bearer = HTTPBearer(auto_error=False)


async def get_runtime(request: Request) -> Runtime:  # async: no thread-pool hop
    rt: Runtime = request.app.state.runtime
    if not rt.ready.is_set():
        raise NotReady("the service is starting; retry shortly", headers={"Retry-After": "2"})
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
    allowed = {"admin", *roles}

    async def dep(rt: RuntimeDep, cred: Annotated[HTTPAuthorizationCredentials | None,
                                                  Depends(bearer)]) -> Principal:
        if cred is None or not cred.credentials:
            raise Unauthorized("missing 'Authorization: Bearer <key>' header")
        # Only a stored key needs the database (unless verified moments ago), and only
        # that lookup leaves the loop.
        digest = hash_key(cred.credentials)
        who = env_admin(digest, rt.settings) or rt.key_cache.get(digest)
        if who is None:
            who = await run_in_threadpool(_lookup, rt, digest)
        if who.role not in allowed:
            raise Forbidden(f"a {who.role} key may not do this")
        return who

    return dep


def _lookup(rt: Runtime, digest: str) -> Principal:
    assert rt.sessions is not None
    generation = rt.key_cache.generation  # before the read: a racing revocation wins
    with rt.sessions() as s:
        who = authenticate(s, digest)
    rt.key_cache.put(digest, who, generation)
    return who


IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]

Admin = Annotated[Principal, Depends(require())]
Operator = Annotated[Principal, Depends(require("operator"))]
Classifier = Annotated[Principal, Depends(require("operator", "machine"))]
