"""Shared dependencies: the runtime, and bearer-key auth with role checks."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from app.errors import Forbidden, NotReady, Unauthorized
from app.schemas import MAX_ID
from app.services.keys import Principal, authenticate, env_admin, hash_key
from app.services.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:  # async: no thread-pool hop
    rt: Runtime = request.app.state.runtime
    if not rt.ready.is_set():
        raise NotReady("the service is starting; retry shortly", headers={"Retry-After": "2"})
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class KeyAuth(HTTPBearer):
    """Bearer-key auth with a role check, as one dependency. Being an HTTPBearer, it
    still puts the bearer scheme in the OpenAPI document; being one dependency (not one
    on the runtime and one on the header), FastAPI resolves less on every request."""

    def __init__(self, *roles: str) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer")
        self.allowed = {"admin", *roles}

    async def __call__(self, request: HTTPConnection) -> Principal:  # type: ignore[override]
        rt = await get_runtime(cast(Request, request))  # 503 while starting, before any 401
        cred = await super().__call__(request)
        if cred is None or not cred.credentials:
            raise Unauthorized("missing 'Authorization: Bearer <key>' header")
        # Only a stored key needs the database (unless verified moments ago), and only
        # that lookup leaves the loop.
        digest = hash_key(cred.credentials)
        who = env_admin(digest, rt.settings) or rt.key_cache.get(digest)
        if who is None:
            who = await run_in_threadpool(_lookup, rt, digest)
        if who.role not in self.allowed:
            raise Forbidden(f"a {who.role} key may not do this")
        return who


def _lookup(rt: Runtime, digest: str) -> Principal:
    assert rt.sessions is not None
    generation = rt.key_cache.generation  # before the read: a racing revocation wins
    with rt.sessions() as s:
        who = authenticate(s, digest)
    rt.key_cache.put(digest, who, generation)
    return who


IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]

Admin = Annotated[Principal, Depends(KeyAuth())]
Operator = Annotated[Principal, Depends(KeyAuth("operator"))]
Classifier = Annotated[Principal, Depends(KeyAuth("operator", "machine"))]
