"""Shared dependencies: the runtime, and bearer-key auth with role checks."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from app.errors import Forbidden, NotReady
from app.schemas import GROUP_PATTERN, MAX_ID
from app.services.keys import Principal, authenticate, bearer_token, env_admin, hash_key
from app.services.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:  # async: no thread-pool hop
    rt: Runtime = request.app.state.runtime
    if not rt.ready.is_set():
        raise NotReady("the service is starting; retry shortly", headers={"Retry-After": "2"})
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class KeyAuth(HTTPBearer):
    """The role check over the key that `app.middleware.KeyGate` verified from the headers
    before any body byte was read. Being an HTTPBearer, it puts the bearer scheme in the
    OpenAPI document."""

    def __init__(self, *roles: str) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer")
        self.allowed = {"admin", *roles}

    async def __call__(self, request: HTTPConnection) -> Principal:  # type: ignore[override]
        who: Principal | None = request.scope.get(PRINCIPAL)
        if who is None:  # an app without the gate in front: verify here
            rt = await get_runtime(cast(Request, request))
            who = await principal(rt, request.headers.get("authorization"))
        if who.role not in self.allowed:
            runtime: Runtime | None = getattr(request.app.state, "runtime", None)
            if runtime is not None:
                runtime.metrics.auth_refusals.labels("role").inc()
            raise Forbidden(f"a {who.role} key may not do this")
        return who


PRINCIPAL = "fsdi.principal"  # the scope key KeyGate stores the verified principal under


async def principal(rt: Runtime, authorization: str | None) -> Principal:
    """The principal behind an Authorization header; 401 for none, unknown or revoked.
    Only a stored key needs the database (unless verified moments ago), and only that
    lookup leaves the event loop."""
    digest = hash_key(bearer_token(authorization))
    who = env_admin(digest, rt.settings) or rt.key_cache.get(digest)
    if who is None:
        who = await run_in_threadpool(_lookup, rt, digest)
    return who


def _lookup(rt: Runtime, digest: str) -> Principal:
    generation = rt.key_cache.generation  # before the read: a racing revocation wins
    with rt.sessions() as s:
        who = authenticate(s, digest)
    rt.key_cache.put(digest, who, generation)
    return who


IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
# A group in a query or a path follows the same rule as a group in a body.
GroupQuery = Annotated[str, Query(min_length=1, max_length=64, pattern=GROUP_PATTERN)]
GroupFilter = Annotated[str | None, Query(min_length=1, max_length=64, pattern=GROUP_PATTERN)]
GroupPath = Annotated[str, Path(min_length=1, max_length=64, pattern=GROUP_PATTERN)]

Admin = Annotated[Principal, Depends(KeyAuth())]
Operator = Annotated[Principal, Depends(KeyAuth("operator"))]
Classifier = Annotated[Principal, Depends(KeyAuth("operator", "machine"))]
